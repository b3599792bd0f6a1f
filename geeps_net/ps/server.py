"""Tablet servers without transport: master copies, vector clocks, update rules, pushes.

A TabletServer owns some row ranges of some tables. Workers send it per-clock deltas
(`apply_update`) and clock ticks (`clock`); when the slowest worker's clock of a table advances, the
deltas of the completed clocks are applied in worker order (deterministic whatever the arrival
order) and the new values of every range are pushed to every worker with `data_age` = the last clock
they include (-1: initial values).

The client talks to shards through five calls, which a network transport implements the same way:

    create_table(table, num_values)              every worker, same order and sizes
    subscribe(worker, deliver)                   deliver(push) receives every Push for `worker`
    write_initial(table, values)                 worker 0 only; pushed with data_age -1
    push_update(worker, table, clock, delta)     the worker's whole-table update of one clock (host)
    clock(worker, table, clock)                  the worker finished `clock` of `table`

LocalShards implements them with direct calls for a single process. There a sole worker may also
`share_master(worker, table, values)`: the shards then keep its host cache as the master copy, which
that worker updates with the very additions it pushes, instead of repeating them on a copy of their
own (a network transport answers False).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import NamedTuple

import numpy

from geeps_net.errors import PsError
from geeps_net.ps.tables import Directory, RowRange

# SERVER rule hook: (table, range, master values of the range, mean gradient, clock); in place.
ServerRule = Callable[[int, RowRange, numpy.ndarray, numpy.ndarray, int], None]


class Push(NamedTuple):
    """New values of one row range of a table, including every worker's updates up to `data_age`.

    `fresh`: the values never change (a received frame): a receiver may keep them without a copy.
    A named tuple, not a frozen dataclass: one is made per range at every clock of every table, and
    a frozen dataclass takes several times as long to build.
    """

    table: int
    range: RowRange
    values: numpy.ndarray
    data_age: int
    fresh: bool = False


class TabletServer:
    """One shard: master copy of its ranges, a vector clock per table, pending per-clock deltas."""

    def __init__(
        self,
        shard: int,
        num_workers: int,
        update_rule: str = "SUM",
        server_rule: ServerRule | None = None,
    ) -> None:
        if update_rule == "SERVER" and server_rule is None:
            raise PsError(
                "update_rule SERVER needs a server_rule (the solver step run on the server)"
            )
        self.shard, self.num_workers = shard, num_workers
        self.update_rule, self.server_rule = update_rule, server_rule
        self.master: dict[tuple[int, int], numpy.ndarray] = {}  # (table, row_start) -> values
        self.ranges: dict[int, list[RowRange]] = {}
        self.clocks: dict[int, list[int]] = {}  # table -> clocks completed, per worker
        self.pending: dict[tuple[int, int, int], dict[int, numpy.ndarray]] = {}
        self.shared: set[int] = set()  # tables whose master copy is the sole worker's cache

    def add_range(self, table: int, rng: RowRange) -> None:
        """Own `rng` of `table` (zeros until write_initial)."""
        self.ranges.setdefault(table, []).append(rng)
        self.clocks.setdefault(table, [0] * self.num_workers)
        self.master[table, rng.row_start] = numpy.zeros(rng.value_stop - rng.value_start, "float32")

    def share(self, table: int, values: numpy.ndarray) -> None:
        """Keep the sole worker's whole-table cache `values` as this shard's master copy of
        `table`: that worker adds each delta to it before pushing the delta, so apply_update only
        checks the clock. Only one worker, summing or averaging its own deltas, may share."""
        if self.num_workers != 1 or self.update_rule == "SERVER":
            raise PsError(
                f"shard {self.shard}: table {table} cannot share a worker's cache "
                f"({self.num_workers} workers, update_rule {self.update_rule})"
            )
        for rng in self.ranges.get(table, []):
            self.master[table, rng.row_start] = values[rng.values]
        self.shared.add(table)

    def data_age(self, table: int) -> int:
        """The last clock every worker has completed for `table` (-1 before any)."""
        return min(self.clocks[table]) - 1

    def write_initial(self, table: int, values: numpy.ndarray) -> list[Push]:
        """Master copy of this shard's ranges from the whole-table `values`; pushed at age -1."""
        for rng in self.ranges.get(table, []):
            self.master[table, rng.row_start][...] = values[rng.values]
        return self._pushes(table, self.data_age(table))

    def apply_update(
        self,
        worker: int,
        table: int,
        clock: int,
        rows: RowRange,
        delta: numpy.ndarray,
        copy: bool = True,
    ) -> None:
        """Take `worker`'s delta for `rows` at `clock`; applied once every worker finished it.

        copy=False keeps `delta` itself until then (it must not change: a received frame)."""
        done = self.clocks[table][worker]
        if clock != done:
            raise PsError(
                f"shard {self.shard}: worker {worker} sent table {table} clock {clock}, "
                f"expected {done}"
            )
        if self.num_workers == 1 and self.update_rule != "SERVER":
            if table not in self.shared:  # a shared master has the delta already
                self.master[table, rows.row_start] += delta  # nothing to wait for or to order
            return
        slot = self.pending.setdefault((table, rows.row_start, clock), {})
        # a caller that reuses its buffer needs the copy; copy=None copies only to convert
        slot[worker] = numpy.array(delta, dtype="float32", copy=copy or None)

    def clock(self, worker: int, table: int, clock: int) -> list[Push]:
        """`worker` finished `clock` of `table`; the pushes if the minimum clock advanced."""
        clocks = self.clocks[table]
        if clock != clocks[worker]:
            raise PsError(
                f"shard {self.shard}: worker {worker} clocked table {table} at {clock}, "
                f"expected {clocks[worker]}"
            )
        before = min(clocks)
        clocks[worker] += 1
        after = min(clocks)
        if after == before:
            return []
        for done in range(before, after):
            for rng in self.ranges[table]:
                self._apply(table, rng, done)
        return self._pushes(table, after - 1)

    def _apply(self, table: int, rng: RowRange, clock: int) -> None:
        """Apply the deltas of a completed clock to one range, in worker order."""
        deltas = self.pending.pop((table, rng.row_start, clock), {})
        master = self.master[table, rng.row_start]
        if not deltas:
            return
        if self.update_rule == "SUM":
            for worker in sorted(deltas):
                master += deltas[worker]
            return
        order = sorted(deltas)
        if len(order) == 1:
            total = deltas[order[0]].copy()
        else:  # the first add writes the sum: no copy of the first delta (same float32 sums)
            total = numpy.add(deltas[order[0]], deltas[order[1]])
        for worker in order[2:]:
            total += deltas[worker]
        if self.num_workers > 1:
            total /= numpy.float32(self.num_workers)
        if self.update_rule == "AVERAGE":
            master += total
        else:
            self.server_rule(table, rng, master, total, clock)

    def _pushes(self, table: int, age: int) -> list[Push]:
        return [
            Push(table, rng, self.master[table, rng.row_start], age)
            for rng in self.ranges.get(table, [])
        ]


class LocalShards:
    """`num_servers` TabletServers in this process, called directly; pushes delivered synchronously.

    Thread-safe: several in-process clients (workers) may call it from their background threads.
    Pushes are delivered under the shards' lock, in order; `deliver` must not call the shards.
    """

    def __init__(self, config, num_workers: int = 1, server_rule: ServerRule | None = None) -> None:
        self.num_workers = num_workers
        self.directory = Directory(config.num_servers, config.row_size)
        self.servers = [
            TabletServer(s, num_workers, config.update_rule, server_rule)
            for s in range(config.num_servers)
        ]
        self.tables: dict[int, list[RowRange]] = {}
        self.sizes: dict[int, int] = {}
        self.owners: dict[int, list[TabletServer]] = {}  # table -> its shards, in shard order
        self.subscribers: dict[int, Callable[[Push], None]] = {}
        self._lock = threading.RLock()

    def create_table(self, table: int, num_values: int) -> list[RowRange]:
        """Create `table` on the shards owning its ranges (idempotent for the same size)."""
        with self._lock:
            if table in self.sizes:
                if self.sizes[table] != num_values:
                    raise PsError(
                        f"table {table}: created with {self.sizes[table]} values, "
                        f"now {num_values}: workers must create the same tables in the same order"
                    )
                return self.tables[table]
            self.sizes[table] = num_values
            self.tables[table] = self.directory.ranges(table, num_values)
            for rng in self.tables[table]:
                self.servers[rng.shard].add_range(table, rng)
            shards = sorted({rng.shard for rng in self.tables[table]})
            self.owners[table] = [self.servers[s] for s in shards]
            return self.tables[table]

    def subscribe(self, worker: int, deliver: Callable[[Push], None]) -> None:
        """Send every future push for `worker` to `deliver`."""
        with self._lock:
            self.subscribers[worker] = deliver

    def write_initial(self, table: int, values: numpy.ndarray) -> None:
        """Worker 0's initial values of `table`, pushed to every subscriber at data_age -1."""
        with self._lock:
            for server in self.owners[table]:
                self._deliver(server.write_initial(table, values))

    def push_update(self, worker: int, table: int, clock: int, delta: numpy.ndarray) -> None:
        """Hand each shard its rows of `worker`'s whole-table delta of `clock`."""
        with self._lock:
            for rng in self.tables[table]:
                self.servers[rng.shard].apply_update(worker, table, clock, rng, delta[rng.values])

    def share_master(self, worker: int, table: int, values: numpy.ndarray) -> bool:
        """With one worker (not SERVER): its host cache `values` of `table` becomes the master
        copy of every shard holding part of it (TabletServer.share); False when not allowed."""
        with self._lock:
            if self.num_workers != 1 or worker not in self.subscribers:
                return False
            if self.servers[0].update_rule == "SERVER":  # every shard runs the config's rule
                return False
            for server in self.owners[table]:
                server.share(table, values)
            return True

    def clock(self, worker: int, table: int, clock: int) -> None:
        """`worker` finished `clock` of `table` on every shard holding part of it."""
        with self._lock:
            for server in self.owners[table]:
                self._deliver(server.clock(worker, table, clock))

    def read_table(self, table: int) -> numpy.ndarray:
        """The master copy of `table`, assembled from its shards (a new array)."""
        with self._lock:
            out = numpy.empty(self.sizes[table], dtype="float32")
            for rng in self.tables[table]:
                out[rng.values] = self.servers[rng.shard].master[table, rng.row_start]
            return out

    def data_age(self, table: int) -> int:
        """The oldest data age among the shards holding `table`."""
        with self._lock:
            return min((s.data_age(table) for s in self.owners[table]), default=-1)

    def close(self) -> None:
        """Nothing to release in process; present for the transport's interface."""

    def _deliver(self, pushes: list[Push]) -> None:
        for push in pushes:
            for deliver in self.subscribers.values():
                deliver(push)
