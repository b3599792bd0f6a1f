"""Calls out of the recorded order, late or missing pushes, slack, failing threads, misuse."""

import logging
import threading
import time

import numpy
import pytest

from geeps_net.errors import DeadlineError, PsError
from geeps_net.ps.client import Client
from geeps_net.ps.config import Config
from geeps_net.ps.server import LocalShards

from .fake_loop import Reference, start, step

SMALL_TABLES = {"A": 100, "B": 50}
SMALL_LOCALS = {"h": (100, "history", "float32"), "s": (60, "activation", "float32")}
VARIANTS = {2: "swap_reads", 3: "swap_releases", 4: "skip", 5: "extra", 6: "keep_flip"}


def body(api, worker, t):
    """A small iteration whose call order changes at some iterations (VARIANTS)."""
    variant = VARIANTS.get(t, "normal")
    A, B = api.tables["A"], api.tables["B"]
    h, s = api.locals["h"], api.locals["s"]
    if variant == "swap_reads":
        b, a = api.read(B), api.read(A)
    else:
        a, b = api.read(A), api.read(B)
    if variant != "skip":
        x = api.local_access(s, fetch=False)
        x[:50] = a[:50] * b
        x[50:] = numpy.float32(t)
        api.post_local_access(s, keep=variant != "keep_flip")
    first, second = (A, B) if variant == "swap_releases" else (B, A)
    api.post_read(first)
    api.post_read(second)
    g = api.pre_update(A)
    y = api.local_access(h, fetch=True)
    y[...] = y * numpy.float32(0.5) + numpy.float32(0.01 * (t + 1))
    g[...] = -y
    api.post_local_access(h, keep=True)
    if variant == "extra":  # a call the virtual iteration never made
        z = api.local_access(h, fetch=True)
        z += numpy.float32(1)
        api.post_local_access(h, keep=True)
    api.update(A)
    g = api.pre_update(B)
    g[...] = numpy.float32(0.001 * t)
    api.update(B)
    api.clock()


def config(**kw):
    kw.setdefault("deadline_s", 10.0)
    kw.setdefault("heartbeat_s", min(1.0, kw["deadline_s"] / 2))
    return Config(row_size=16, **kw)


def small(client, worker=0):
    return start(client, worker, body=body, tables=SMALL_TABLES, local=SMALL_LOCALS)


def smallest_budget():
    client = Client(config(), LocalShards(config()))
    small(client)
    client.close()
    return client.plan.min_budget


@pytest.mark.parametrize("tight", [False, True], ids=["unlimited", "tight"])
def test_out_of_order_calls_warn_once_and_stay_exact(tight, caplog):
    cfg = config(gpu_memory_capacity=smallest_budget() if tight else 0)
    client = Client(cfg, LocalShards(cfg))
    api = small(client)
    with caplog.at_level(logging.WARNING, logger="geeps_net.ps"):
        for t in range(9):
            body(api, 0, t)
    got = {n: client.read_table_host(i) for n, i in api.tables.items()}
    local = {n: client.read_local_host(i) for n, i in api.locals.items()}
    stats = client.stats()
    client.close()
    ref = Reference(tables=SMALL_TABLES, local=SMALL_LOCALS)
    for t in range(9):
        body(ref, 0, t)
    for name in SMALL_TABLES:
        assert numpy.array_equal(got[name], ref.values[name]), name
    for name in SMALL_LOCALS:
        assert numpy.array_equal(local[name], ref.data[name]), name
    warnings = [r for r in caplog.records if "does not follow" in r.getMessage()]
    assert len(warnings) == 1 and stats["out_of_order"] > 5
    assert stats["iterations"] == 9


def test_close_joins_threads_and_is_idempotent():
    cfg = config()
    client = Client(cfg, LocalShards(cfg))
    api = start(client)
    step(api, 0, 0)
    names = {t.name for t in threading.enumerate()}
    assert {"ps-allocator", "ps-reclaimer"} <= names
    client.close()
    client.close()
    assert not {"ps-allocator", "ps-reclaimer"} & {t.name for t in threading.enumerate()}
    with pytest.raises(PsError, match="closed"):
        client.read(0)


class DroppingShards(LocalShards):
    """Shards whose pushes after the initial values are lost."""

    def _deliver(self, pushes):
        super()._deliver([p for p in pushes if p.data_age < 0])


@pytest.mark.parametrize("tight", [False, True], ids=["resident", "pooled"])
def test_missing_push_hits_the_deadline(tight):
    budget = 0
    if tight:
        probe = Client(config(), LocalShards(config()))
        start(probe)
        probe.close()
        budget = probe.plan.min_budget
    cfg = config(deadline_s=0.4, gpu_memory_capacity=budget)
    client = Client(cfg, DroppingShards(cfg))
    api = start(client)
    step(api, 0, 0)
    began = time.perf_counter()
    with pytest.raises(DeadlineError) as info:
        step(api, 0, 1)
    assert time.perf_counter() - began < 3.0
    message = str(info.value)
    assert "\n" not in message
    assert 'read table 0 ("W1") at clock 1: data age -1 < 0 after 0.4 s' in message
    assert "slowest shard: 0" in message
    client.close()  # already reported: no second raise, threads joined


class HoldingShards(LocalShards):
    """Shards that hold pushes (data_age >= 0) until release()."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.holding, self.held = True, []

    def _deliver(self, pushes):
        if self.holding:
            self.held += [p for p in pushes if p.data_age >= 0]
            pushes = [p for p in pushes if p.data_age < 0]
        super()._deliver(pushes)

    def release(self):
        with self._lock:
            self.holding = False
            held, self.held = self.held, []
            super()._deliver(held)


def release_later(shards, delay):
    timer = threading.Timer(delay, shards.release)
    timer.start()
    return timer


@pytest.mark.parametrize("slack", [0, 1])
def test_slack_bounds_how_stale_a_read_may_be(slack):
    cfg = config(slack=slack)
    shards = HoldingShards(cfg)
    client = Client(cfg, shards)
    api = start(client)
    for t in range(slack + 1):  # these need data age >= t - slack - 1 = -1 at most
        step(api, 0, t)
    assert client.data_age(api.tables["W1"]) == -1
    timer = release_later(shards, 0.3)
    began = time.perf_counter()
    step(api, 0, slack + 1)  # needs data age >= 0: blocks until the pushes arrive
    assert time.perf_counter() - began >= 0.25
    timer.join()
    for t in range(slack + 2, 5):
        step(api, 0, t)
    got = client.read_table_host(api.tables["W1"])
    client.close()
    assert client.data_age(api.tables["W1"]) == 4
    ref = Reference()
    for t in range(5):
        step(ref, 0, t)
    assert numpy.array_equal(got, ref.values["W1"])  # read_my_writes: own updates never lost


class FailingShards(LocalShards):
    def push_update(self, worker, table, clock, delta):
        if clock == 2:
            raise RuntimeError("disk on fire")
        super().push_update(worker, table, clock, delta)


def test_thread_failure_is_raised_in_the_application():
    cfg = config(deadline_s=5.0)
    client = Client(cfg, FailingShards(cfg))
    api = start(client)
    with pytest.raises(PsError, match="disk on fire"):
        for t in range(10):
            step(api, 0, t)
    client.close()  # reported already: returns quietly
    assert not {"ps-allocator", "ps-reclaimer"} & {t.name for t in threading.enumerate()}


def test_misuse_is_a_clear_error(caplog):
    cfg = config()
    client = Client(cfg, LocalShards(cfg))
    w = client.create_table("w", 10)
    with pytest.raises(PsError, match="inside virtual_iteration"):
        client.read(w)
    with pytest.raises(PsError, match='write_initial "w": 3 values, expected 10'):
        client.write_initial(w, numpy.zeros(3))
    with pytest.raises(PsError, match="kind 'weights'"):
        client.create_local("x", 4, "weights")
    with pytest.raises(PsError, match="must end with clock"), client.virtual_iteration():
        client.read(w)
        client.post_read(w)
    client = Client(cfg, LocalShards(cfg))
    w = client.create_table("w", 10)
    with pytest.raises(PsError, match="no read of it is outstanding"), client.virtual_iteration():
        client.post_read(w)
        client.clock()
    client = Client(cfg, LocalShards(cfg))
    w = client.create_table("w", 10)
    with caplog.at_level(logging.INFO, logger="geeps_net.ps"), client.virtual_iteration():
        client.read(w)
        client.post_read(w)
        client.clock()
    assert any("PS plan:" in r.getMessage() for r in caplog.records)
    with pytest.raises(PsError, match="start_iterations"):
        client.read(w)
    with pytest.raises(PsError, match=r"never called write_initial for tables \['w'\]"):
        client.start_iterations()
    client.write_initial(w, numpy.ones(10))
    client.start_iterations()
    assert numpy.array_equal(client.read(w), numpy.ones(10, "float32"))
    client.post_read(w)
    client.clock()
    with pytest.raises(PsError, match="only allowed before start_iterations"):
        client.write_initial(w, numpy.ones(10))
    client.close()


def test_threads_stop_when_the_application_thread_ends_unclosed(caplog):
    """A script that never calls close() must not keep the interpreter waiting at exit for the
    PS's non-daemon threads: they stop once the thread that started the iterations is gone."""
    cfg = Config(deadline_s=10.0, heartbeat_s=1.0, row_size=16)
    client = Client(cfg, LocalShards(cfg))

    def application():
        api = start(client)
        for t in range(3):
            step(api, 0, t)

    with caplog.at_level(logging.WARNING, logger="geeps_net.ps"):
        thread = threading.Thread(target=application)
        thread.start()
        thread.join(30)
        for background in client._bg.threads:
            background.join(5)
    assert not any(t.is_alive() for t in client._bg.threads)
    assert "never closed" in caplog.text
    client.close()
