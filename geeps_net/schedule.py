"""The access schedule of one training iteration: which PS data each layer step acquires and
releases.

A pure pass over a built Net (DESIGN §4, "Virtual iteration"). The worker walks the schedule with
compute off to record the op sequence and with compute on for every real iteration, so the record
*is* the iteration. Keys are ("data", blob), ("diff", blob), ("internal", blob), ("frozen", blob),
tables are indexes into `Schedule.tables`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from geeps_net.blob import Blob


@dataclass
class Table:
    """Parameter data: the learnable blobs of `layers_per_table` consecutive layers,
    concatenated."""

    name: str
    params: list  # net.Learnable entries, in learnable order
    offsets: list[int]
    size: int

    @functools.cached_property
    def slices(self) -> list[tuple]:
        """(param, slice of the table's values it holds) of each param, in table order."""
        return [(p, slice(o, o + p.blob.count)) for p, o in zip(self.params, self.offsets)]


@dataclass
class Step:
    """One layer's forward or backward step: what to acquire before compute and release after."""

    layer: int
    reads: list[int] = field(default_factory=list)  # tables read (forward and backward)
    pre_updates: list[int] = field(default_factory=list)  # tables whose update buffer starts here
    updates: list[int] = field(
        default_factory=list
    )  # tables whose update is applied after this step
    acquire: list[tuple] = field(default_factory=list)  # (key, fetch)
    release: list[tuple] = field(default_factory=list)  # (key, keep)


@dataclass
class Schedule:
    """Tables, local keys and the forward/backward steps of one iteration of `net`."""

    tables: list[Table]
    locals: dict  # key -> (blob, kind)
    forward: list[Step]
    backward: list[Step]
    idle_updates: list[int]  # tables whose layers need no backward: updated with zero gradients
    table_of: dict  # id(learnable blob) -> table index


def build_schedule(net, layers_per_table: int = 1, train: bool = True) -> Schedule:
    """One iteration's schedule: forward, then (when `train`) backward where the net needs it."""
    tables, table_of = _tables(net, layers_per_table)
    locals_ = _local_keys(net, table_of, train)
    forward = _forward_steps(net, table_of, locals_, train)
    if train:
        backward, updated = _backward_steps(net, table_of, locals_)
    else:  # forward only (testing, inference): no diffs, no updates
        backward, updated = [], set(range(len(tables)))
    idle = [t for t in range(len(tables)) if t not in updated]
    return Schedule(tables, locals_, forward, backward, idle, table_of)


def _tables(net, layers_per_table: int):
    """Group trainable params (lr_mult != 0) by owning layer, `layers_per_table` layers a table."""
    groups: list[list] = []
    last_layer, layers_in_group = None, 0
    for p in net.learnable:
        if p.lr_mult == 0:
            continue  # frozen: local data
        if p.layer_index != last_layer:
            if not groups or layers_in_group >= layers_per_table:
                groups.append([])
                layers_in_group = 0
            layers_in_group += 1
            last_layer = p.layer_index
        groups[-1].append(p)
    tables, table_of = [], {}
    for i, params in enumerate(groups):
        offsets, size = [], 0
        for p in params:
            offsets.append(size)
            size += p.blob.count
            table_of[id(p.blob)] = i
        names = sorted({net.layers[p.layer_index].name for p in params})
        tables.append(Table("+".join(names), params, offsets, size))
    return tables, table_of


def _diff_needed(net) -> set[int]:
    """Blobs whose diff some backward writes or reads."""
    need = set()
    for i, layer in enumerate(net.layers):
        if not net.layer_need_backward[i]:
            continue
        for j, b in enumerate(net.bottoms[i]):
            if net.bottom_need_backward[i][j]:
                need.add(id(b))
        if "top_diff" in layer.backward_reads or any(net.loss_weights[i]):
            need.update(id(t) for t in net.tops[i])
    return need


def _local_keys(net, table_of, train: bool) -> dict:
    keys = {}
    diffs = _diff_needed(net) if train else set()
    for blob in net.blobs.values():
        kind = "input" if _produced_by_data_layer(net, blob) else "activation"
        keys["data", blob.name] = (blob, kind)
        if id(blob) in diffs:
            keys["diff", blob.name] = (blob, "diff")
    for layer in net.layers:
        for blob in layer.internals.values():
            keys["internal", blob.name] = (blob, "internal")
    for p in net.learnable:
        if id(p.blob) not in table_of:
            keys["frozen", p.blob.name] = (p.blob, "frozen")
    return keys


def _produced_by_data_layer(net, blob: Blob) -> bool:
    for layer, tops in zip(net.layers, net.tops):
        if any(t is blob for t in tops):
            return not net.bottoms[net.layers.index(layer)]
    return False


def layer_tables(net, i: int, table_of) -> list[int]:
    """Tables holding layer i's learnable blobs (its own or shared), in first-use order."""
    out = []
    for b in net.layers[i].blobs:
        t = table_of.get(id(b))
        if t is not None and t not in out:
            out.append(t)
    return out


def _frozen_keys(net, i: int, table_of) -> list:
    return [("frozen", b.name) for b in net.layers[i].blobs if id(b) not in table_of]


def _forward_uses(net, i: int, table_of) -> list:
    """Local keys layer i's forward touches, with fetch: bottoms' data in, tops/internals
    written."""
    uses, seen = [], set()
    for b in net.bottoms[i]:
        uses.append((("data", b.name), True))
        seen.add(b.name)
    fed = net.layers[i].type == "Input"  # its tops are written from outside, between iterations
    for t in net.tops[i]:
        if t.name not in seen:
            uses.append((("data", t.name), fed))
    uses += [(("internal", b.name), False) for b in net.layers[i].internals.values()]
    uses += [(k, True) for k in _frozen_keys(net, i, table_of)]
    return uses


def _backward_uses(net, i: int, table_of, locals_) -> list:
    """Local keys layer i's backward touches: what it declared it reads, internals, bottom diffs."""
    layer, reads, uses = net.layers[i], net.layers[i].backward_reads, {}
    if "bottom_data" in reads:
        for b in net.bottoms[i]:
            uses["data", b.name] = True
    for t in net.tops[i]:
        if "top_data" in reads:
            uses["data", t.name] = True
        if ("diff", t.name) in locals_:
            uses["diff", t.name] = True  # read, or set to the loss weight
    for b in layer.internals.values():
        uses["internal", b.name] = True
    for k in _frozen_keys(net, i, table_of):
        uses[k] = True
    for j, b in enumerate(net.bottoms[i]):
        if net.bottom_need_backward[i][j] and ("diff", b.name) not in uses:
            uses["diff", b.name] = False  # written by this layer
    return list(uses.items())


def _read_later(order: list[list], position: int, key) -> bool:
    return any(key in keys for keys in order[position + 1 :])


def _forward_steps(net, table_of, locals_, train: bool) -> list[Step]:
    """Forward steps; a blob held by layer i and used by layer i+1 stays held between them."""
    n = len(net.layers)
    uses = [_forward_uses(net, i, table_of) for i in range(n)]
    backward_keys = {k for i in range(n) if train and net.layer_need_backward[i]
                     for k, _ in _backward_uses(net, i, table_of, locals_)}  # fmt: skip
    later = [[k for k, _ in u] for u in uses]
    steps, held = [], set()
    for i in range(n):
        step = Step(i, reads=layer_tables(net, i, table_of))
        step.acquire = [(k, fetch) for k, fetch in uses[i] if k not in held]
        held.update(k for k, _ in uses[i])
        next_keys = set(later[i + 1]) if i + 1 < n else set()
        for key in [k for k in held if k not in next_keys]:
            needed = _read_later(later, i, key) or key in backward_keys or key[0] == "frozen"
            step.release.append((key, needed))
            held.discard(key)
        steps.append(step)
    return steps


def _backward_steps(net, table_of, locals_):
    """Backward steps in reverse layer order, with each table's update after its last user."""
    order = [i for i in reversed(range(len(net.layers))) if net.layer_need_backward[i]]
    uses = [_backward_uses(net, i, table_of, locals_) for i in order]
    keys = [[k for k, _ in u] for u in uses]
    last_user = {}
    for pos, i in enumerate(order):
        for t in layer_tables(net, i, table_of):
            last_user[t] = pos
    steps, held, started = [], set(), set()
    for pos, i in enumerate(order):
        tables = layer_tables(net, i, table_of)
        step = Step(i, reads=tables)
        step.pre_updates = [t for t in tables if t not in started]
        started.update(tables)
        step.updates = [t for t in tables if last_user[t] == pos]
        step.acquire = [(k, fetch) for k, fetch in uses[pos] if k not in held]
        held.update(keys[pos])
        next_keys = set(keys[pos + 1]) if pos + 1 < len(order) else set()
        for key in [k for k in held if k not in next_keys]:
            written = key[0] == "diff" or key[0] == "frozen"
            step.release.append(
                (key, written and (_read_later(keys, pos, key) or key[0] == "frozen"))
            )
            held.discard(key)
        steps.append(step)
    return steps, started
