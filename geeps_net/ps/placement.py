"""Which data lives on the device (GeePS's Algorithm 2 on a byte budget), and where pool blocks go.

Non-resident accesses hold access-pool blocks from their acquire to their release; resident ones
are zero copy. The pool bytes held after each op form a curve, `held(R) = held(nothing) - sum of
curve[k] for k in R`, linear in the resident set R; its maximum is the peak. A placement needs
`cost(R) + max(2 x peak, layout extent)` bytes (1 x peak at mm_warning_level 0): room to double
buffer, and a fragmentation-free layout of the blocks (see `pool_layout`).

The planner first makes the budget feasible, placing whichever item held at the peak lowers the
need most (a big table at the peak costs its cache and log but can take more than that off twice
the peak), then fills the remaining room in GeePS's order: local data used at the peak, other
fetched or kept local data, parameter tables in first-access order, then scratch local data.
At mm_warning_level 0 the fill goes on down to a pool of one peak: below 2 x peak there is no
double buffering anyway, and data kept resident moves no bytes (LeNet at half its footprint:
4.6 instead of 11.3 MiB moved per iteration, 0.94 instead of 0.80 of unlimited throughput).
`min_budget` walks the same path, so any budget at or above it is accepted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy

from geeps_net.errors import PsError
from geeps_net.ps.memory import PoolAllocator
from geeps_net.ps.ops import ACQUIRES, ALIGN, Item, Key, Op, align, first_access_order


@dataclass
class Placement:
    """Resident items, the pool left for the rest, its peak, and each pooled op's block offset."""

    resident: set[Key]
    peak: int
    pool: int
    resident_bytes: int
    layout: dict[int, int] = field(default_factory=dict)  # op index -> offset in the pool
    warnings: list[str] = field(default_factory=list)


class Curves:
    """Pool bytes held after each op with nothing resident, and what each item contributes."""

    def __init__(self, ops: list[Op], pairs: list[int], items: dict[Key, Item]) -> None:
        n = len(ops)
        updates = [op.key for op in ops if op.kind == "pre_update"]
        single = {k for k in updates if updates.count(k) == 1}  # resident: the log is the buffer
        self.items = items
        self.held = numpy.zeros(n, dtype=numpy.int64)
        self.of: dict[Key, numpy.ndarray] = {}
        self.blocks: list[tuple[int, int, int, Key | None]] = []  # (op, release, bytes, key)
        for i, op in enumerate(ops):
            if op.kind not in ACQUIRES:
                continue
            size = align(items[op.key].nbytes)
            self.held[i : pairs[i]] += size
            owner = op.key if op.kind != "pre_update" or op.key in single else None
            if size:
                self.blocks.append((i, pairs[i], size, owner))
            if owner is not None:
                curve = self.of.setdefault(op.key, numpy.zeros(n, dtype=numpy.int64))
                curve[i : pairs[i]] += size

    def at_peak(self, held: numpy.ndarray, resident) -> list[Key]:
        """Non-resident keys holding pool bytes at some op where the curve peaks."""
        if not held.size or held.max() == 0:
            return []
        moments = held == held.max()
        return [k for k, c in self.of.items() if k not in resident and c[moments].any()]

    def pooled(self, resident) -> list[tuple[int, int, int]]:
        """(acquire, release, bytes) of every access that still takes a pool block."""
        return [
            (i, j, size) for i, j, size, key in self.blocks if key is None or key not in resident
        ]


def peak_of(held: numpy.ndarray) -> int:
    """The maximum of a held curve (0 for an empty sequence)."""
    return int(held.max()) if held.size else 0


def packed_layout(blocks: list[tuple[int, int, int]]) -> tuple[list[int], int]:
    """Offline packing: (offsets, extent). Largest blocks first, each at the lowest offset clear of
    the placed blocks whose lifetimes overlap it."""
    if not blocks:
        return [], 0
    starts, stops, sizes = (numpy.array(column, dtype=numpy.int64) for column in zip(*blocks))
    offsets = numpy.zeros(len(blocks), dtype=numpy.int64)
    placed = numpy.zeros(len(blocks), dtype=bool)
    for k in sorted(range(len(blocks)), key=lambda k: (-sizes[k], starts[k])):
        live = placed & (starts < stops[k]) & (stops > starts[k])
        at = 0
        for lo, hi in sorted(zip(offsets[live], offsets[live] + sizes[live])):
            if lo - at >= sizes[k]:
                break
            at = max(at, int(hi))
        offsets[k], placed[k] = at, True
    return offsets.tolist(), int((offsets + sizes).max())


def nextfit_layout(blocks: list[tuple[int, int, int]], pool_size: int) -> list[int] | None:
    """Offsets from replaying the pool's next-fit allocator over one iteration in call order;
    None if a block does not fit. The pool is empty at every clock, so they hold every iteration."""
    pool, offsets = PoolAllocator(0, pool_size), [0] * len(blocks)
    events = sorted(
        [(i, True, k) for k, (i, _, _) in enumerate(blocks)]
        + [(j, False, k) for k, (_, j, _) in enumerate(blocks)]
    )
    for _, acquire, k in events:
        if not acquire:
            pool.free(offsets[k])
        elif (offset := pool.try_alloc(blocks[k][2])) is None:
            return None
        else:
            offsets[k] = offset
    return offsets


def pool_layout(blocks: list[tuple[int, int, int]], pool_size: int) -> dict[int, int] | None:
    """Op index -> pool offset: next-fit if it fits (it spreads blocks around the pool, which
    lets the allocator prefetch further ahead), else the packed layout, else None."""
    offsets = nextfit_layout(blocks, pool_size)
    if offsets is None:
        offsets, extent = packed_layout(blocks)
        if extent > pool_size:
            return None
    return {i: offset for (i, _, _), offset in zip(blocks, offsets, strict=True)}


class _Greedy:
    """A growing resident set with its cost and held curve; `factor` multiplies the peak."""

    def __init__(self, curves: Curves, factor: int) -> None:
        self.curves, self.factor = curves, factor
        self.resident: set[Key] = set()
        self.used = 0
        self.held = curves.held.copy()

    def need(self, key: Key | None = None) -> int:
        """cost + factor x peak, now or with `key` placed too (the fast estimate)."""
        held, cost = self.held, 0
        if key is not None:
            held = held - self.curves.of[key] if key in self.curves.of else held
            cost = self.curves.items[key].cost
        return self.used + cost + self.factor * peak_of(held)

    def full_need(self) -> int:
        """The bytes this placement really needs: cost + max(factor x peak, layout extent)."""
        extent = packed_layout(self.curves.pooled(self.resident))[1]
        return self.used + max(self.factor * peak_of(self.held), extent)

    def add(self, key: Key, sign: int = 1) -> None:
        """Place `key` (sign -1: take it back)."""
        if sign > 0:
            self.resident.add(key)
        else:
            self.resident.discard(key)
        self.used += sign * self.curves.items[key].cost
        if key in self.curves.of:
            self.held = self.held - sign * self.curves.of[key]

    def best_step(self) -> Key | None:
        """The item at the peak whose placement lowers the need most (None if none lowers it)."""
        now, best, choice = self.need(), None, None
        for key in self.curves.at_peak(self.held, self.resident):
            need = self.need(key)
            if need < now and (best is None or need < best):
                best, choice = need, key
        return choice


def _start(ops: list[Op], pairs: list[int], items: dict[Key, Item], level: int) -> _Greedy:
    """The placement every budget starts from: what mm_warning_level requires resident
    (2: fetched or kept local data; 3: also every table)."""
    greedy = _Greedy(Curves(ops, pairs, items), 1 if level == 0 else 2)
    stored = {op.key for op in ops if op.fetch or op.keep}
    for k in first_access_order(ops, items):
        if (level >= 2 and k[0] == "local" and k in stored) or (level >= 3 and k[0] == "param"):
            greedy.add(k)
    return greedy


def min_budget(ops: list[Op], pairs: list[int], items: dict[Key, Item], level: int) -> int:
    """The smallest gpu_memory_capacity `place` accepts at mm_warning_level `level`."""
    greedy = _start(ops, pairs, items, level)
    best = greedy.full_need()
    while (key := greedy.best_step()) is not None:
        greedy.add(key)
        best = min(best, greedy.full_need())
    return max(best, ALIGN)  # 0 would mean unlimited


def place(
    ops: list[Op], pairs: list[int], items: dict[Key, Item], capacity: int, level: int
) -> Placement:
    """Choose the resident items for a budget of `capacity` bytes (0 = unlimited: all of them).

    mm_warning_level: 0 accepts a pool between 1 and 2 x peak (with a warning); 1 wants 2 x peak;
    2 also wants all fetched or kept local data resident; 3 every parameter table as well.
    """
    if capacity == 0:
        greedy = _Greedy(Curves(ops, pairs, items), 2)
        for key in items:
            greedy.add(key)
        capacity = greedy.full_need()  # the pool: 2 x peak of what still needs blocks
    else:
        greedy = _start(ops, pairs, items, level)
        while greedy.full_need() > capacity:
            if (key := greedy.best_step()) is None:
                raise PsError(
                    f"gpu_memory_capacity = {capacity} B cannot hold the data accessed at once "
                    f"{'twice over ' if level else ''}(mm_warning_level {level}): the smallest "
                    f"budget that works is {min_budget(ops, pairs, items, level)} B"
                )
            greedy.add(key)
        _fill(ops, items, greedy, capacity)
    pool = capacity - greedy.used
    layout = pool_layout(greedy.curves.pooled(greedy.resident), pool)
    pk = peak_of(greedy.held)
    placement = Placement(greedy.resident, pk, pool, greedy.used, layout)
    if pool < 2 * pk:
        placement.warnings.append(
            f"gpu_memory_capacity = {capacity} B leaves a {pool} B access pool, below "
            f"2 x peak = {2 * pk} B: no double buffering"
        )
    return placement


def _fill(ops: list[Op], items: dict[Key, Item], greedy: _Greedy, capacity: int) -> None:
    """Place more while cost + 2 x peak fits (at mm_warning_level 0, where the pool may be as
    small as one peak, while cost + 1 x peak fits), in GeePS's order of preference; then take back
    the last ones until the pool layout fits too."""
    added: list[Key] = []

    def fits(key: Key) -> bool:
        if key in greedy.resident or greedy.need(key) > capacity:
            return False
        greedy.add(key)
        added.append(key)
        return True

    stored = {op.key for op in ops if op.fetch or op.keep}
    while any(  # local data at the peak first, finding the peak again after each success
        k[0] == "local" and k in stored and fits(k)
        for k in greedy.curves.at_peak(greedy.held, greedy.resident)
    ):
        pass
    order = first_access_order(ops, items)
    for wanted in (
        lambda k: k[0] == "local" and k in stored,  # other fetched or kept local data
        lambda k: k[0] == "param",  # tables in first-access order
        lambda k: True,  # scratch local data
    ):
        for key in order:
            if wanted(key):
                fits(key)
    while added and greedy.full_need() > capacity:
        greedy.add(added.pop(), sign=-1)
