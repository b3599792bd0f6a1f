"""The recorded op sequence: its vocabulary, pairing of acquires with releases, access order.

One iteration of calls in execution order: acquires (read, pre_update, local_access), each released
later (post_read, update, post_local_access), and a final clock. Keys are ("param", table id) or
("local", local id); the items are what the planner places.
"""

from __future__ import annotations

from dataclasses import dataclass

from geeps_net.errors import PsError

ALIGN = 256  # bytes; every arena block starts on this boundary (CUDA's allocation granularity)
ACQUIRES = ("read", "pre_update", "local_access")
RELEASE_OF = {"post_read": "read", "update": "pre_update", "post_local_access": "local_access"}
PARAM_OPS = ("read", "post_read", "pre_update", "update")

Key = tuple[str, int]  # ("param", table id) or ("local", local id)


@dataclass(frozen=True)
class Op:
    """One recorded call; `key` is None for clock. fetch: local_access; keep: post_local_access."""

    kind: str
    key: Key | None = None
    fetch: bool = False
    keep: bool = False


@dataclass(frozen=True)
class Item:
    """What the planner places: a parameter table (kind "params") or local data of some kind."""

    key: Key
    name: str
    kind: str
    nbytes: int

    @property
    def cost(self) -> int:
        """Device bytes if resident: a table holds its cache and its update log."""
        copies = 2 if self.kind == "params" else 1
        return copies * align(self.nbytes)


def align(nbytes: int) -> int:
    """nbytes rounded up to ALIGN."""
    return -(-nbytes // ALIGN) * ALIGN


def describe(op: Op, items: dict[Key, Item]) -> str:
    """`update of table 3 ("conv1")` for messages."""
    if op.key is None:
        return op.kind
    what = "table" if op.key[0] == "param" else "local"
    return f'{op.kind} of {what} {op.key[1]} ("{items[op.key].name}")'


def pair_ops(ops: list[Op], items: dict[Key, Item]) -> list[int]:
    """Index of each op's partner (acquire <-> release, LIFO per key; -1 for clock).

    Raises PsError when a release has no acquire, an acquire is never released, or the sequence
    does not end with its one clock.
    """
    pairs = [-1] * len(ops)
    open_: dict[tuple[str, Key], list[int]] = {}
    for i, op in enumerate(ops):
        where = f"virtual iteration op {i} ({describe(op, items)})"
        if op.kind == "clock":
            if i != len(ops) - 1:
                raise PsError(f"{where}: clock must be the last call of the iteration")
            continue
        if op.key not in items:
            raise PsError(f"{where}: unknown key {op.key}")
        if (op.kind in PARAM_OPS) != (op.key[0] == "param"):
            raise PsError(
                f"{where}: {op.kind} needs a {'table' if op.kind in PARAM_OPS else 'local'}"
            )
        if op.kind in ACQUIRES:
            open_.setdefault((op.kind, op.key), []).append(i)
            continue
        stack = open_.get((RELEASE_OF[op.kind], op.key))
        if not stack:
            raise PsError(f"{where}: no {RELEASE_OF[op.kind]} of it is outstanding")
        j = stack.pop()
        pairs[i], pairs[j] = j, i
    if not ops or ops[-1].kind != "clock":
        raise PsError("the virtual iteration must end with clock()")
    for stack in open_.values():
        if stack:
            i = stack[0]
            raise PsError(f"virtual iteration op {i} ({describe(ops[i], items)}) is never released")
    return pairs


def direct_logs(ops: list[Op], resident: set[Key]) -> set[Key]:
    """Resident tables with one pre_update per iteration: their update log is that buffer."""
    counts: dict[Key, int] = {}
    for op in ops:
        if op.kind == "pre_update":
            counts[op.key] = counts.get(op.key, 0) + 1
    return {k for k, n in counts.items() if n == 1 and k in resident}


def first_access_order(ops: list[Op], items: dict[Key, Item]) -> list[Key]:
    """Every item key, in order of first access; never-accessed items last, in creation order."""
    seen: dict[Key, None] = {}
    for op in ops:
        if op.key is not None:
            seen.setdefault(op.key)
    return list(seen) + [k for k in items if k not in seen]
