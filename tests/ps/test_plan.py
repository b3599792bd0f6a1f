"""Planner on synthetic op sequences: pairing, peak, placement order, budgets, traffic, layout."""

import numpy
import pytest

from geeps_net.errors import PsError
from geeps_net.ps.ops import ALIGN, Item, Op, pair_ops
from geeps_net.ps.placement import Curves, min_budget, packed_layout, peak_of, place, pool_layout
from geeps_net.ps.plan import make_plan

T, U = ("param", 0), ("param", 1)
X, Y, Z = ("local", 0), ("local", 1), ("local", 2)
ITEMS = {
    T: Item(T, "T", "params", 1024),
    U: Item(U, "U", "params", 1024),
    X: Item(X, "X", "activation", 2048),
    Y: Item(Y, "Y", "history", 1024),
    Z: Item(Z, "Z", "internal", 512),
}
# held pool bytes after each op with nothing resident, in the comments
OPS = [
    Op("read", T),  # 1024
    Op("post_read", T),  # 0
    Op("local_access", Y, fetch=True),  # 1024
    Op("post_local_access", Y, keep=True),  # 0
    Op("read", U),  # 1024
    Op("post_read", U),  # 0
    Op("local_access", X, fetch=True),  # 2048
    Op("local_access", Z),  # 2560: scratch, neither fetched nor kept
    Op("pre_update", T),  # 3584: the peak
    Op("update", T),
    Op("post_local_access", Z),
    Op("post_local_access", X, keep=True),
    Op("clock"),
]


def test_pairs_match_acquires_and_releases():
    pairs = pair_ops(OPS, ITEMS)
    assert pairs[:4] == [1, 0, 3, 2]
    assert pairs[6:12] == [11, 10, 9, 8, 7, 6]
    nested = [Op("read", T), Op("read", T), Op("post_read", T), Op("post_read", T), Op("clock")]
    assert pair_ops(nested, ITEMS) == [3, 2, 1, 0, -1]  # last in, first out per key


@pytest.mark.parametrize(
    "ops,message",
    [
        ([Op("post_read", T), Op("clock")], "op 0 .post_read of table 0 .*no read of it"),
        ([Op("read", T), Op("clock")], 'op 0 .read of table 0 \\("T"\\). is never released'),
        ([Op("read", T), Op("post_read", T)], "must end with clock"),
        ([Op("clock"), Op("read", T)], "clock must be the last call"),
        ([Op("read", X), Op("post_read", X), Op("clock")], "read needs a table"),
        ([Op("local_access", T), Op("clock")], "local_access needs a local"),
    ],
)
def test_bad_sequences_name_the_op(ops, message):
    with pytest.raises(PsError, match=message):
        pair_ops(ops, ITEMS)


def test_curves_give_the_peak_and_what_residency_removes():
    curves = Curves(OPS, pair_ops(OPS, ITEMS), ITEMS)
    assert curves.held.tolist() == [1024, 0, 1024, 0, 1024, 0, 2048, 2560, 3584, 2560, 2048, 0, 0]
    assert peak_of(curves.held) == 3584
    assert set(curves.at_peak(curves.held, set())) == {X, Z, T}
    # T resident: its read and (single) pre_update are zero copy
    assert peak_of(curves.held - curves.of[T]) == 2560


def test_a_table_updated_twice_per_clock_keeps_pooled_update_buffers():
    ops = [Op("pre_update", T), Op("update", T)] * 2 + [Op("clock")]
    plan = make_plan(ops, ITEMS, 0, 1, 128)
    assert plan.direct == set() and plan.pooled == [True, False, True, False, False]
    assert plan.placement.peak == 1024 and plan.pool_size == 2048
    assert plan.last_write == [False, False, False, True, False]
    single = make_plan(OPS, ITEMS, 0, 1, 128)
    assert single.direct == {T} and not any(single.pooled)


@pytest.mark.parametrize(
    "capacity,resident",
    [
        (4608, {X, Z}),  # the smallest at level 1: X then Z lower twice the peak the most
        (7000, {X, Y, Z}),  # X at the peak, then the kept Y; no table fits; scratch Z last
        (7200, {X, Y, T}),  # tables come before scratch data, in first-access order (T, not U)
        (10000, {X, Y, T, U, Z}),
    ],
)
def test_placement_follows_geeps_order(capacity, resident):
    plan = make_plan(OPS, ITEMS, capacity, 1, 128)
    assert plan.placement.resident == resident
    assert plan.arena_size == capacity
    assert plan.pool_size == capacity - sum(ITEMS[k].cost for k in resident)
    assert plan.pool_size >= 2 * plan.placement.peak


def test_unlimited_budget_places_everything():
    plan = make_plan(OPS, ITEMS, 0, 1, 128)
    assert plan.placement.resident == set(ITEMS)
    assert plan.arena_size == plan.total_bytes == 2048 + 2048 + 2048 + 1024 + 512
    assert plan.pool_size == 0 and plan.to_device == plan.to_host == 0


@pytest.mark.parametrize("level,smallest", [(0, 3584), (1, 4608), (2, 5632), (3, 7680)])
def test_min_budget_is_accepted_and_one_alignment_less_is_not(level, smallest):
    pairs = pair_ops(OPS, ITEMS)
    assert min_budget(OPS, pairs, ITEMS, level) == smallest
    plan = make_plan(OPS, ITEMS, smallest, level, 128)
    assert plan.min_budget == smallest
    assert plan.pool_size >= (1 if level == 0 else 2) * plan.placement.peak
    with pytest.raises(PsError, match=f"smallest budget that works is {smallest} B"):
        place(OPS, pairs, ITEMS, smallest - ALIGN, level)


def test_level_two_and_three_force_data_onto_the_device():
    assert {X, Y} <= make_plan(OPS, ITEMS, 6000, 2, 128).placement.resident
    assert {X, Y, T, U} <= make_plan(OPS, ITEMS, 8000, 3, 128).placement.resident
    with pytest.raises(PsError, match="mm_warning_level 3"):
        make_plan(OPS, ITEMS, 7000, 3, 128)


def test_level_zero_warns_without_double_buffering():
    """3584 B is one peak with nothing resident. Level 0 fills the room above one peak too, in
    GeePS's order (local data at the peak first): X, then Z, leaving a pool of one new peak."""
    plan = make_plan(OPS, ITEMS, 3584, 0, 128)
    assert plan.placement.resident == {X, Z}
    assert plan.placement.peak == 1024 and plan.pool_size == 1024
    assert plan.placement.warnings and "no double buffering" in plan.placement.warnings[0]
    assert "warning:" in plan.summary()


def test_predicted_traffic_and_per_op_flags():
    plan = make_plan(OPS, ITEMS, 4608, 1, 128)  # X, Z resident
    assert plan.to_device == 1024 + 1024 + 1024  # reads of T and U, fetch of Y
    assert plan.to_host == 1024 + 1024  # keep of Y, update of T
    assert [i for i, p in enumerate(plan.pooled) if p] == [0, 2, 4, 8]
    assert plan.keeps_per_iter == {Y: 1, X: 1}
    assert plan.keeps_before[2] == 0 and plan.unwritten == [U]
    assert plan.offsets.keys() == {X, Z} and plan.pool_offset == 2048 + 512


def test_summary_reports_rows_bytes_pool_and_traffic():
    text = make_plan(OPS, ITEMS, 4608, 1, 128).summary()
    assert "budget 4.5 KiB" in text and "calls per iteration" in text
    lines = {line.split()[0]: line.split() for line in text.splitlines()[2:]}
    assert lines["params"][1:] == ["0", "0", "B", "4", "2.0", "KiB"]  # 2 x 1024 B = 4 rows of 512
    assert lines["activation"][1:3] == ["4", "2.0"]
    assert "access pool 2.0 KiB (peak 1.0 KiB)" in text
    assert "3.0 KiB host->device, 2.0 KiB device->host" in text


def random_sequence(rng, n_items=6, n_acquires=14):
    items = {("local", i): Item(("local", i), f"l{i}", "activation", int(rng.integers(1, 9)) * 256)
             for i in range(n_items)}  # fmt: skip
    events = []
    for k in range(n_acquires):
        start, stop = sorted(rng.choice(2 * n_acquires, 2, replace=False))
        events += [(start, 1, k), (stop, 0, k)]
    keys = [("local", int(rng.integers(n_items))) for _ in range(n_acquires)]
    ops = []
    for _, acquire, k in sorted(events):
        kind = "local_access" if acquire else "post_local_access"
        ops.append(
            Op(kind, keys[k], fetch=bool(acquire and k % 2), keep=bool(not acquire and k % 3))
        )
    return ops + [Op("clock")], items


@pytest.mark.parametrize("seed", range(20))
def test_pool_layouts_never_overlap_live_blocks(seed):
    ops, items = random_sequence(numpy.random.default_rng(seed))
    pairs = pair_ops(ops, items)
    curves = Curves(ops, pairs, items)
    blocks = curves.pooled(set())
    _, extent = packed_layout(blocks)
    assert extent >= peak_of(curves.held)
    for pool in (extent, 2 * extent):
        layout = pool_layout(blocks, pool)
        assert layout is not None
        spans = [(i, j, layout[i], layout[i] + size) for i, j, size in blocks]
        for a in spans:
            assert 0 <= a[2] and a[3] <= pool
            for b in spans:
                if a is not b and a[0] < b[1] and b[0] < a[1]:  # alive at the same time
                    assert a[3] <= b[2] or b[3] <= a[2]
    budget = min_budget(ops, pairs, items, 1)
    plan = make_plan(ops, items, budget, 1, 128)
    assert plan.arena_size == budget
    assert plan.pool_size >= max(2 * plan.placement.peak, packed_layout(
        Curves(ops, pairs, items).pooled(plan.placement.resident))[1])  # fmt: skip
