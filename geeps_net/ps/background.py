"""The allocator and reclaimer threads that move data ahead of and behind the application.

The allocator walks the recorded op sequence up to one iteration ahead of the application: for every
acquire served from the access pool it waits for fresh data (reads), allocates a pool block
(blocking when the pool is full), gathers table values or copies host-resident local data in, and
publishes the buffer in a per-(clock, op) slot. The reclaimer follows the application through a
queue of releases: it adds updates to the update log, finishes table clocks (own update applied, log
sent to the shards), writes kept local data back to the host store and frees pool blocks.

Both threads are non-daemon and stop on `stop()`; an exception in either is kept and re-raised in
the application thread at its next call (`check()`). The allocator waits on the application (pool
blocks it still holds, fresh data it has yet to produce) without a deadline of its own but polling
for a stop: the application's wait for the op carries the deadline and reports what the allocator
was waiting for.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass

from geeps_net.errors import DeadlineError, GeepsError, PsError
from geeps_net.ps.cache import POLL_S
from geeps_net.ps.ops import align
from geeps_net.ps.trace import maybe_span

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Handle:
    """A buffer handed to the application: `op` is its recorded index (-1: slow path)."""

    buf: object
    op: int = -1
    clock: int = -1
    offset: int | None = None  # pool block, freed by the reclaimer
    event: object = None  # GPU: the copy that filled `buf`
    is_log: bool = False  # the table's update log itself (resident, one pre_update per clock)
    version: int = 0  # host-store version a fetched local copy was taken from


@dataclass(slots=True)
class Work:
    """One reclaimer task, queued by the application in call order."""

    action: str  # post_read, update, post_local_access, finish, clock, free
    clock: int
    key: tuple | None = None
    handle: Handle | None = None
    event: object = None  # GPU: the application's work on the buffer so far
    finish: bool = False  # update: the table's clock completes
    keep: bool = False  # post_local_access: write back
    counted: bool = False  # post_local_access: a recorded keep (the allocator waits for these)


class Background:
    """Owns both threads; `client` supplies plan, cache, locals, pool, arena, device and shards."""

    def __init__(self, client) -> None:
        self.c = client
        self.deadline = client.config.deadline_s
        self.cond = threading.Condition()  # slots, app clock, keeps, drain
        self.slots: dict[tuple[int, int], Handle] = {}
        self.app_clock = 0
        self.queue: queue.SimpleQueue[Work | None] = queue.SimpleQueue()  # C: no Python lock
        self.submitted = self.processed = 0
        self.error: BaseException | None = None
        self.blocked = None  # allocator: f(deadline) -> one line on what it is waiting for
        self.stopping = False
        # The application thread: if it ends without close() (a script that forgot it), nothing
        # would ever stop these non-daemon threads and the interpreter would wait at exit forever.
        self.owner = threading.current_thread()
        self.fresh_wait_s = self.reclaim_s = self.send_s = self.update_s = self._last_send = 0.0
        self.threads = [
            threading.Thread(target=self._run, args=(self._allocate,), name="ps-allocator"),
            threading.Thread(target=self._run, args=(self._reclaim,), name="ps-reclaimer"),
        ]

    def start(self) -> None:
        """Start both threads."""
        for thread in self.threads:
            thread.start()

    def check(self) -> None:
        """Raise in the caller if a thread failed or the client is closing."""
        if isinstance(self.error, GeepsError):
            raise self.error  # already one line naming what failed (e.g. a DeadlineError)
        if self.error is not None:
            raise PsError(f"PS background thread failed: {self.error!r}") from self.error
        if self.stopping:
            raise PsError("PS client is closed")

    def _run(self, body) -> None:
        try:
            body()
        except BaseException as e:  # noqa: BLE001 - handed to the application thread
            if not self.stopping and self.error is None:
                self.error = e
                log.error("%s: %s", threading.current_thread().name, e)
            self._wake()

    def _wake(self) -> None:
        with self.cond:
            self.cond.notify_all()
        self.c.cache.wake()
        if self.error is not None:
            self.c.pool.close()

    def stop(self) -> None:
        """Let the reclaimer finish the queued work, stop both threads and join them (deadline)."""
        self.queue.put(None)
        end = time.perf_counter() + self.deadline
        self.threads[1].join(self.deadline)
        self.stopping = True
        self.c.pool.close()
        self._wake()
        for thread in self.threads:
            thread.join(max(0.0, end - time.perf_counter()))
        alive = [t.name for t in self.threads if t.is_alive()]
        if alive:
            raise DeadlineError(f"PS threads {alive} did not stop within {self.deadline} s")

    # ---- application side -------------------------------------------------------------------

    def take(self, clock: int, i: int) -> tuple[Handle, float]:
        """The prepared buffer of op `i` at `clock`, and the seconds spent waiting for it."""
        key = (clock, i)
        with self.cond:
            handle = self.slots.pop(key, None)
            if handle is not None:
                return handle, 0.0
            start = time.perf_counter()
            while (handle := self.slots.pop(key, None)) is None:
                self.check()
                left = start + self.deadline - time.perf_counter()
                if left <= 0:
                    blocked = self.blocked
                    raise DeadlineError(
                        blocked(self.deadline)
                        if blocked is not None
                        else f"{self.c.describe(i)} at clock {clock}: not prepared after "
                        f"{self.deadline} s"
                    )
                self.cond.wait(left)
            end = time.perf_counter()
            if self.c.trace is not None:
                self.c.trace.add(f"wait {self.c.describe(i)}", "wait", start, end)
            return handle, end - start

    def submit(self, work: Work) -> None:
        """Queue work for the reclaimer."""
        self.submitted += 1
        self.queue.put(work)

    def run_now(self, work: Work) -> None:
        """Do the reclaimer's part of `work` on the caller's thread (Client._inline_tables); a
        failure stops the client as a reclaimer failure would."""
        try:
            self._process(work)
        except BaseException as e:  # noqa: BLE001 - reported as the reclaimer's would be
            if self.error is None:
                self.error = e
                log.error("PS update of %s: %s", work.key, e)
            self._wake()
        self.check()

    def set_clock(self, clock: int) -> None:
        """The application entered `clock`: lets the allocator prepare `clock + 1`."""
        with self.cond:
            self.app_clock = clock
            self.cond.notify_all()

    def drain(self) -> None:
        """Wait until the reclaimer has done everything queued so far."""
        with self.cond:
            end = time.perf_counter() + self.deadline
            while self.processed < self.submitted:
                self.check()
                left = end - time.perf_counter()
                if left <= 0:
                    raise DeadlineError(
                        f"reclaimer: {self.submitted - self.processed} queued releases not done "
                        f"after {self.deadline} s"
                    )
                self.cond.wait(left)

    def _wait(self, ready) -> None:
        """Allocator-side wait for the application or the reclaimer: no deadline of its own (the
        application's wait for this op has it); wakes regularly to notice a stop."""
        with self.cond:
            while not ready():
                self.check()
                self.cond.wait(POLL_S)

    def abandoned(self) -> bool:
        """True once the application thread ended without closing the client."""
        return not self.owner.is_alive()

    # ---- allocator ----------------------------------------------------------------------------

    def _allocate(self) -> None:
        plan = self.c.plan
        todo = [i for i, pooled in enumerate(plan.pooled) if pooled]
        clock = 0
        while todo and not self.stopping:
            self._wait(lambda clock=clock: self.app_clock >= clock - 1)  # one iteration ahead
            for i in todo:
                if self.stopping:
                    return
                handle = self._prepare(clock, i)
                with self.cond:
                    self.slots[clock, i] = handle
                    self.cond.notify_all()
            clock += 1

    def _prepare(self, clock: int, i: int) -> Handle:
        """Allocate and fill the pool buffer of acquire `i` at `clock`."""
        c, dev = self.c, self.c.device
        op = c.plan.ops[i]
        item = c.plan.items[op.key]
        what = f"{c.describe(i)} at clock {clock}"
        if op.kind == "read":
            table = c.cache.tables[op.key[1]]
            self.blocked = lambda d: c.cache.late(table, clock, d)
            self.fresh_wait_s += c.cache.wait_fresh(table, clock, None, self.check)
        offset, buf = self._alloc(i, item, what)
        handle = Handle(buf, i, clock, offset)
        with dev.on(dev.copy_stream), maybe_span(c.trace, f"copy in {c.describe(i)}", "copy_in"):
            if op.kind == "read":
                with c.cache.cond:  # the reclaimer adds to host caches under this lock
                    dev.to_device(buf, table.data, dev.copy_stream)
                    dev.sync(dev.record(dev.copy_stream))  # GPU: done reading the host copy
            elif op.kind == "pre_update":
                buf[...] = 0
            elif op.fetch:
                local = c.locals[op.key[1]]
                need = clock * c.plan.keeps_per_iter.get(op.key, 0) + c.plan.keeps_before[i]
                self.blocked = lambda d: f"{what}: its last write-back is not done after {d} s"
                self._wait(lambda: local.keeps_done >= need)
                handle.version = local.version
                dev.to_device(buf, local.data, dev.copy_stream)
        handle.event = dev.record(dev.copy_stream)
        self.blocked = None
        return handle

    def _alloc(self, i: int, item, what: str):
        """(arena offset or None, 1-D buffer of the item's values): op i's planned pool block,
        once its previous occupants are released."""
        c = self.c
        spec = c.spec(item.key)
        if item.nbytes == 0:
            return None, c.xp.empty(0, dtype=spec.dtype)
        offset, nbytes = c.plan.pool_offset + c.plan.placement.layout[i], align(item.nbytes)
        self.blocked = lambda d: (
            f"{what}: its access-pool block [{offset}, {offset + nbytes}) is still in use after "
            f"{d} s ({self.submitted - self.processed} releases queued)"
        )
        c.pool.claim(offset, nbytes, what)
        return offset, c.arena.view(offset, spec.num_values, spec.dtype)

    # ---- reclaimer ----------------------------------------------------------------------------

    def _reclaim(self) -> None:
        while True:
            try:
                work = self.queue.get(timeout=POLL_S)
            except queue.Empty:
                if self.stopping:
                    return
                if self.abandoned():  # nobody will call stop(): end both threads ourselves
                    log.warning("PS client was never closed; its threads stop with the caller")
                    self.stopping = True
                    self.c.pool.close()
                    self._wake()
                    return
                continue
            if work is None:
                return
            self._process(work)
            with self.cond:
                self.processed += 1
                self.cond.notify_all()

    def _process(self, work: Work) -> None:
        start = time.perf_counter()
        getattr(self, f"_do_{work.action}")(work)
        self.reclaim_s += time.perf_counter() - start

    def _free(self, handle: Handle) -> None:
        if handle.offset is not None:
            self.c.device.sync(self.c.device.record(self.c.device.reclaim_stream))
            self.c.pool.free(handle.offset)
            handle.offset = None

    def _do_free(self, work: Work) -> None:
        self.c.device.wait(work.event, self.c.device.reclaim_stream)
        self._free(work.handle)

    _do_post_read = _do_free

    def _do_update(self, work: Work) -> None:
        c, dev, handle = self.c, self.c.device, work.handle
        table = c.cache.tables[work.key[1]]
        dev.wait(work.event, dev.reclaim_stream)
        if not handle.is_log:
            with c.cache.cond, dev.on(dev.reclaim_stream):
                if table.resident:
                    table.log += handle.buf
                else:
                    dev.add_to_host(table.log, handle.buf, c.staging, dev.reclaim_stream)
            self._free(handle)
        if work.finish:
            self._do_finish(work)

    def _do_finish(self, work: Work) -> None:
        start, c = time.perf_counter(), self.c
        table = c.cache.tables[work.key[1]]
        c.cache.finish_clock(table, work.clock, lambda delta: self._send(table, work.clock, delta))
        self.update_s += time.perf_counter() - start - self._last_send

    def _send(self, table, clock: int, delta) -> None:
        start = time.perf_counter()
        shards, worker = self.c.shards, self.c.worker_id
        if delta is not None:
            shards.push_update(worker, table.spec.id, clock, delta)
        shards.clock(worker, table.spec.id, clock)
        if self.c.trace is not None:
            self.c.trace.add(f"push {table.spec.name}", "push", start, time.perf_counter())
        self._last_send = time.perf_counter() - start
        self.send_s += self._last_send

    def _do_post_local_access(self, work: Work) -> None:
        c, dev, handle = self.c, self.c.device, work.handle
        local = c.locals[work.key[1]]
        dev.wait(work.event, dev.reclaim_stream)
        if work.keep:
            with maybe_span(c.trace, f"copy out {local.spec.name}", "copy_out"):
                dev.to_host(local.data, handle.buf, dev.reclaim_stream)
                dev.sync(dev.record(dev.reclaim_stream))
            local.version += 1
        self._free(handle)
        if work.counted:
            with self.cond:
                local.keeps_done += 1
                self.cond.notify_all()

    def _do_count(self, work: Work) -> None:
        """A recorded keep that was skipped: the fetches that wait for it may go."""
        with self.cond:
            self.c.locals[work.key[1]].keeps_done += 1
            self.cond.notify_all()

    def _do_clock(self, work: Work) -> None:
        c = self.c
        for key in c.plan.unwritten:
            table = c.cache.tables[key[1]]
            c.cache.finish_clock(
                table,
                work.clock,
                lambda delta, t=table: self._send(t, work.clock, delta),
                update=table.extra is not None,
            )
