"""A live shard server fed 10,000 random and mutated messages keeps serving correct data.

Frames come from a connected stranger (an identity outside the job) and are either random bytes or
valid messages with bytes flipped, cut or extended, a wrong version, or extra frames. The server
must drop every one of them, stay up, and afterwards still apply a real worker's update exactly.
"""

import time

import numpy
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geeps_net.ps.remote import RemoteShards, ShardServer
from geeps_net.ps.transport import tcp_urls
from geeps_net.ps.wire import Header, MsgType, encode

from .helpers import config

FRAMES = 10_000
TABLE, SIZE = 0, 40


def valid_frames(rng: numpy.random.Generator) -> list[bytes]:
    """A well-formed UPDATE from worker 0 for the test table, as raw frame bytes."""
    header = Header(MsgType.UPDATE, 0, table=TABLE, clock=0, row_begin=0, row_end=1)
    payload = rng.standard_normal(16).astype("float32")
    return [bytes(f) for f in encode(header, payload)]


@st.composite
def bad_message(draw):
    """Random bytes, or a valid message mutated one way or another."""
    rng = numpy.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["random", "flip", "cut", "extend", "extra", "version"]))
    frames = valid_frames(rng)
    if kind == "random":
        return [draw(st.binary(max_size=120)) for _ in range(draw(st.integers(1, 3)))]
    i = draw(st.integers(0, len(frames) - 1))
    frame = bytearray(frames[i])
    if kind == "flip" and frame:
        at = draw(st.integers(0, len(frame) - 1))
        frame[at] ^= 1 << draw(st.integers(0, 7))
    elif kind == "cut":
        frame = frame[: draw(st.integers(0, max(len(frame) - 1, 0)))]
    elif kind == "extend":
        frame += draw(st.binary(min_size=1, max_size=16))
    elif kind == "version":
        frame[4:6] = (7).to_bytes(2, "little")
    frames[i] = bytes(frame)
    if kind == "extra":
        frames.append(draw(st.binary(max_size=32)))
    return frames


def test_server_survives_garbage_and_still_serves():
    cfg = config(num_servers=1, row_size=16, deadline_s=60.0, heartbeat_s=1.0)
    server = ShardServer(cfg, 0, 1, tcp_urls("127.0.0.1", 0, 1)).start()
    shards = RemoteShards(cfg, 0, 1, [server.urls])
    try:
        shards.create_table(TABLE, SIZE)
        initial = numpy.arange(SIZE, dtype="float32")
        shards.write_initial(TABLE, initial)
        ctx = zmq.Context()
        stranger = ctx.socket(zmq.DEALER)
        stranger.linger = 0
        stranger.sndhwm = 0  # queue everything: the test counts what arrives
        stranger.identity = b"worker-7"
        stranger.connect(server.urls[0])
        sent = 0

        @settings(max_examples=FRAMES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(bad_message())
        def send(frames):
            nonlocal sent
            stranger.send_multipart(frames)
            sent += 1

        send()
        assert sent >= FRAMES
        deadline = time.monotonic() + 60
        while server.ep.rejected < sent and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.ep.rejected == sent, f"{server.ep.rejected} of {sent} frames dropped"
        stranger.close()
        ctx.term()
        assert numpy.array_equal(shards.read_table(TABLE), initial)
        delta = numpy.full(SIZE, 0.5, dtype="float32")
        shards.push_update(0, TABLE, 0, delta)
        shards.clock(0, TABLE, 0)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not numpy.array_equal(
            shards.read_table(TABLE), initial + delta
        ):
            time.sleep(0.05)
        assert numpy.array_equal(shards.read_table(TABLE), initial + delta)
    finally:
        shards.close()
        server.join()
