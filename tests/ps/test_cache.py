"""The parameter cache alone: data age per range, own updates re-applied over late pushes."""

import numpy
import pytest

from geeps_net.errors import DeadlineError
from geeps_net.ps.cache import ParamCache
from geeps_net.ps.config import Config
from geeps_net.ps.memory import Device
from geeps_net.ps.server import Push
from geeps_net.ps.tables import Directory, TableSpec


def make(num_workers=2, slack=1, **kw):
    cache = ParamCache(Config(slack=slack, row_size=4, **kw), num_workers, Device(numpy))
    ranges = Directory(num_servers=2, row_size=4).ranges(0, 8)  # rows 0 and 1, one range each
    table = cache.add(TableSpec(0, "w", 8, 4), ranges)
    cache.bind(table, numpy.zeros(8, "float32"), numpy.zeros(8, "float32"), resident=True)
    return cache, table, ranges


def push(cache, rng, values, age):
    cache.on_push(Push(0, rng, numpy.asarray(values, "float32"), age))


def never_fails():
    pass


def test_late_pushes_get_the_own_updates_they_lack():
    cache, table, (r0, r1) = make()
    v0 = numpy.arange(8, dtype="float32")
    for rng in (r0, r1):
        push(cache, rng, v0[rng.values], -1)
    cache.wait_fresh(table, 0, 1.0, never_fails)
    assert table.data_age() == -1 and numpy.array_equal(table.data, v0)
    sent = []
    d0, d1 = numpy.full(8, 0.5, "float32"), numpy.full(8, 0.25, "float32")
    table.log[...] = d0
    cache.finish_clock(table, 0, lambda delta: sent.append(delta.copy()))
    assert numpy.array_equal(sent[0], d0) and not table.log.any()
    assert numpy.array_equal(table.data, v0 + d0) and table.own_applied == 0
    other = numpy.full(8, 10, "float32")
    push(cache, r0, (v0 + d0 + other)[r0.values], 0)  # includes both workers' clock 0
    assert cache.fresh(table, 1)  # slack 1: age -1 is enough at clock 1, push stays pending
    table.log[...] = d1
    cache.finish_clock(table, 1, sent.append)  # applies own clock 1, then the pending push
    want = v0 + d0 + d1
    want[r0.values] += other[r0.values]  # range 0 now shows the other worker's clock 0
    assert numpy.array_equal(table.data, want) and table.ages == [0, -1]
    assert sorted(table.retained) == [0, 1]  # range 1 still lacks clock 0 from the shards
    push(cache, r1, (v0 + d0 + d1 + 2 * other)[r1.values], 1)
    cache.wait_fresh(table, 2, 1.0, never_fails)  # needs age >= 0: installs the push
    want[r1.values] = (v0 + d0 + d1 + 2 * other)[r1.values]
    assert numpy.array_equal(table.data, want) and table.ages == [0, 1]
    assert sorted(table.retained) == [1]  # clock 0 is in every range now
    push(cache, r1, numpy.zeros(4), 0)  # older than what the range has: ignored
    cache.wait_fresh(table, 2, 1.0, never_fails)
    assert numpy.array_equal(table.data, want)


def test_one_worker_pushes_only_advance_the_age():
    cache, table, (r0, r1) = make(num_workers=1, slack=0)
    table.data[...] = 3
    push(cache, r0, numpy.full(4, 99), -1)
    assert cache.exact and table.ages == [-1, -2] and (table.data == 3).all()
    assert table.pending == [] and cache.bytes_received == 0


def test_average_applies_a_share_of_own_updates():
    cache, table, _ = make(update_rule="AVERAGE")
    table.log[...] = 1
    sent = []
    cache.finish_clock(table, 0, sent.append)
    assert (table.data == 0.5).all() and (sent[0] == 0).all()  # the log is cleared after sending
    assert cache.scale == numpy.float32(0.5)


def test_late_read_names_table_age_and_slowest_shard():
    cache, table, (r0, r1) = make(slack=0)
    with pytest.raises(DeadlineError, match='read table 0 \\("w"\\) at clock 0: no initial values'):
        cache.wait_fresh(table, 0, 0.05, never_fails)
    push(cache, r0, numpy.zeros(4), 3)
    push(cache, r1, numpy.zeros(4), 1)
    table.own_applied = 9
    with pytest.raises(DeadlineError) as info:
        cache.wait_fresh(table, 4, 0.05, never_fails)
    assert str(info.value) == (
        f'read table 0 ("w") at clock 4: data age 1 < 3 after 0.05 s; slowest shard: {r1.shard} '
        "(rows 1-1, data age 1)"
    )


def test_pushes_for_tables_not_created_yet_wait_for_them():
    cache = ParamCache(Config(row_size=4), 2, Device(numpy))
    rng = Directory(1, 4).ranges(0, 4)[0]
    cache.on_push(Push(0, rng, numpy.ones(4, "float32"), -1))
    table = cache.add(TableSpec(0, "w", 4, 4), [rng])
    assert len(table.pending) == 1 and cache.early == []
    cache.bind(table, numpy.zeros(4, "float32"), numpy.zeros(4, "float32"), resident=True)
    assert (table.data == 1).all() and table.ages == [-1]
