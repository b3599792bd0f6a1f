"""The plan of one recorded iteration: placement, arena layout, per-op flags, predicted traffic.

`make_plan` pairs the recorded ops, places data (placement.py: GeePS's Algorithm 2 on a byte
budget), lays out the arena (resident items, then the access pool), and precomputes what the runtime
asks per op: served from the pool or zero copy, last update of its table this clock, write-backs a
fetch must wait for. `Plan.summary()` is the start-up report.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from geeps_net.ps.ops import (
    ACQUIRES,
    Item,
    Key,
    Op,
    align,
    direct_logs,
    first_access_order,
    pair_ops,
)
from geeps_net.ps.placement import Placement, min_budget, place

KIND_ORDER = ("params", "activation", "diff", "history", "internal", "input", "frozen")


@dataclass
class Plan:
    """Everything the runtime needs from the virtual iteration, precomputed per op."""

    ops: list[Op]
    pairs: list[int]
    items: dict[Key, Item]
    capacity: int  # the budget; 0 = unlimited
    level: int  # mm_warning_level
    row_size: int
    placement: Placement
    offsets: dict[Key, int]  # arena offset of each resident item (a table's cache)
    log_offsets: dict[Key, int]  # arena offset of each resident table's update log
    pool_offset: int
    pool_size: int
    arena_size: int
    direct: set[Key]  # resident tables whose update log is handed out by pre_update
    pooled: list[bool]  # acquire takes an access-pool buffer (prepared by the allocator thread)
    last_write: list[bool]  # update that completes its table's clock
    unwritten: list[Key]  # tables no update touches: clocked at the clock op
    keeps_before: list[int]  # local_access: keeps of that local earlier in the iteration
    keeps_per_iter: dict[Key, int]
    to_device: int  # predicted bytes copied host -> device per iteration
    to_host: int  # predicted bytes copied device -> host per iteration
    _min_budgets: dict[int, int] = field(default_factory=dict, repr=False)

    @property
    def total_bytes(self) -> int:
        """Device bytes of every table (cache + log) and all local data: the whole footprint."""
        return sum(item.cost for item in self.items.values())

    @property
    def min_budget(self) -> int:
        """The smallest gpu_memory_capacity accepted at this plan's mm_warning_level."""
        return self.min_budget_at(self.level)

    def min_budget_at(self, level: int) -> int:
        """The smallest gpu_memory_capacity accepted at mm_warning_level `level` (computed once)."""
        if level not in self._min_budgets:
            self._min_budgets[level] = min_budget(self.ops, self.pairs, self.items, level)
        return self._min_budgets[level]

    def resident(self, key: Key) -> bool:
        """True when `key` lives in the arena."""
        return key in self.placement.resident

    def summary(self) -> str:
        """Rows and bytes on device / host per kind, pool, peak and predicted traffic."""
        budget = "unlimited" if self.capacity == 0 else _size(self.capacity)
        lines = [
            f"PS plan: {len(self.ops)} calls per iteration, budget {budget}, arena "
            f"{_size(self.arena_size)}",
            f"  {'kind':<11}{'device rows':>12}{'device bytes':>14}{'host rows':>11}"
            f"{'host bytes':>12}",
        ]
        row_bytes = 4 * self.row_size
        for kind in KIND_ORDER:
            sums = [0, 0, 0, 0]
            for key, item in self.items.items():
                if item.kind == kind:
                    j = 0 if self.resident(key) else 2
                    sums[j] += -(-item.nbytes // row_bytes)
                    sums[j + 1] += item.nbytes
            if any(sums):
                lines.append(
                    f"  {kind:<11}{sums[0]:>12}{_size(sums[1]):>14}{sums[2]:>11}"
                    f"{_size(sums[3]):>12}"
                )
        lines.append(
            f"  access pool {_size(self.pool_size)} (peak {_size(self.placement.peak)}); predicted "
            f"per iteration: {_size(self.to_device)} host->device, "
            f"{_size(self.to_host)} device->host"
        )
        return "\n".join(lines + [f"  warning: {w}" for w in self.placement.warnings])


def _size(nbytes: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} B"


def make_plan(
    ops: list[Op], items: dict[Key, Item], capacity: int, level: int, row_size: int
) -> Plan:
    """Pair, place, lay out the arena and precompute the per-op flags of one recorded iteration."""
    pairs = pair_ops(ops, items)
    placement = place(ops, pairs, items, capacity, level)
    offsets, log_offsets, at = {}, {}, 0
    for key in first_access_order(ops, items):
        if key in placement.resident:
            offsets[key], at = at, at + align(items[key].nbytes)
            if key[0] == "param":
                log_offsets[key], at = at, at + align(items[key].nbytes)
    arena_size = capacity if capacity else at + placement.pool
    direct = direct_logs(ops, placement.resident)
    last_write = [False] * len(ops)
    written = set()
    for i in reversed(range(len(ops))):
        if ops[i].kind == "update" and ops[i].key not in written:
            written.add(ops[i].key)
            last_write[i] = True
    keeps_before, keeps_per_iter = [0] * len(ops), {}
    for i, op in enumerate(ops):
        if op.kind == "local_access":
            keeps_before[i] = keeps_per_iter.get(op.key, 0)
        elif op.kind == "post_local_access" and op.keep:
            keeps_per_iter[op.key] = keeps_per_iter.get(op.key, 0) + 1
    moved = _predicted(ops, items, placement.resident)
    return Plan(
        ops=ops,
        pairs=pairs,
        items=items,
        capacity=capacity,
        level=level,
        row_size=row_size,
        placement=placement,
        offsets=offsets,
        log_offsets=log_offsets,
        pool_offset=at,
        pool_size=arena_size - at,
        arena_size=arena_size,
        direct=direct,
        pooled=[_pooled(op, placement.resident, direct) for op in ops],
        last_write=last_write,
        unwritten=[k for k in items if k[0] == "param" and k not in written],
        keeps_before=keeps_before,
        keeps_per_iter=keeps_per_iter,
        to_device=moved[0],
        to_host=moved[1],
    )


def _pooled(op: Op, resident: set[Key], direct: set[Key]) -> bool:
    """True for an acquire served from the access pool (not zero copy)."""
    if op.kind == "pre_update":
        return op.key not in direct
    return op.kind in ACQUIRES and op.key not in resident


def _predicted(ops: list[Op], items: dict[Key, Item], resident: set[Key]) -> tuple[int, int]:
    """(host->device, device->host) bytes of one iteration: what non-resident accesses must copy."""
    to_device = to_host = 0
    for op in ops:
        if op.key is None or op.key in resident:
            continue
        nbytes = items[op.key].nbytes
        if op.kind == "read" or (op.kind == "local_access" and op.fetch):
            to_device += nbytes
        elif op.kind == "update" or (op.kind == "post_local_access" and op.keep):
            to_host += nbytes
    return to_device, to_host
