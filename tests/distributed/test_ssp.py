"""SSP: a read at clock t includes every worker's updates through clock t - slack - 1, and no
worker runs more than slack + 1 clocks ahead of the slowest; slack 0 (BSP) blocks where slack 2
goes on. Over shared in-process shards and over TCP (ShardServer + RemoteShards)."""

import threading
import time

import numpy
import pytest

from geeps_net.ps.client import Client
from geeps_net.ps.server import LocalShards

from .helpers import InProcessCluster, config, run_threads

SIZE = 40  # values of the one table: three ranges of 16


def shards_for(transport, cfg):
    if transport == "local":
        shared = LocalShards(cfg, num_workers=2)
        return [shared, shared], None
    cluster = InProcessCluster(cfg, 2)
    return cluster.shards, cluster


class Worker:
    """A client whose iteration reads the table, adds 1 to every value and clocks (SUM)."""

    def __init__(self, cfg, shards, w):
        self.client = Client(cfg, shards, worker_id=w, num_workers=2)
        self.w, self.done, self.seen = w, 0, []

    def start(self):
        c = self.client
        self.table = c.create_table("W", SIZE)
        if self.w == 0:
            c.write_initial(self.table, numpy.zeros(SIZE, "float32"))
        with c.virtual_iteration():
            self.iterate()
        c.start_iterations()

    def iterate(self):
        c = self.client
        values = c.read(self.table)
        if values is not None:
            self.seen.append((self.done, float(values.min()), float(values.max())))
        c.post_read(self.table)
        delta = c.pre_update(self.table)
        if delta is not None:
            delta[...] = 1
        c.update(self.table)
        c.clock()

    def run(self, iters, pause=0.0, gate=None, gate_at=None):
        self.start()
        for t in range(iters):
            if t == gate_at:
                assert gate.wait(10.0), "the test never opened the gate"
            self.iterate()
            self.done = t + 1
            time.sleep(pause)


def check_freshness(worker, slack):
    """Own updates through t - 1 plus the other's through t - slack - 1, at every read."""
    for t, low, high in worker.seen:  # ranges (on two shards) may differ within the slack
        assert low >= t + max(0, t - slack), f"worker {worker.w} read {low} at clock {t}"
        assert high <= t + t + slack + 1


@pytest.mark.parametrize("transport", ["local", "tcp"])
@pytest.mark.parametrize("slack", [0, 2])
def test_a_delayed_worker_never_leaves_reads_staler_than_the_slack(transport, slack):
    cfg = config(update_rule="SUM", slack=slack, num_servers=2)
    shards, cluster = shards_for(transport, cfg)
    workers = [Worker(cfg, shards[w], w) for w in range(2)]
    lead = []

    def fast():
        workers[0].run(12)

    def slow():
        for t in range(12):
            if t == 0:
                workers[1].start()
            lead.append(workers[0].done - workers[1].done)
            workers[1].iterate()
            workers[1].done = t + 1
            time.sleep(0.01)

    run_threads([fast, slow])
    for worker in workers:
        worker.client.close()
        check_freshness(worker, slack)
    assert max(lead) == slack + 1  # the fast worker ran as far ahead as allowed, no further
    if cluster:
        cluster.close()


def wait_for(predicate, deadline_s):
    """Poll `predicate` every 5 ms until it holds or `deadline_s` passes; its last value."""
    end = time.monotonic() + deadline_s
    while not predicate() and time.monotonic() < end:
        time.sleep(0.005)
    return predicate()


@pytest.mark.parametrize("transport", ["local", "tcp"])
def test_slack_zero_blocks_where_slack_two_goes_on(transport):
    held_at = 3  # the slow worker finishes clocks 0..2, then waits at the gate
    for slack in (0, 2):
        cfg = config(update_rule="SUM", slack=slack, num_servers=2)
        shards, cluster = shards_for(transport, cfg)
        workers = [Worker(cfg, shards[w], w) for w in range(2)]
        gate = threading.Event()
        threads = [
            threading.Thread(target=workers[0].run, args=(8,)),
            threading.Thread(target=workers[1].run, args=(8, 0.0, gate, held_at)),
        ]
        for thread in threads:
            thread.start()
        reach = held_at + slack + 1  # clocks 0..held_at + slack need nothing past clock 2
        # generous: on a loaded 2-core machine the threads may be slow to get there
        assert wait_for(lambda w=workers[0], r=reach: w.done >= r, 30.0), (slack, workers[0].done)
        time.sleep(0.3)
        assert workers[0].done == reach, f"slack {slack}: ran to {workers[0].done}"
        gate.set()
        for thread in threads:
            thread.join(60.0)
        assert workers[0].done == workers[1].done == 8
        for worker in workers:
            worker.client.close()
            check_freshness(worker, slack)
        if cluster:
            cluster.close()
