"""The worker's parameter cache: per table its values, its update log, and how fresh it is.

Freshness is a data age per row range: the last clock whose updates (from every worker) the range
includes, -1 for initial values, -2 before any push. A read at worker clock t needs
age >= max(t - slack - 1, -1) (slack 0 is BSP) and, with read_my_writes, this worker's own updates
through clock t - 1 applied to the cache.

The cache applies the worker's own update log when the table's clock completes (its last update of
the iteration); the same log goes to the shards. Pushes replace a range's values and re-apply the
own updates the push does not include yet. With one worker and read_my_writes the pushed values
equal the cache bit for bit (same additions on the same values), so a push only advances the age;
on a CPU, in-process shards then keep this cache as their master copy (see Client).
With several workers under BSP the own update is not applied at all: every read waits for a push
that already includes it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy

from geeps_net.backend import to_host
from geeps_net.errors import DeadlineError
from geeps_net.ps.memory import Device
from geeps_net.ps.server import Push
from geeps_net.ps.tables import RowRange, TableSpec

FRESH = 1 << 62  # the age of a table without rows: always fresh enough
POLL_S = 0.25  # waits without a deadline still wake this often to notice a shutdown


class TableCache:
    """One table in the worker: `data` and `log` are arena views if resident, else host arrays."""

    def __init__(self, spec: TableSpec, ranges: list[RowRange]) -> None:
        self.spec, self.ranges = spec, ranges
        self.ages = [-2] * len(ranges)
        self.index = {rng.row_start: i for i, rng in enumerate(ranges)}
        self.data = numpy.zeros(spec.num_values, dtype="float32")  # staging until bound
        self.log = None
        self.resident = False
        self.own_applied = -1  # own updates of clocks <= this are in `data`
        self.log_clock = 0  # the clock whose updates the log collects
        self.retained: dict[int, numpy.ndarray] = {}  # clock -> own update, until pushes include it
        self.pending: list[Push] = []
        self.extra: numpy.ndarray | None = None  # out-of-order updates waiting for the clock
        self.initialized = False

    def data_age(self) -> int:
        """The oldest range's age (FRESH for an empty table)."""
        return min(self.ages, default=FRESH)

    def slowest(self) -> str:
        """The range holding the age back, for deadline messages."""
        if not self.ranges:
            return "none"
        i = min(range(len(self.ages)), key=self.ages.__getitem__)
        rng = self.ranges[i]
        return f"{rng.shard} (rows {rng.row_start}-{rng.row_stop - 1}, data age {self.ages[i]})"


class ParamCache:
    """All tables of one worker, their freshness, and the rules for own updates and pushes."""

    def __init__(self, config, num_workers: int, device: Device) -> None:
        self.cond = threading.Condition()
        self.tables: list[TableCache] = []
        self.slack = config.slack
        self.device = device
        # Under BSP with several workers a read at clock t waits for the push of clock t - 1,
        # which includes this worker's updates through t - 1 and replaces the values: applying
        # and retaining the own update first would be two passes over the table thrown away.
        bsp_shared = num_workers > 1 and config.slack == 0
        self.apply_own = config.read_my_writes and config.update_rule != "SERVER" and not bsp_shared
        self.exact = self.apply_own and num_workers == 1  # pushes equal the cache: no copy
        self.retain = self.apply_own and num_workers > 1
        average = config.update_rule == "AVERAGE" and num_workers > 1
        self.scale = numpy.float32(1.0 / num_workers) if average else None
        self.bytes_received = self.bytes_sent = 0
        self.early: list[Push] = []  # pushes for tables this worker has not created yet

    def add(self, spec: TableSpec, ranges: list[RowRange]) -> TableCache:
        """Register a table (ids are consecutive from 0), with pushes that came before it."""
        table = TableCache(spec, ranges)
        with self.cond:
            self.tables.append(table)
            early, self.early = (
                [p for p in self.early if p.table == spec.id],
                [p for p in self.early if p.table != spec.id],
            )
        for push in early:
            self.on_push(push)
        return table

    def bind(self, table: TableCache, data, log, resident: bool) -> None:
        """Move a table from its staging array to its final home (arena views or host arrays)."""
        with self.cond:
            self._apply_pending(table)
            put(self.device, data, table.data)
            log[...] = 0
            table.data, table.log, table.resident = data, log, resident

    def on_push(self, push: Push) -> None:
        """Shard callback (any thread): record newer values of a range."""
        with self.cond:
            if push.table >= len(self.tables):  # another worker created the table first
                self.early.append(self._kept(push))
                return
            table = self.tables[push.table]
            i = table.index[push.range.row_start]
            if push.data_age < table.ages[i]:
                return
            if self.exact:
                table.ages[i] = push.data_age
            else:
                table.pending.append(self._kept(push))
            self.cond.notify_all()

    @staticmethod
    def _kept(push: Push) -> Push:
        """`push` with values of its own (a copy unless they never change)."""
        if push.fresh:
            return push
        return Push(push.table, push.range, push.values.copy(), push.data_age)

    def _apply_pending(self, table: TableCache) -> None:
        """Install pending pushes (caller holds cond): values, then own updates they lack."""
        for push in sorted(table.pending, key=lambda p: p.data_age):
            i = table.index[push.range.row_start]
            if push.data_age < table.ages[i]:
                continue
            part = table.data[push.range.values]
            put(self.device, part, push.values)
            for clock in sorted(c for c in table.retained if c > push.data_age):
                part += to_device_like(part, table.retained[clock][push.range.values])
            self.bytes_received += push.values.nbytes
            table.ages[i] = push.data_age
        table.pending.clear()
        age = table.data_age()
        for clock in [c for c in table.retained if c <= age]:
            del table.retained[clock]

    def snapshot(self, table: TableCache) -> numpy.ndarray:
        """A host copy of the table with every push received so far installed."""
        with self.cond:
            self._apply_pending(table)
            return numpy.array(to_host(table.data))

    def need(self, clock: int) -> int:
        """The data age a read at `clock` requires: t - slack - 1, and initial values at least."""
        return max(clock - self.slack - 1, -1)

    def fresh(self, table: TableCache, clock: int) -> bool:
        """True when a read at `clock` may use the table now."""
        if table.data_age() < max(clock - self.slack - 1, -1):
            return False
        return not self.apply_own or table.own_applied >= clock - 1

    def wait_fresh(
        self, table: TableCache, clock: int, deadline_s: float | None, check: Callable
    ) -> float:
        """Block until `fresh`; seconds waited. `check()` raises if the client failed or closed.

        `deadline_s` None (the allocator prefetching ahead of the application) waits as long as
        the client runs: the application's own wait carries the deadline and names the table.
        """
        if self.fresh(table, clock):
            return 0.0
        start = time.perf_counter()
        with self.cond:
            while True:
                if table.pending:
                    self._apply_pending(table)
                if self.fresh(table, clock):
                    return time.perf_counter() - start
                check()
                if deadline_s is None:
                    self.cond.wait(POLL_S)
                    continue
                left = start + deadline_s - time.perf_counter()
                if left <= 0:
                    raise DeadlineError(self.late(table, clock, deadline_s))
                self.cond.wait(left)

    def late(self, table: TableCache, clock: int, deadline_s: float) -> str:
        """One line: why a read of `table` at `clock` is still not fresh after `deadline_s`."""
        spec = table.spec
        head = f'read table {spec.id} ("{spec.name}") at clock {clock}'
        if table.data_age() == -2:
            return f"{head}: no initial values after {deadline_s} s (worker 0 must write_initial)"
        if table.data_age() < self.need(clock):
            return (
                f"{head}: data age {table.data_age()} < {self.need(clock)} after {deadline_s} s; "
                f"slowest shard: {table.slowest()}"
            )
        return (
            f"{head}: own updates applied only through clock {table.own_applied} "
            f"after {deadline_s} s"
        )

    def finish_clock(
        self, table: TableCache, clock: int, send: Callable, update: bool = True
    ) -> None:
        """The table's last update of `clock` is in its log: apply it, send it, clear the log.

        Runs on the reclaimer thread (on its stream), never while the application uses the table;
        `send(delta)` hands the update (None: only the clock) to the shards, which copy it.
        """
        device, host_log = self.device, None
        if update:
            with device.on(device.reclaim_stream):
                with self.cond:
                    if table.extra is not None:  # slow-path updates of this clock
                        table.log += to_device_like(table.log, table.extra)
                        table.extra = None
                    if self.apply_own:  # the scaled copy only for the cache's own use
                        own = table.log if self.scale is None else table.log * self.scale
                        table.data += own
                        if self.retain:
                            table.retained[clock] = to_host(own).copy()
                host_log = table.log if not device.gpu else to_host(table.log)
                device.sync(device.record(device.reclaim_stream))
            if device.gpu and table.resident:  # pragma: no cover - GPU only
                self.bytes_sent += host_log.nbytes
        send(host_log)
        with self.cond:
            if table.pending:
                self._apply_pending(table)
            if update:
                with device.on(device.reclaim_stream):
                    table.log[...] = 0
                device.sync(device.record(device.reclaim_stream))
            table.own_applied = clock
            table.log_clock = clock + 1
            self.cond.notify_all()

    def add_extra(self, table: TableCache, delta) -> None:
        """A slow-path (out of order) update: added to the log at the table's next clock."""
        with self.cond:
            host = to_host(delta)
            if table.extra is None:
                table.extra = host.astype("float32", copy=True)
            else:
                table.extra += host

    def wait_log(self, table: TableCache, clock: int, deadline_s: float, check: Callable) -> float:
        """Block until the table's update log collects `clock` (is cleared after clock - 1)."""
        if table.log_clock >= clock:
            return 0.0
        start = time.perf_counter()
        with self.cond:
            while table.log_clock < clock:
                check()
                left = start + deadline_s - time.perf_counter()
                if left <= 0:
                    raise DeadlineError(
                        f'pre_update table {table.spec.id} ("{table.spec.name}") at clock {clock}: '
                        f"its update log of clock {table.log_clock} was not sent after "
                        f"{deadline_s} s"
                    )
                self.cond.wait(left)
        return time.perf_counter() - start

    def wake(self) -> None:
        """Wake every waiter (shutdown or a failed thread)."""
        with self.cond:
            self.cond.notify_all()


def put(device: Device, dst, src: numpy.ndarray) -> None:
    """dst[...] = src (a host array) into a host or device array, uncounted: set-up and pushes,
    not access traffic."""
    if isinstance(dst, numpy.ndarray):
        dst[...] = src
    else:  # pragma: no cover - GPU only
        dst.set(numpy.ascontiguousarray(src, dtype=dst.dtype))


def to_device_like(like, host: numpy.ndarray):
    """`host` as an array of the same module as `like` (a no-op on NumPy)."""
    if isinstance(like, numpy.ndarray):
        return host
    import cupy  # pragma: no cover - GPU only

    return cupy.asarray(host)
