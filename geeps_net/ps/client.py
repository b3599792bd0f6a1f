"""Client: the GeePS calls a worker makes, recorded once, planned, then replayed every iteration.

    client = Client(config, shards=LocalShards(config), worker_id=0, num_workers=1, xp=numpy)
    w = client.create_table("conv1", 4800)             # parameters: rows of row_size float32
    a = client.create_local("conv1.top", 9600, "activation")
    client.write_initial(w, values)                    # worker 0's initial values
    with client.virtual_iteration():                   # record one iteration; calls return None
        train_step()
    client.start_iterations()                          # allocator + reclaimer threads
    for _ in range(n):
        train_step()                                   # read/post_read, pre_update/update,
                                                       # local_access/post_local_access, clock
    client.close()

A real call is matched to the next recorded op (same kind, key and fetch/keep flags). Matched calls
on resident data return arena views (zero copy); others return buffers the allocator prepared. A
call out of the recorded order takes a slow synchronous path (copies; see slowpath.py) with one
warning, never aborts.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time

import numpy

from geeps_net.backend import to_host
from geeps_net.errors import GeepsError, PsError
from geeps_net.ps import slowpath
from geeps_net.ps.background import Background, Handle, Work
from geeps_net.ps.cache import ParamCache, put
from geeps_net.ps.memory import Arena, Device, HostStore, PoolAllocator
from geeps_net.ps.ops import RELEASE_OF, Item, Op, describe
from geeps_net.ps.plan import Plan, make_plan
from geeps_net.ps.stats import collect
from geeps_net.ps.tables import LOCAL_DTYPE_KINDS, LOCAL_KINDS, LocalSpec, TableSpec
from geeps_net.ps.trace import Trace

log = logging.getLogger(__name__)

SETUP, RECORDING, PLANNED, RUNNING, CLOSED = "setup", "recording", "planned", "running", "closed"
# A resident table of at most this many values gets its update applied by the application thread
# on a CPU with one worker (Client._inline_tables): 64 Ki float32 = 256 KiB, a few tens of us.
INLINE_UPDATE_VALUES = 1 << 16


class LocalData:
    """Local data of the worker: its home (arena view if resident, else host array) and versions."""

    def __init__(self, spec: LocalSpec) -> None:
        self.spec = spec
        self.data = numpy.zeros(spec.num_values, dtype=spec.dtype)  # staging until planned
        self.resident = False
        self.keeps_done = 0  # recorded keeps written back (the allocator's fetches wait for them)
        self.version = 0  # bumped by every write-back, to spot stale prefetched copies


class Client:
    """One worker's PS client: tables, local data, the recorded iteration and its replay."""

    def __init__(self, config, shards, worker_id: int = 0, num_workers: int = 1, xp=numpy) -> None:
        self.config = config.validate()
        if not 0 <= worker_id < num_workers:
            raise PsError(f"worker_id {worker_id} is not in 0..{num_workers - 1}")
        self.shards, self.worker_id, self.num_workers, self.xp = shards, worker_id, num_workers, xp
        self.device = Device(xp, config.pinned_cpu_memory)
        self.cache = ParamCache(config, num_workers, self.device)
        self.trace = Trace.from_config(
            config
        )  # Chrome trace of copies, waits, pushes (and compute)
        self.locals: list[LocalData] = []
        self.plan: Plan | None = None
        self.arena = self.pool = self.host = self.staging = None
        self._mode = SETUP
        self._initial: dict[int, numpy.ndarray] = {}  # worker 0: values to send at start
        self._inline: set[int] = set()  # tables whose updates this thread applies itself
        self._ops: list[Op] = []
        self._bg: Background | None = None
        self._clock = self._cursor = 0
        self._early: set[int] = set()  # recorded releases already done out of order this clock
        self._held: dict[tuple, list[Handle]] = {}
        # kind -> [count, seconds, wait seconds]
        self._calls: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0, 0.0])
        self._signatures: list[tuple] = []  # per recorded op: (kind, key, fetch, keep)
        self.out_of_order = 0
        self._started = self._last_clock = 0.0
        self._reported = False
        shards.subscribe(worker_id, self.cache.on_push)

    # ---- set-up ---------------------------------------------------------------------------------

    def create_table(self, name: str, num_values: int) -> int:
        """A parameter table of `num_values` float32 values; returns its id (0, 1, ... in order)."""
        self._need(SETUP, "create_table")
        spec = TableSpec(len(self.cache.tables), name, int(num_values), self.config.row_size)
        self.cache.add(spec, self.shards.create_table(spec.id, spec.num_values))
        return spec.id

    def create_local(self, name: str, num_values: int, kind: str, dtype: str = "float32") -> int:
        """Local data (never sent) of a LOCAL_KINDS kind and a bool/int/float dtype; its id."""
        self._need(SETUP, "create_local")
        if kind not in LOCAL_KINDS or numpy.dtype(dtype).kind not in LOCAL_DTYPE_KINDS:
            raise PsError(f'local "{name}": kind {kind!r} / dtype {dtype!r} not supported')
        spec = LocalSpec(len(self.locals), name, int(num_values), kind, str(numpy.dtype(dtype)))
        self.locals.append(LocalData(spec))
        return spec.id

    def write_initial(self, table: int, values) -> None:
        """Initial values of a table (before start_iterations); worker 0's go to the shards."""
        tc = self.cache.tables[table]
        values = self._checked(tc.spec, values, "write_initial")
        with self.cache.cond:
            put(self.device, tc.data, values)
        tc.initialized = True
        if self.worker_id == 0:  # sent at start_iterations: the last write wins (-weights, resume)
            self._initial[table] = values

    def write_local(self, local: int, values) -> None:
        """Initial contents of local data (before start_iterations; default zeros)."""
        data = self.locals[local]
        put(self.device, data.data, self._checked(data.spec, values, "write_local"))

    def _checked(self, spec, values, what: str) -> numpy.ndarray:
        if self._mode in (RUNNING, CLOSED):
            raise PsError(f'{what} "{spec.name}": only allowed before start_iterations()')
        values = numpy.ascontiguousarray(to_host(values), dtype=spec.dtype).reshape(-1)
        if values.size != spec.num_values:
            raise PsError(f'{what} "{spec.name}": {values.size} values, expected {spec.num_values}')
        return values

    def read_table_host(self, table: int) -> numpy.ndarray:
        """A host copy of the cached table (own updates included), after queued work is done."""
        self._drain()
        return self.cache.snapshot(self.cache.tables[table])

    def read_local_host(self, local: int) -> numpy.ndarray:
        """A host copy of local data as of the last release, after queued write-backs are done."""
        self._drain()
        return numpy.array(to_host(self.locals[local].data))

    def data_age(self, table: int) -> int:
        """The table's data age in this worker's cache (-2: no values yet)."""
        return self.cache.tables[table].data_age()

    # ---- virtual iteration and planning -------------------------------------------------------

    @contextlib.contextmanager
    def virtual_iteration(self):
        """Record the calls of one iteration (they return None); plans when the block ends."""
        self._need(SETUP, "virtual_iteration")
        self._mode = RECORDING
        yield self
        self.finish_virtual_iteration()

    def finish_virtual_iteration(self) -> Plan:
        """Plan placement from the recorded calls, build the arena and move data to its home."""
        self._need(RECORDING, "finish_virtual_iteration")
        items = {
            d.key: Item(d.key, d.name, d.kind, d.nbytes)
            for d in [t.spec for t in self.cache.tables] + [x.spec for x in self.locals]
        }
        c = self.config
        plan = make_plan(self._ops, items, c.gpu_memory_capacity, c.mm_warning_level, c.row_size)
        log.info("%s", plan.summary())
        self.plan, self.arena = plan, Arena(self.device, plan.arena_size)
        self._signatures = [(op.kind, op.key, op.fetch, op.keep) for op in plan.ops]
        self.pool = PoolAllocator(plan.pool_offset, plan.pool_size)
        self.host = HostStore(self.device)
        for tc in self.cache.tables:
            data, upd = self._home(tc.spec, plan, "data"), self._home(tc.spec, plan, "log")
            self.cache.bind(tc, data, upd, plan.resident(tc.spec.key))
            if self.cache.exact and not self.device.gpu:  # one copy of the params, not two
                self.shards.share_master(self.worker_id, tc.spec.id, tc.data)
        for local in self.locals:
            home = self._home(local.spec, plan, "data")
            put(self.device, home, local.data)
            local.data, local.resident = home, plan.resident(local.spec.key)
        largest = max((t.spec.num_values for t in self.cache.tables), default=0)
        self.staging = self.device.host_empty(largest, "float32")  # GPU update write-backs
        self._mode = PLANNED
        return plan

    def _home(self, spec, plan: Plan, part: str):
        if plan.resident(spec.key):
            offsets = plan.offsets if part == "data" else plan.log_offsets
            return self.arena.view(offsets[spec.key], spec.num_values, spec.dtype)
        return self.host.array((spec.key, part), spec.num_values, spec.dtype)

    def start_iterations(self) -> None:
        """Start the allocator and reclaimer threads; real iterations may begin. Call it from the
        thread that runs them: should that thread end without close(), the threads stop too."""
        self._need(PLANNED, "start_iterations")
        if self.worker_id == 0:
            missing = [t.spec.name for t in self.cache.tables if not t.initialized]
            if missing:
                raise PsError(f"worker 0 never called write_initial for tables {missing}")
            # Once per table, final values only: another worker's first read waits for this push,
            # and an earlier value superseded here (the filler's, before a restore) must never be
            # what it gets.
            for table, values in sorted(self._initial.items()):
                self.shards.write_initial(table, values)
            self._initial.clear()
        self._bg = Background(self)
        self._bg.start()
        self._inline = self._inline_tables()
        self._mode = RUNNING
        self._started = self._last_clock = time.perf_counter()

    def _inline_tables(self) -> set[int]:
        """Tables whose updates the application thread applies itself: on a CPU with one worker,
        waking the reclaimer for a small resident table costs more than the adds it would take
        over, and the next iteration's first read (of the table updated last) would wait for that
        wake-up (LeNet: 3 of its 4 tables)."""
        if self.device.gpu or self.num_workers > 1:
            return set()
        return {
            t.spec.id
            for t in self.cache.tables
            if t.resident and t.spec.num_values <= INLINE_UPDATE_VALUES
        }

    # ---- the calls ------------------------------------------------------------------------------

    def read(self, table: int):
        """Parameter values fresh enough for the slack: a 1-D float32 buffer of the whole table."""
        return self._acquire_table("read", table)

    def post_read(self, table: int) -> None:
        """Release the buffer of the matching read."""
        self._release("post_read", ("param", table))

    def pre_update(self, table: int):
        """A zeroed 1-D float32 buffer of the whole table for this iteration's update."""
        return self._acquire_table("pre_update", table)

    def _acquire_table(self, kind: str, table: int):
        """read or pre_update: a pool block the allocator prepared, or the resident table's data
        (once fresh) or update log (once the last clock's update left it)."""
        key = ("param", table)
        if self._mode != RUNNING:
            return self._record(Op(kind, key))
        start = time.perf_counter()
        self._check()
        i = self._match(kind, key)
        if i < 0:
            return slowpath.acquire(self, kind, key, start)
        if self.plan.pooled[i]:
            handle, waited = self._take(i)
        else:
            tc, reading = self.cache.tables[table], kind == "read"
            wait = self.cache.wait_fresh if reading else self.cache.wait_log
            waited = self._waiting(wait, tc, self._clock)
            buf = tc.data if reading else tc.log
            handle = Handle(buf, i, self._clock, is_log=not reading)
        return self._hand_out(kind, key, handle, start, waited)

    def update(self, table: int) -> None:
        """Hand the pre_update buffer back: params += buffer (float32) at the table's clock."""
        self._release("update", ("param", table))

    def local_access(self, local: int, fetch: bool = True):
        """A 1-D buffer of the local data; its contents are the stored ones iff `fetch`."""
        key = ("local", local)
        if self._mode != RUNNING:
            return self._record(Op("local_access", key, fetch=fetch))
        start = time.perf_counter()
        self._check()
        i = self._match("local_access", key, fetch=fetch)
        if i < 0:
            return slowpath.acquire(self, "local_access", key, start, fetch=fetch)
        data = self.locals[local]
        waited = 0.0
        if self.plan.pooled[i]:
            handle, waited = self._take(i)
            if fetch and handle.version != data.version:  # rewritten by a slow-path release
                self.device.to_device(handle.buf, data.data)
        else:
            handle = Handle(data.data, i, self._clock)
        return self._hand_out("local_access", key, handle, start, waited)

    def post_local_access(self, local: int, keep: bool = True) -> None:
        """Release local data; `keep`: its contents must survive until the next access."""
        self._release("post_local_access", ("local", local), keep=keep)

    def clock(self) -> None:
        """End of the iteration (the recorded order restarts)."""
        if self._mode != RUNNING:
            return self._record(Op("clock"))
        start = time.perf_counter()
        self._check()
        if self._cursor != len(self.plan.ops) - 1:
            slowpath.skip_to_clock(self)
        self._bg.submit(Work("clock", self._clock))
        self._clock += 1
        self._cursor = 0
        self._early.clear()
        self._bg.set_clock(self._clock)
        self._last_clock = time.perf_counter()
        self._count("clock", self._last_clock - start, 0.0)

    # ---- matching and bookkeeping ---------------------------------------------------------------

    def _record(self, op: Op) -> None:
        if self._mode != RECORDING:
            why = {
                SETUP: "call it inside virtual_iteration() or after start_iterations()",
                PLANNED: "call start_iterations() first",
                CLOSED: "the PS client is closed",
            }[self._mode]
            raise PsError(f"{op.kind}: {why}")
        self._ops.append(op)

    def _match(self, kind: str, key, fetch: bool = False, keep: bool = False) -> int:
        """Index of the recorded op this call is, advancing the cursor; -1 if out of order.
        The caller has checked the background threads (_check) already."""
        i = self._cursor
        if self._signatures[i] != (kind, key, fetch, keep):
            return -1
        self._cursor = i + 1
        while self._early and self._cursor in self._early:  # done already: only a clock may remain
            slowpath.pass_early(self, self._cursor)
            self._cursor += 1
        return i

    def _take(self, i: int) -> tuple[Handle, float]:
        try:
            handle, waited = self._bg.take(self._clock, i)
        except GeepsError:
            self._reported = True  # close() will not raise what follows from it again
            raise
        self.device.wait(handle.event)
        return handle, waited

    def _waiting(self, wait, table, clock: int) -> float:
        try:
            return wait(table, clock, self.config.deadline_s, self._check)
        except GeepsError:
            self._reported = True
            raise

    def _hand_out(self, kind: str, key, handle: Handle, start: float, waited: float):
        self._held.setdefault((kind, key), []).append(handle)
        self._count(kind, time.perf_counter() - start, waited)
        return handle.buf

    def _release(self, kind: str, key, keep: bool = False) -> None:
        if self._mode != RUNNING:
            return self._record(Op(kind, key, keep=keep))
        start = time.perf_counter()
        self._check()
        stack = self._held.get((RELEASE_OF[kind], key))
        if not stack:
            raise PsError(
                f"{kind} of {key[0]} {key[1]}: no {RELEASE_OF[kind]} of it is outstanding"
            )
        handle = stack.pop()
        cursor_op = self.plan.ops[self._cursor]
        matched = handle.op >= 0 and handle.clock == self._clock
        if matched and self.plan.pairs[handle.op] == self._cursor and cursor_op.keep == keep:
            i = self._match(kind, key, keep=keep)
            self._submit_release(kind, key, i, handle, keep)
        else:
            slowpath.release(self, kind, key, handle, keep)
        self._count(kind, time.perf_counter() - start, 0.0)

    def _submit_release(self, kind: str, key, i: int, handle: Handle, keep: bool) -> None:
        """Queue the reclaimer's part of a matched release (nothing for resident post_* calls)."""
        plan = self.plan
        if kind == "update":
            finish = plan.last_write[i]
            work = Work("update", self._clock, key, handle, self.device.record(), finish)
            if key[1] in self._inline:
                try:
                    self._bg.run_now(work)
                except GeepsError:
                    self._reported = True  # close() will not raise it again
                    raise
            else:
                self._bg.submit(work)
        elif plan.pooled[handle.op]:
            event = self.device.record()
            self._bg.submit(Work(kind, self._clock, key, handle, event, keep=keep, counted=keep))

    def _count(self, kind: str, seconds: float, waited: float) -> None:
        entry = self._calls[kind]
        entry[0] += 1
        entry[1] += seconds
        entry[2] += waited

    def _check(self) -> None:
        try:
            self._bg.check()
        except GeepsError:
            self._reported = True
            raise

    def _need(self, mode: str, what: str) -> None:
        if self._mode != mode:
            raise PsError(f"{what}: not allowed now (client is {self._mode}, needs {mode})")

    def _drain(self) -> None:
        if self._mode == RUNNING:
            self._check()
            self._bg.drain()

    def describe(self, i: int) -> str:
        """Recorded op `i` in words, for messages."""
        return describe(self.plan.ops[i], self.plan.items)

    def spec(self, key) -> TableSpec | LocalSpec:
        """The spec of a planner key."""
        return self.cache.tables[key[1]].spec if key[0] == "param" else self.locals[key[1]].spec

    # ---- stats and shutdown ---------------------------------------------------------------------

    def stats(self) -> dict:
        """Per-op times and waits, bytes moved each way, stall fraction, arena high-water mark
        (keys: see geeps_net/ps/stats.py)."""
        return collect(self)

    def close(self) -> None:
        """Finish queued work, stop and join the threads (idempotent); raises a thread failure."""
        if self._mode == CLOSED:
            return
        bg, self._mode = self._bg, CLOSED
        if bg is not None:
            bg.stop()
            if bg.error is not None and not self._reported:
                self._reported = True
                raise PsError(f"PS background thread failed: {bg.error}") from bg.error

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
