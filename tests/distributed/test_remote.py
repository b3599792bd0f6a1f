"""RemoteShards and ShardServer in one process over TCP loopback: the fake loop of tests/ps gives
the same numbers as plain NumPy at BSP (SUM, AVERAGE, SERVER), bit for bit; misconfigured or
inconsistent workers get one-line errors; CURVE; the endpoint's wake()."""

import re
import subprocess
import sys
import threading
import time

import numpy
import pytest
import zmq

from geeps_net.errors import DeadlineError, PsError
from geeps_net.ps.client import Client
from geeps_net.ps.curve import CurveKeys, generate_keys
from geeps_net.ps.endpoints import ClientEndpoint, ServerEndpoint
from geeps_net.ps.remote import RemoteShards, ShardServer
from geeps_net.ps.transport import Options, shard_inproc_urls, tcp_urls
from geeps_net.ps.wire import Header, MsgType, encode

from ..ps.fake_loop import TABLES, start, step
from ..ps.test_client import add_average, add_in_order, lockstep
from .helpers import InProcessCluster, config, run_threads

ITERS = 6


def remote_workers(cfg, iters=ITERS, server_rule=None, colocated=False):
    """Two workers (threads) over two shards with two channels; settled caches and masters."""
    cluster = InProcessCluster(cfg, 2, server_rule, colocated)
    clients = [Client(cfg, cluster.shards[w], worker_id=w, num_workers=2) for w in range(2)]

    def work(w):
        api = start(clients[w], worker=w)
        for t in range(iters):
            step(api, w, t)
        return api

    apis = run_threads([lambda w=w: work(w) for w in range(2)])
    for client in clients:
        client.close()
    for client, api in zip(clients, apis):
        wait_age(client, api, iters - 1)
    tables = [
        {n: c.read_table_host(i) for n, i in api.tables.items()} for c, api in zip(clients, apis)
    ]
    master = {n: cluster.shards[0].read_table(i) for n, i in apis[0].tables.items()}
    cluster.close()
    return tables, master


def wait_age(client, api, age, deadline_s=10.0):
    """Until every pushed table includes clock `age` (pushes arrive after the last clock)."""
    end = time.monotonic() + deadline_s
    for i in api.tables.values():
        while client.read_table_host(i) is not None and client.data_age(i) < age:
            assert time.monotonic() < end, f"table {i} stuck at data age {client.data_age(i)}"
            time.sleep(0.002)


@pytest.mark.parametrize("colocated", [False, True], ids=["tcp", "inproc"])
@pytest.mark.parametrize("rule,combine", [("SUM", add_in_order), ("AVERAGE", add_average)])
def test_two_workers_over_tcp_equal_numpy(rule, combine, colocated):
    cfg = config(update_rule=rule, num_servers=2, num_channels=2)
    tables, master = remote_workers(cfg, colocated=colocated)  # inproc: each to its own shard
    want = lockstep(combine)
    for name in TABLES:
        assert numpy.array_equal(master[name], want[name]), name
        for w in range(2):
            assert numpy.array_equal(tables[w][name], want[name]), (w, name)


def test_server_rule_runs_on_the_shards():
    calls = []

    def sgd(table, rng, master, mean, clock):
        calls.append((table, rng.row_start, clock))
        master -= numpy.float32(0.5) * mean

    cfg = config(update_rule="SERVER", num_servers=2)
    tables, master = remote_workers(cfg, server_rule=sgd)

    def combine(values, d0, d1):
        mean = d0.copy()
        mean += d1
        mean /= numpy.float32(2)
        values -= numpy.float32(0.5) * mean

    want = lockstep(combine)
    for name in TABLES:
        assert numpy.array_equal(master[name], want[name]), name
        assert numpy.array_equal(tables[1][name], want[name]), name
    assert {c for _, _, c in calls} == set(range(ITERS))


def test_a_worker_with_another_config_is_refused():
    cfg = config(num_servers=1)
    server = ShardServer(cfg, 0, 2, tcp_urls("127.0.0.1", 0, 1)).start()
    good = RemoteShards(cfg, 0, 2, [server.urls])
    with pytest.raises(PsError, match=r"worker 1 \(tcp://\S+\) has slack = 3, server 0 has 0"):
        RemoteShards(cfg.overrides(slack=3), 1, 2, [server.urls])
    with pytest.raises(PsError, match="slack = 3"):
        server.join()  # the server failed; it told the good worker too
    end = time.monotonic() + 5.0
    while good.error is None and time.monotonic() < end:  # that ERROR may still be on its way
        time.sleep(0.01)
    assert good.error is not None and "slack = 3" in str(good.error)
    with pytest.raises(PsError, match="slack = 3"):
        good.create_table(0, 10)
    good.close()


def test_workers_building_different_nets_are_stopped():
    cfg = config(num_servers=1)
    server = ShardServer(cfg, 0, 2, tcp_urls("127.0.0.1", 0, 1)).start()
    shards = run_threads([lambda w=w: RemoteShards(cfg, w, 2, [server.urls]) for w in range(2)])
    shards[0].create_table(0, 100)
    shards[1].create_table(0, 120)
    pattern = r"worker \d creates table 0 with (100|120) values, another worker with (100|120)"
    with pytest.raises(PsError, match=pattern):
        server.join()
    for s in shards:
        s.close()


def test_read_table_data_age_and_clean_shutdown():
    cfg = config(num_servers=2, update_rule="SUM")
    threads = set(threading.enumerate())
    cluster = InProcessCluster(cfg, 1)
    shards = cluster.shards[0]
    pushes = []
    shards.subscribe(0, pushes.append)
    ranges = shards.create_table(0, 50)
    assert shards.data_age(0) == -2
    shards.write_initial(0, numpy.arange(50, dtype="float32"))
    shards.push_update(0, 0, 0, numpy.ones(50, "float32"))
    shards.clock(0, 0, 0)
    assert numpy.array_equal(shards.read_table(0), numpy.arange(50) + 1)
    end = time.monotonic() + 5.0
    while shards.data_age(0) < 0 and time.monotonic() < end:
        time.sleep(0.002)
    assert shards.data_age(0) == 0 and len(pushes) == 2 * len(ranges)  # initial + clock 0
    cluster.close()
    cluster.close()  # idempotent
    time.sleep(0.05)
    assert {t for t in threading.enumerate() if "ps-" in t.name} <= threads


def test_the_server_drops_strangers_and_goes_on():
    cfg = config(num_servers=1)
    server = ShardServer(cfg, 0, 1, tcp_urls("127.0.0.1", 0, 1)).start()
    ctx = zmq.Context()
    mallory = ctx.socket(zmq.DEALER)
    mallory.linger = 0
    mallory.identity = b"worker-7"  # not a member of this one-worker job
    mallory.connect(server.urls[0])
    mallory.send_multipart(encode(Header(MsgType.SHUTDOWN, 7)))
    deadline = time.monotonic() + 30  # the stranger's connection may settle after ours
    while server.ep.rejected < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    shards = RemoteShards(cfg, 0, 1, [server.urls])
    shards.create_table(0, 10)
    assert shards.read_table(0).shape == (10,)
    shards.close()
    server.join()
    assert server.ep.rejected == 1
    mallory.close()
    ctx.term()


def test_curve_cluster(tmp_path):
    generate_keys(tmp_path / "server", "server")
    generate_keys(tmp_path / "workers", "w0")
    cfg = config(num_servers=1)
    server_keys = CurveKeys(tmp_path / "server/server.key_secret", None, tmp_path / "workers")
    worker_keys = CurveKeys(tmp_path / "workers/w0.key_secret", tmp_path / "server/server.key")
    urls = tcp_urls("127.0.0.1", 0, 1)
    server = ShardServer(cfg, 0, 1, urls, options=Options(heartbeat_s=0.5, curve=server_keys))
    server.start()
    shards = RemoteShards(cfg, 0, 1, [server.urls], options=Options(curve=worker_keys))
    shards.create_table(0, 10)
    shards.write_initial(0, numpy.full(10, 3, "float32"))
    assert numpy.array_equal(shards.read_table(0), numpy.full(10, 3))
    shards.close()
    server.join()


def test_curve_shards_sharing_a_context_share_its_authenticator(tmp_path):
    generate_keys(tmp_path / "server", "server")
    generate_keys(tmp_path / "workers", "w")
    server_keys = CurveKeys(tmp_path / "server/server.key_secret", None, tmp_path / "workers")
    worker_keys = CurveKeys(tmp_path / "workers/w.key_secret", tmp_path / "server/server.key")
    cfg = config(num_servers=2)
    ctx = zmq.Context()  # worker 0's: it hosts both shards, as with -num_servers 2 -workers 1
    servers = [
        ShardServer(
            cfg,
            s,
            2,
            tcp_urls("127.0.0.1", 0, 1),
            options=Options(heartbeat_s=0.5, curve=server_keys),
            ctx=ctx,
            inproc=True,
        ).start()
        for s in range(2)
    ]
    local = [shard_inproc_urls(s, 1) for s in range(2)]
    remote = [server.urls for server in servers]
    shards = run_threads(
        [
            lambda: RemoteShards(cfg, 0, 2, local, ctx=ctx),
            lambda: RemoteShards(cfg, 1, 2, remote, options=Options(curve=worker_keys)),
        ]
    )
    for worker in shards:
        worker.create_table(0, 40)
    shards[0].write_initial(0, numpy.full(40, 3, "float32"))
    for worker in shards:
        assert numpy.array_equal(worker.read_table(0), numpy.full(40, 3))
    for worker in shards:
        worker.close()
    for server in servers:
        server.join()  # the first one out leaves the authenticator to the other
    ctx.term()


def test_inproc_needs_the_clients_context():
    with pytest.raises(PsError, match="server 0: inproc URLs need the zmq.Context of the client"):
        ShardServer(config(), 0, 1, tcp_urls("127.0.0.1", 0, 1), inproc=True)


def test_wake_ends_a_poll_from_another_thread():
    ctx = zmq.Context()
    server = ServerEndpoint(ctx, 0, tcp_urls("127.0.0.1", 0, 1), {0})
    client = ClientEndpoint(ctx, 0, [server.urls])
    client.wake()  # before the poll: that poll returns at once
    start = time.monotonic()
    assert client.poll(5.0) is None and time.monotonic() - start < 0.5
    threading.Timer(0.1, client.wake).start()
    start = time.monotonic()
    assert client.poll(5.0) is None
    assert 0.05 < time.monotonic() - start < 1.0
    threading.Timer(0.1, client.wake).start()
    start = time.monotonic()
    with pytest.raises(DeadlineError):
        client.recv(0.4, "nothing")  # recv waits out its deadline, wake or not
    assert time.monotonic() - start >= 0.4
    client.close()
    client.wake()  # after close: nothing happens
    server.close()
    ctx.term()


def test_silence_limit_and_verdict_name_the_peer():
    cfg = config(num_servers=1, deadline_s=1.0, heartbeat_s=0.1)
    server = ShardServer(cfg, 0, 2, tcp_urls("127.0.0.1", 0, 1), addresses={1: "tcp://h:1"})
    failures = []
    server.on_failure(failures.append)
    server.start()
    shards = run_threads([lambda w=w: RemoteShards(cfg, w, 2, [server.urls]) for w in range(2)])
    shards[1].abort("worker 1 stops for the test")  # says ERROR: the server passes it on
    with pytest.raises(PsError, match="worker 1 stops for the test"):
        server.join()
    assert failures and re.search(r"reported by worker 1 \(tcp://h:1\)", str(failures[0]))
    end = time.monotonic() + 5.0
    while shards[0].error is None and time.monotonic() < end:
        time.sleep(0.01)
    assert "worker 1 stops for the test" in str(shards[0].error)
    for s in shards:
        s.close()


def test_a_clock_travels_as_one_updates_per_server_and_channel():
    """The deltas and CLOCKs of a clock are held until every table finished it, then go as one
    UPDATES per channel (the CLOCK of ALL_TABLES on channel 0); the values arrive intact."""
    cfg = config(num_servers=1, num_channels=2, update_rule="SUM")
    server = ShardServer(cfg, 0, 1, tcp_urls("127.0.0.1", 0, 2))
    seen, apply = [], server.handlers[MsgType.UPDATES]
    server.handlers[MsgType.UPDATES] = lambda msg: (seen.append(msg), apply(msg))
    server.start()
    shards = RemoteShards(cfg, 0, 1, [server.urls])
    try:
        sizes = {0: 40, 1: 20, 2: 20}
        for table, size in sizes.items():
            shards.create_table(table, size)
            shards.write_initial(table, numpy.arange(size, dtype="float32"))
        for table in (0, 1):
            shards.push_update(0, table, 0, numpy.ones(sizes[table], "float32"))
            shards.clock(0, table, 0)
        time.sleep(0.1)
        assert not seen  # table 2 has not finished clock 0
        shards.clock(0, 2, 0)
        end = time.monotonic() + 5.0
        while len(seen) < 2 and time.monotonic() < end:
            time.sleep(0.002)
        assert sorted(msg.channel for msg in seen) == [0, 1] and len(seen) == 2
        for msg in seen:
            assert msg.header.clock == 0
            tables = {part.table for part in msg.payload}
            assert tables == ({0, 2, 0xFFFFFFFF} if msg.channel == 0 else {1})
        for table, size in sizes.items():
            want = numpy.arange(size) + (table != 2)
            assert numpy.array_equal(shards.read_table(table), want)
    finally:
        shards.close()
        server.join()


UNCLOSED = """
from geeps_net.ps.config import Config
from geeps_net.ps.remote import RemoteShards, ShardServer
from geeps_net.ps.transport import tcp_urls

cfg = Config(deadline_s=60.0, heartbeat_s=0.5, row_size=16, num_servers=1)
server = ShardServer(cfg, 0, 1, tcp_urls("127.0.0.1", 0, 1)).start()
shards = RemoteShards(cfg, 0, 1, [server.urls])
shards.create_table(0, 10)
print("ready", flush=True)
"""  # and the program ends with neither closed


def test_a_program_that_never_closes_still_exits(tmp_path):
    """The communication and server threads are not daemons; when the main thread has ended
    without close() they abort (ERROR to their peers) instead of keeping the interpreter alive
    while each keeps the other busy with heartbeats."""
    script = tmp_path / "unclosed.py"
    script.write_text(UNCLOSED)
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=50
    )  # without the abort: TimeoutExpired (the peers' 60 s deadline never comes)
    assert done.stdout.strip() == "ready", done.stderr
    assert "the program ended without closing it" in done.stderr
    assert time.monotonic() - start < 30
