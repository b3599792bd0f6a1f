"""Client end to end without a Net: the fake loop through the PS equals plain NumPy bit for bit,
at an unlimited budget and at budgets that force swapping; traffic matches the plan."""

import threading

import numpy
import pytest

from geeps_net.ps.client import Client
from geeps_net.ps.config import Config
from geeps_net.ps.server import LocalShards

from .fake_loop import TABLES, Reference, start, step

ITERS = 30


def config(**kw):
    return Config(deadline_s=10.0, heartbeat_s=1.0, row_size=16, **kw)


def reference(iters=ITERS):
    ref = Reference()
    for t in range(iters):
        step(ref, 0, t)
    return ref


def run(cfg, iters=ITERS):
    shards = LocalShards(cfg)
    client = Client(cfg, shards)
    try:
        api = start(client)
        for t in range(iters):
            step(api, 0, t)
        tables = {n: client.read_table_host(i) for n, i in api.tables.items()}
        local = {n: client.read_local_host(i) for n, i in api.locals.items()}
        master = {n: shards.read_table(i) for n, i in api.tables.items()}
    finally:
        client.close()
    return client, tables, local, master


def assert_matches(ref, tables, local, master):
    for name in TABLES:
        assert numpy.array_equal(tables[name], ref.values[name]), f"cache of table {name}"
        assert numpy.array_equal(master[name], ref.values[name]), f"shard copy of table {name}"
    for name in ("hist1", "hist2", "act", "diff", "frozen"):
        assert numpy.array_equal(local[name], ref.data[name]), f"local {name}"
    assert numpy.array_equal(local["mask"], ref.data["mask"])


def test_unlimited_budget_is_exact_and_zero_copy():
    client, *values = run(config())
    assert_matches(reference(), *values)
    stats = client.stats()
    assert stats["bytes_to_device"] == stats["bytes_to_host"] == 0
    assert stats["iterations"] == ITERS and stats["out_of_order"] == 0
    assert client.plan.placement.resident == set(client.plan.items)
    assert stats["ops"]["read"]["count"] == 5 * ITERS
    for tc in client.cache.tables:  # one copy of the params: the shards' master is the cache
        for rng in tc.ranges:
            master = client.shards.servers[rng.shard].master[tc.spec.id, rng.row_start]
            assert numpy.shares_memory(master, tc.data)


def budgets():
    """Budgets from the smallest the planner accepts (levels 0 and 1) to almost everything."""
    cfg = config()
    client = Client(cfg, LocalShards(cfg))
    start(client)
    plan = client.plan
    client.close()
    low0 = plan.min_budget_at(0)
    low1 = plan.min_budget
    return [(low0, 0), (low1, 1), ((low1 + plan.total_bytes) // 2, 1), (plan.total_bytes - 2000, 1)]


@pytest.mark.parametrize("budget,level", budgets())
def test_tight_budgets_swap_and_stay_exact(budget, level):
    client, *values = run(config(gpu_memory_capacity=budget, mm_warning_level=level))
    assert_matches(reference(), *values)
    stats, plan = client.stats(), client.plan
    assert stats["arena_high_water"] <= budget
    assert plan.arena_size == budget
    assert plan.to_device > 0 and plan.to_host > 0
    # the allocator may already have prefetched part of the next iteration
    assert ITERS * plan.to_device <= stats["bytes_to_device"] <= (ITERS + 1) * plan.to_device
    assert abs(stats["bytes_to_device"] - ITERS * plan.to_device) <= 0.05 * ITERS * plan.to_device
    assert stats["bytes_to_host"] == ITERS * plan.to_host


def test_smallest_budget_keeps_tables_on_host():
    budget, level = budgets()[0]
    client, *values = run(config(gpu_memory_capacity=budget, mm_warning_level=level), iters=5)
    assert_matches(reference(5), *values)
    on_host = [k for k in client.plan.items if not client.plan.resident(k)]
    assert any(k[0] == "param" for k in on_host) and any(k[0] == "local" for k in on_host)


def run_workers(cfg, iters=6):
    """Two in-process workers on shared shards, each in its own thread."""
    shards = LocalShards(cfg, num_workers=2)
    clients = [Client(cfg, shards, worker_id=w, num_workers=2) for w in range(2)]
    errors = []

    def work(w):
        try:
            api = start(clients[w], worker=w)
            for t in range(iters):
                step(api, w, t)
        except Exception as e:  # noqa: BLE001 - reported by the test thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for c in clients:
        c.close()  # the reclaimers finish: every push is delivered
    assert not errors, errors
    tables = [{n: c.read_table_host(i) for i, n in enumerate(TABLES)} for c in clients]
    return tables, {n: shards.read_table(i) for i, n in enumerate(TABLES)}


def lockstep(combine, iters=6):
    """Two workers at BSP: both compute on the same values, then the combined update applies."""
    values = Reference().values
    refs = [Reference(values=values, apply_own=False) for _ in range(2)]
    for t in range(iters):
        for w, ref in enumerate(refs):
            step(ref, w, t)
        for name in TABLES:
            combine(values[name], refs[0].logs[name], refs[1].logs[name])
            for ref in refs:
                ref.logs[name][...] = 0
    return values


def add_in_order(master, d0, d1):
    master += d0
    master += d1


def add_average(master, d0, d1):
    total = d0.copy()
    total += d1
    total /= numpy.float32(2)
    master += total


@pytest.mark.parametrize("rule,combine", [("SUM", add_in_order), ("AVERAGE", add_average)])
def test_two_workers_bsp(rule, combine):
    tables, master = run_workers(config(update_rule=rule))
    want = lockstep(combine)
    for name in TABLES:
        assert numpy.array_equal(master[name], want[name]), name
        for w in range(2):  # the last push replaced each cache (own updates included in it)
            assert numpy.array_equal(tables[w][name], want[name]), (w, name)


def test_server_rule_runs_on_the_shard():
    calls = []

    def sgd(table, rng, master, mean, clock):
        calls.append((table, clock))
        master -= numpy.float32(0.5) * mean

    cfg = config(update_rule="SERVER")
    shards = LocalShards(cfg, server_rule=sgd)
    client = Client(cfg, shards)
    api = start(client)
    for t in range(4):
        step(api, 0, t)
    got = {n: client.read_table_host(i) for n, i in api.tables.items()}
    client.close()
    ref = Reference(apply_own=False)
    for t in range(4):
        step(ref, 0, t)
        for name in TABLES:
            ref.values[name] -= numpy.float32(0.5) * ref.logs[name]
            ref.logs[name][...] = 0
    for name in TABLES:
        assert numpy.array_equal(got[name], ref.values[name]), name
    assert client.stats()["bytes_received"] > 0  # pushes were copied in: no own updates
    assert (api.tables["W1"], 3) in calls
