"""Tablet servers without a transport: directory, vector clocks, update rules, pushes."""

import numpy
import pytest

from geeps_net.errors import PsError
from geeps_net.ps.config import Config
from geeps_net.ps.server import LocalShards, TabletServer
from geeps_net.ps.tables import Directory, RowRange, shard_of


def test_directory_cuts_rows_and_hashes_table_and_start():
    directory = Directory(num_servers=3, row_size=10)
    ranges = directory.ranges(table=5, num_values=95)  # 10 rows -> ranges of 4, 4, 2 rows
    assert [(r.row_start, r.row_stop) for r in ranges] == [(0, 4), (4, 8), (8, 10)]
    assert [(r.value_start, r.value_stop) for r in ranges] == [(0, 40), (40, 80), (80, 95)]
    assert [r.shard for r in ranges] == [(shard_of(5, 0, 3) + k) % 3 for k in range(3)]
    assert directory.ranges(5, 95) == ranges  # a pure function of (table, size)
    assert Directory(3, 10).ranges(5, 95) == ranges  # same in every worker
    assert directory.ranges(7, 0) == []
    shards = {shard_of(t, 0, 4) for t in range(40)}
    assert shards == {0, 1, 2, 3}  # tables spread over every shard


def server(workers=2, rule="SUM", hook=None):
    s = TabletServer(0, workers, rule, hook)
    s.add_range(0, RowRange(0, 0, 2, 0, 4))
    s.write_initial(0, numpy.arange(4, dtype="float32"))
    return s, RowRange(0, 0, 2, 0, 4)


def test_pushes_wait_for_the_slowest_worker_and_sum_in_worker_order():
    s, rows = server()
    assert s.data_age(0) == -1
    s.apply_update(1, 0, 0, rows, numpy.full(4, 10, "float32"))
    assert s.clock(1, 0, 0) == []  # worker 0 has not finished clock 0
    s.apply_update(0, 0, 0, rows, numpy.full(4, 1, "float32"))
    pushes = s.clock(0, 0, 0)
    assert len(pushes) == 1 and pushes[0].data_age == 0 == s.data_age(0)
    assert pushes[0].values.tolist() == [11, 12, 13, 14]
    s.apply_update(0, 0, 1, rows, numpy.ones(4, "float32"))
    assert s.clock(0, 0, 1) == []  # worker 0 may run ahead; nothing applied yet
    assert s.master[0, 0].tolist() == [11, 12, 13, 14]


def test_average_and_server_rules():
    s, rows = server(rule="AVERAGE")
    s.apply_update(0, 0, 0, rows, numpy.full(4, 1, "float32"))
    s.apply_update(1, 0, 0, rows, numpy.full(4, 3, "float32"))
    s.clock(0, 0, 0)
    assert s.clock(1, 0, 0)[0].values.tolist() == [2, 3, 4, 5]
    seen = []

    def sgd(table, rng, master, mean, clock):
        seen.append((table, rng.row_start, clock, mean.tolist()))
        master -= numpy.float32(0.5) * mean

    s, rows = server(rule="SERVER", hook=sgd)
    s.apply_update(0, 0, 0, rows, numpy.full(4, 2, "float32"))
    s.apply_update(1, 0, 0, rows, numpy.full(4, 4, "float32"))
    s.clock(1, 0, 0)
    assert s.clock(0, 0, 0)[0].values.tolist() == [-1.5, -0.5, 0.5, 1.5]
    assert seen == [(0, 0, 0, [3, 3, 3, 3])]
    with pytest.raises(PsError, match="SERVER needs a server_rule"):
        TabletServer(0, 1, "SERVER")


def test_clocks_must_come_in_order():
    s, rows = server()
    with pytest.raises(PsError, match="worker 0 sent table 0 clock 1, expected 0"):
        s.apply_update(0, 0, 1, rows, numpy.zeros(4, "float32"))
    s.clock(0, 0, 0)
    with pytest.raises(PsError, match="worker 0 clocked table 0 at 0, expected 1"):
        s.clock(0, 0, 0)


def test_local_shards_split_tables_and_deliver_to_every_worker():
    config = Config(num_servers=3, row_size=4)
    shards = LocalShards(config, num_workers=2)
    got = {0: [], 1: []}
    for w in (0, 1):
        shards.subscribe(w, got[w].append)
    ranges = shards.create_table(0, 30)
    assert shards.create_table(0, 30) == ranges  # every worker creates it
    with pytest.raises(PsError, match="created with 30 values, now 31"):
        shards.create_table(0, 31)
    shards.write_initial(0, numpy.arange(30, dtype="float32"))
    assert len(got[0]) == len(got[1]) == len(ranges) and shards.data_age(0) == -1
    for w in (0, 1):
        shards.push_update(w, 0, 0, numpy.full(30, w + 1, "float32"))
        shards.clock(w, 0, 0)
    assert numpy.array_equal(shards.read_table(0), numpy.arange(30) + 3)
    last = got[1][-len(ranges) :]
    assert {p.data_age for p in last} == {0}
    assert sorted(p.range.row_start for p in last) == [r.row_start for r in ranges]
    for push in last:
        assert numpy.array_equal(push.values, numpy.arange(30)[push.range.values] + 3)


def test_a_sole_worker_shares_its_cache_as_the_master_copy():
    config = Config(num_servers=2, row_size=4)
    shards = LocalShards(config)
    pushes = []
    shards.subscribe(0, pushes.append)
    shards.create_table(0, 30)
    cache = numpy.arange(30, dtype="float32")
    assert shards.share_master(0, 0, cache)
    shards.write_initial(0, numpy.arange(30, dtype="float32"))
    delta = numpy.full(30, 0.5, "float32")
    cache += delta  # the worker applies its own update, then pushes the same delta
    shards.push_update(0, 0, 0, delta)
    shards.clock(0, 0, 0)
    expected = numpy.arange(30) + 0.5
    assert numpy.array_equal(shards.read_table(0), expected)  # added once, not twice
    assert shards.data_age(0) == 0
    assert all(numpy.shares_memory(p.values, cache) for p in pushes)


def test_only_a_sole_summing_worker_may_share_the_master_copy():
    two = LocalShards(Config(row_size=4), num_workers=2)
    two.subscribe(0, lambda push: None)
    two.create_table(0, 8)
    assert not two.share_master(0, 0, numpy.zeros(8, "float32"))
    server = TabletServer(0, 1, "SERVER", server_rule=lambda *a: None)
    server.add_range(0, RowRange(0, 0, 2, 0, 8))
    with pytest.raises(PsError, match="cannot share"):
        server.share(0, numpy.zeros(8, "float32"))
