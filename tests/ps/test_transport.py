"""ZeroMQ endpoints: tcp/inproc round trips, deadlines, heartbeats, verdicts, strangers, CURVE."""

import logging
import re
import threading
import time

import numpy
import pytest
import zmq

from geeps_net.errors import DeadlineError, PeerLost, PsError, WireError
from geeps_net.ps.curve import CurveKeys, generate_keys
from geeps_net.ps.endpoints import ClientEndpoint, ServerEndpoint
from geeps_net.ps.transport import Options, inproc_urls, shard_inproc_urls, tcp_urls
from geeps_net.ps.wire import HEADER, Header, MsgType, TableShape, encode

ROW = 256
TABLES = {7: TableShape(ROW * 1024 + 100, ROW)}  # 1 MiB and a short last row
FAST = Options(heartbeat_s=0.05)
URL = re.compile(r"tcp://127\.0\.0\.1:\d+")


@pytest.fixture
def ctx():
    context = zmq.Context()
    threads = set(threading.enumerate())
    yield context
    context.destroy(linger=0)
    time.sleep(0.05)  # let zmq's own bookkeeping settle before counting threads
    left = {t for t in threading.enumerate() if type(t).__name__ != "GarbageCollectorThread"}
    assert left <= threads, (
        "an endpoint left a thread running"
    )  # (pyzmq's zero-copy gc is not ours)


def pair(ctx, workers=(0, 1), worker=1, options=FAST, channels=2):
    server = ServerEndpoint(ctx, 0, tcp_urls("127.0.0.1", 0, channels), workers, TABLES, options)
    client = ClientEndpoint(ctx, worker, [server.urls], TABLES, options)
    return server, client


def rows(seed, begin, end):
    """Values of rows [begin, end) of table 7 (the last row is short)."""
    count = min(end * ROW, TABLES[7].num_values) - begin * ROW
    return numpy.random.default_rng(seed).standard_normal(count).astype("float32")


def test_update_and_push_round_trip_over_tcp(ctx):
    server, client = pair(ctx)
    assert len(server.urls) == 2 and all(URL.fullmatch(u) for u in server.urls)
    assert server.urls[0] != server.urls[1]
    delta = rows(0, 0, 1025)  # every row: 1 MiB + 400 bytes, above zmq's copy threshold
    tracker = client.send(
        0,
        client.header(MsgType.UPDATE, table=7, clock=3, row_end=1025),
        delta,
        channel=1,
        track=True,
    )
    msg = server.recv(5.0, "an UPDATE")
    assert (msg.peer, msg.channel) == (1, 1)
    assert msg.header == Header(MsgType.UPDATE, 1, 7, 3, 0, 1025)
    assert msg.payload.tobytes() == delta.tobytes()
    assert not msg.payload.flags.owndata and not msg.payload.flags.writeable  # a view of the frame
    tracker.wait(5.0)  # the sender may reuse its buffer now

    values = rows(1, 1000, 1025)
    server.send(
        1,
        server.header(MsgType.PUSH, table=7, clock=2, row_begin=1000, row_end=1025),
        values,
        channel=1,
    )
    msg = client.recv(5.0, "a PUSH")
    assert (msg.peer, msg.channel, msg.header.type, msg.header.clock) == (0, 1, MsgType.PUSH, 2)
    assert numpy.array_equal(msg.payload, values)
    client.close()
    server.close()


def test_inproc_is_zero_copy_end_to_end(ctx):
    server = ServerEndpoint(ctx, 0, inproc_urls("s0", 1), {2}, TABLES, FAST)
    client = ClientEndpoint(ctx, 2, [server.urls], TABLES, FAST)
    delta = rows(2, 0, 1025)
    client.send(0, client.header(MsgType.UPDATE, table=7, clock=0, row_end=1025), delta)
    time.sleep(0.05)
    msg = server.poll(0.0)  # a zero timeout still takes what is waiting
    assert numpy.shares_memory(msg.payload, delta)  # the receiver sees the sender's buffer
    assert server.urls == ["inproc://geeps-s0-0"]
    client.close()
    server.close()


def test_a_server_serves_tcp_and_its_local_client_over_inproc_at_once(ctx):
    local_urls = shard_inproc_urls(0, 2)
    urls = tcp_urls("127.0.0.1", 0, 2)
    server = ServerEndpoint(ctx, 0, urls, {0, 1}, TABLES, FAST, local_urls=local_urls)
    local = ClientEndpoint(ctx, 0, [local_urls], TABLES, FAST)  # same Context
    other = zmq.Context()  # another process's, as far as zmq can tell
    remote = ClientEndpoint(other, 1, [server.urls], TABLES, FAST)
    for client in (local, remote):
        delta = rows(client.id, 0, 1025)
        client.send(0, client.header(MsgType.UPDATE, table=7, clock=0, row_end=1025), delta)
        msg = server.recv(5.0, "an UPDATE")
        assert msg.peer == client.id and numpy.array_equal(msg.payload, delta)
        assert numpy.shares_memory(msg.payload, delta) == (client is local)  # inproc: no copy
        server.send(client.id, server.header(MsgType.HELLO), channel=1)
        assert client.recv(5.0, "a HELLO").channel == 1
    assert server.where(0) == server.urls[0] and URL.fullmatch(server.where(0))  # verdicts: tcp
    for endpoint in (local, remote, server):
        endpoint.close()
    other.term()


def test_local_urls_are_inproc_one_per_channel(ctx):
    urls = tcp_urls("127.0.0.1", 0, 2)
    with pytest.raises(PsError, match="1 inproc URLs for 2 channels"):
        ServerEndpoint(ctx, 0, urls, {0}, local_urls=shard_inproc_urls(0, 1))
    with pytest.raises(PsError, match="channel 0's local URL tcp://127.0.0.1:9 is not inproc"):
        ServerEndpoint(ctx, 0, urls[:1], {0}, local_urls=["tcp://127.0.0.1:9"])
    with pytest.raises(PsError, match="cannot bind channel 0 to inproc://geeps-shard3-0"):
        first = ServerEndpoint(ctx, 0, urls[:1], {0}, local_urls=shard_inproc_urls(3, 1))
        try:
            ServerEndpoint(ctx, 1, urls[:1], {0}, local_urls=shard_inproc_urls(3, 1))
        finally:
            first.close()


def test_recv_with_nothing_coming_raises_within_its_deadline(ctx):
    server, client = pair(ctx)
    start = time.monotonic()
    assert client.poll(0.1) is None
    with pytest.raises(DeadlineError) as info:
        client.recv(0.3, "a PUSH of table 7 clock 5")
    took = time.monotonic() - start
    assert 0.4 <= took < 0.4 + 0.25
    text = str(info.value)
    assert text.startswith("worker 1: nothing arrived in 0.3 s while awaiting a PUSH of table 7")
    assert re.search(r"quietest: server 0 \(tcp://127\.0\.0\.1:\d+\)", text)
    client.close()
    server.close()


def serve(server, seconds):
    """Poll `server` for `seconds` in a thread (so it heartbeats); returns the thread."""

    def loop():
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            server.poll(end - time.monotonic())

    thread = threading.Thread(target=loop)
    thread.start()
    return thread


def test_heartbeats_keep_peers_alive_and_carry_the_clock(ctx):
    server, client = pair(ctx, workers={1})
    client.clock = 41
    thread = serve(server, 0.5)
    assert client.poll(0.5) is None  # heartbeats only: consumed, never returned
    thread.join(timeout=5.0)
    server.check_liveness(0.2)
    client.check_liveness(0.2)
    assert server.last_clock[1] == 41 and client.last_clock[0] == -1
    client.close()
    server.close()


def test_a_silent_worker_gets_a_one_line_verdict(ctx):
    server, client = pair(ctx, workers={1})
    client.clock = 41
    client.tick()  # its first heartbeat
    assert server.poll(0.2) is None  # heartbeats are consumed
    client.close()  # the worker dies without a word
    assert server.poll(0.4) is None
    with pytest.raises(PeerLost) as info:
        server.check_liveness(0.3)
    verdict = str(info.value)
    assert re.fullmatch(
        r"worker 1 \(tcp://127\.0\.0\.1:\d+\): no heartbeat for 0\.\d s; its last clock was 41",
        verdict,
    ), verdict
    with pytest.raises(PeerLost, match=r"its last clock was 40$"):
        server.check_liveness(0.3, last_clock={1: 40})  # the caller knows better
    server.close()


def test_never_heard_from_and_departed_peers(ctx):
    server, client = pair(ctx, workers={0, 1})
    client.send(0, client.header(MsgType.SHUTDOWN), b"done")
    msg = server.recv(5.0, "a SHUTDOWN")
    assert msg.header.type == MsgType.SHUTDOWN and 1 in server.departed
    time.sleep(0.2)
    with pytest.raises(PeerLost, match=r"^worker 0 \(tcp://\S+\): never heard from for 0\.\d s"):
        server.check_liveness(0.1)  # worker 1 left cleanly: no verdict for it
    client.close()
    server.close()


def test_client_sees_a_lost_server(ctx):
    server, client = pair(ctx)
    server.close()
    assert client.poll(0.4) is None
    with pytest.raises(PeerLost, match=r"^server 0 \(tcp://127\.0\.0\.1:\d+\): never heard from"):
        client.check_liveness(0.3)
    client.close()


def test_strangers_and_liars_are_refused(ctx):
    server, client = pair(ctx, workers={0, 1})
    mallory = ctx.socket(zmq.DEALER)
    mallory.linger = 0
    mallory.identity = b"mallory"
    mallory.connect(server.urls[0])
    mallory.send_multipart(encode(Header(MsgType.HELLO, 1)))
    with pytest.raises(WireError, match=r"^message from a stranger b'mallory' on tcp://"):
        server.recv(5.0, "a HELLO")
    liar = client.header(MsgType.HELLO)
    client.sockets[0].send_multipart(encode(Header(MsgType.HELLO, 0)))  # worker 1 claiming 0
    with pytest.raises(WireError, match=r"worker 1 \(tcp://\S+\): header claims sender 0$"):
        server.recv(5.0, "a HELLO")
    old = bytearray(encode(liar)[0])
    old[4] = 1
    client.sockets[0].send(bytes(old))
    with pytest.raises(WireError, match="peer speaks wire version 1, we speak 3"):
        server.recv(5.0, "a HELLO")
    mallory.close()
    client.close()
    server.close()


def test_lenient_server_drops_bad_messages_and_goes_on(ctx, caplog):
    server, client = pair(ctx, options=Options(heartbeat_s=0.05, strict=False))
    client.sockets[0].send(b"GPS1 but garbage")
    client.send(0, client.header(MsgType.CLOCK, table=7, clock=0))
    with caplog.at_level(logging.WARNING):
        msg = server.recv(5.0, "a CLOCK")
    assert msg.header.type == MsgType.CLOCK and server.rejected == 1
    assert "dropped message 1:" in caplog.text
    client.close()
    server.close()


def test_full_queue_and_unroutable_worker(ctx):
    client = ClientEndpoint(ctx, 1, [["tcp://127.0.0.1:9"]], TABLES, Options(hwm=2))  # no one
    hello = client.header(MsgType.HELLO)
    start = time.monotonic()
    with pytest.raises(DeadlineError, match=r"send to server 0 \(tcp://127\.0\.0\.1:9\): 2 mess"):
        for _ in range(10):
            client.send(0, hello, deadline_s=0.2)
    assert time.monotonic() - start < 0.2 + 0.25
    client.close()
    server = ServerEndpoint(ctx, 0, tcp_urls("127.0.0.1", 0, 1), {0}, TABLES)
    with pytest.raises(PeerLost, match=r"^worker 0 \(tcp://\S+\): not connected"):
        server.send(0, server.header(MsgType.HEARTBEAT))
    with pytest.raises(PsError, match="no worker 5 in this job"):
        server.send(5, server.header(MsgType.HEARTBEAT))
    with pytest.raises(PsError, match="no channel 3 to worker 0"):
        server.send(0, server.header(MsgType.HEARTBEAT), channel=3)
    server.close()


def test_non_loopback_bind_needs_curve_or_permission(ctx, caplog):
    with pytest.raises(PsError, match=r"binding tcp://0\.0\.0\.0:\* without CURVE keys"):
        ServerEndpoint(ctx, 0, ["tcp://0.0.0.0:*"], {0})
    with caplog.at_level(logging.WARNING):
        server = ServerEndpoint(
            ctx, 0, ["tcp://0.0.0.0:*"], {0}, options=Options(allow_insecure=True)
        )
    assert "reachable from the network without CURVE keys" in caplog.text
    server.close()


def test_close_is_idempotent_and_final(ctx):
    server, client = pair(ctx)
    client.close()
    client.close()
    with pytest.raises(PsError, match="worker 1: poll after close"):
        client.poll(0.1)
    with client_guard_held(server):
        with pytest.raises(PsError, match="while another thread uses this endpoint"):
            server.poll(0.0)
    server.close()


class client_guard_held:  # noqa: N801 - reads as a with-statement
    """Hold an endpoint's thread guard, as a second thread inside it would."""

    def __init__(self, endpoint):
        self.lock = endpoint._guard

    def __enter__(self):
        self.lock.acquire()

    def __exit__(self, *exc):
        self.lock.release()


@pytest.mark.timeout(60)  # it once hung the suite under heavy load: fail fast instead
def test_curve_admits_authorised_clients_only(ctx, tmp_path):
    generate_keys(tmp_path / "server", "server")
    generate_keys(tmp_path / "authorized", "worker")
    generate_keys(tmp_path / "others", "mallory")
    server_keys = CurveKeys(tmp_path / "server/server.key_secret", None, tmp_path / "authorized")
    worker_keys = CurveKeys(
        tmp_path / "authorized/worker.key_secret", tmp_path / "server/server.key"
    )
    mallory_keys = CurveKeys(tmp_path / "others/mallory.key_secret", tmp_path / "server/server.key")
    options = Options(heartbeat_s=0.05, curve=server_keys)
    server = ServerEndpoint(ctx, 0, tcp_urls("0.0.0.0", 0, 1), {0, 1, 2}, TABLES, options)
    url = server.urls[0].replace("0.0.0.0", "127.0.0.1")
    good = ClientEndpoint(ctx, 0, [[url]], TABLES, Options(heartbeat_s=0.05, curve=worker_keys))
    bad = ClientEndpoint(ctx, 1, [[url]], TABLES, Options(heartbeat_s=0.05, curve=mallory_keys))
    plain = ClientEndpoint(ctx, 2, [[url]], TABLES, FAST)
    for client in (bad, plain, good):
        client.send(0, client.header(MsgType.HELLO, clock=client.id))
    msg = server.recv(5.0, "a HELLO")
    assert (msg.peer, msg.header.type) == (0, MsgType.HELLO)
    assert server.poll(0.5) is None and server.heard == {0}  # the others never arrive
    values = rows(3, 2, 4)
    good.send(0, good.header(MsgType.INIT, table=7, row_begin=2, row_end=4), values)
    msg = server.recv(5.0, "an INIT")
    assert msg.peer == 0 and numpy.array_equal(msg.payload, values)
    server.send(0, server.header(MsgType.PUSH, table=7, clock=-1, row_begin=2, row_end=4), values)
    assert numpy.array_equal(good.recv(5.0, "a PUSH").payload, values)
    for endpoint in (good, bad, plain, server):
        endpoint.close()


def test_curve_key_errors_name_the_file(ctx, tmp_path):
    public, _ = generate_keys(tmp_path, "w")
    with pytest.raises(PsError, match=r"w\.key: no secret key in it"):
        ClientEndpoint(ctx, 0, [["tcp://127.0.0.1:9"]], options=Options(curve=CurveKeys(public)))
    missing = CurveKeys(tmp_path / "nope.key_secret", public)
    with pytest.raises(PsError, match=r"nope\.key_secret: cannot read a CURVE key"):
        ClientEndpoint(ctx, 0, [["tcp://127.0.0.1:9"]], options=Options(curve=missing))


def test_header_size_is_what_the_docs_say():
    assert HEADER.size == 56
