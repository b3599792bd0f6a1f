"""ZeroMQ endpoint core for the PS: sockets, polling with deadlines, heartbeats, validated messages.

The two roles live in endpoints.py: a ROUTER per server channel, a DEALER per server channel on
workers.

    ctx = zmq.Context()
    server = ServerEndpoint(ctx, 0, tcp_urls("127.0.0.1", 5570, 2), workers=range(4), tables=shapes)
    client = ClientEndpoint(ctx, 3, [server.urls], tables=shapes)
    client.send(0, client.header(MsgType.UPDATE, table=7, clock=41, row_end=8), delta)
    msg = server.recv(60.0, "an update")  # Message(peer=3, channel=0, header, payload)

An endpoint belongs to one thread at a time (zmq sockets are not thread-safe); using it from two
threads at once raises PsError. `wake()` is the one call any thread may make: it ends the owner's
poll (a communication thread sleeping in poll learns that it has something to send). Heartbeats go
out from inside poll/recv/tick, so the owner calls one of them at least every heartbeat_s (a
communication thread waiting in recv does). HEARTBEATs are consumed here; any valid message
refreshes its peer's `last_seen`. The zmq.Context is the caller's.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import threading
import time
from collections import deque
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy
import zmq

from geeps_net.errors import DeadlineError, PeerLost, PsError, WireError
from geeps_net.ps.curve import CurveKeys
from geeps_net.ps.wire import Header, MsgType, Part, TableShape, encode

log = logging.getLogger(__name__)

LOOPBACK = re.compile(r"^(127\.\d+\.\d+\.\d+|localhost|\[?::1\]?)$")
IDENTITY = re.compile(rb"^worker-(\d{1,9})$")
# messages whose clock is the sender's own
CLOCKED = (MsgType.HELLO, MsgType.HEARTBEAT, MsgType.CLOCK, MsgType.UPDATES, MsgType.BARRIER)


class Message(NamedTuple):
    """A validated message: who sent it (worker or server id), on which channel, header, payload
    (a list of Part for UPDATES and PUSHES)."""

    peer: int
    channel: int
    header: Header
    payload: numpy.ndarray | list[Part] | None


@dataclass(frozen=True)
class Options:
    """Endpoint settings: heartbeat period; high-water mark (messages per socket); whether an
    invalid message raises (strict) or is logged and dropped; whether sent payloads are covered by
    the checksum; CURVE keys; (servers) whether a bind beyond loopback without CURVE is allowed."""

    heartbeat_s: float = 5.0
    hwm: int = 100
    strict: bool = True
    payload_crc: bool = True
    curve: CurveKeys | None = None
    allow_insecure: bool = False


def tcp_urls(host: str, base_port: int, num_channels: int, offset: int = 0) -> list[str]:
    """URLs of one server's channels: port base_port + offset + channel (base_port 0: any free)."""
    if base_port == 0:
        return [f"tcp://{host}:*"] * num_channels
    return [f"tcp://{host}:{base_port + offset + c}" for c in range(num_channels)]


def inproc_urls(name: str, num_channels: int) -> list[str]:
    """A co-located server's channel URLs, inproc://geeps-{name}-{channel} (same Context only)."""
    return [f"inproc://geeps-{name}-{c}" for c in range(num_channels)]


def shard_inproc_urls(shard: int, num_channels: int) -> list[str]:
    """Where a client in the process hosting server shard `shard` reaches it (see inproc_urls)."""
    return inproc_urls(f"shard{shard}", num_channels)


class Endpoint:
    """What servers and clients share: sockets, polling with deadlines, heartbeats, liveness.

    Subclasses define where(peer) (its address), num_channels(peer), _beat_targets(), _send_to()
    and _accept().
    """

    role = ""  # "server" or "worker": what we are
    peer_role = ""  # what our peers are

    def __init__(
        self,
        ctx: zmq.Context,
        my_id: int,
        peers: Collection[int],
        tables: Mapping[int, TableShape] | None,
        options: Options,
    ) -> None:
        self.ctx, self.id, self.peers = ctx, my_id, frozenset(peers)
        self.tables = tables if tables is not None else {}  # the caller may add tables later
        self.options = options
        self.name = f"{self.role} {my_id}"
        self.clock = -1  # ours, carried by heartbeats; the owner keeps it current
        self.sockets: list[zmq.Socket] = []
        self.channel_of: dict[zmq.Socket, int] = {}
        self.poller = zmq.Poller()
        start = time.monotonic()
        self.last_seen: dict[int, float] = dict.fromkeys(self.peers, start)
        self.heard: set[int] = set()  # peers that sent at least one message
        self.last_clock: dict[int, int] = dict.fromkeys(self.peers, -1)
        self.departed: set[int] = set()  # peers that said SHUTDOWN
        self.rejected = 0  # messages dropped as invalid (strict=False)
        self._ready: deque[zmq.Socket] = deque()
        self._next_beat = start
        self._guard = threading.Lock()
        self._closed = False
        self._wake_lock = threading.Lock()  # wake() vs close(): never write to a closed pipe
        self._wake_r, self._wake_w = os.pipe()  # a byte on the pipe ends a poll (see wake)
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.poller.register(self._wake_r, zmq.POLLIN)

    def _socket(self, kind: int, channel: int) -> zmq.Socket:
        sock = self.ctx.socket(kind)
        sock.linger = 0
        sock.sndhwm = sock.rcvhwm = self.options.hwm
        self.sockets.append(sock)
        self.channel_of[sock] = channel
        self.poller.register(sock, zmq.POLLIN)
        return sock

    @contextlib.contextmanager
    def _owned(self, what: str):
        if self._closed:
            raise PsError(f"{self.name}: {what} after close()")
        if not self._guard.acquire(blocking=False):
            raise PsError(f"{self.name}: {what} while another thread uses this endpoint")
        try:
            yield
        finally:
            self._guard.release()

    def header(self, type: MsgType, **fields) -> Header:
        """A Header from us: Header(type, sender=self.id, **fields)."""
        return Header(type, self.id, **fields)

    def poll(self, timeout_s: float) -> Message | None:
        """The next message within `timeout_s` seconds, or None; sends heartbeats while waiting."""
        end = time.monotonic() + timeout_s
        with self._owned("poll"):
            while True:
                msg = self._take_ready()
                if msg is not None:
                    return msg
                now = time.monotonic()
                self._beat(now)
                wait = min(end, self._next_beat) - now
                events = self.poller.poll(max(1, math.ceil(wait * 1000)) if wait > 0 else 0)
                self._ready.extend(sock for sock, _ in events if sock != self._wake_r)
                if len(self._ready) < len(events):  # woken: hand back what came, or None
                    self._drain_wake()
                    return self._take_ready()
                if not events and now >= end:
                    return None

    def wake(self) -> None:
        """End the owner's poll now (it returns what has arrived, or None); any thread may call
        this, also before the poll starts (that poll then returns at once)."""
        with self._wake_lock:
            if self._wake_w >= 0:
                with contextlib.suppress(BlockingIOError):  # full pipe: a wake is pending anyway
                    os.write(self._wake_w, b"w")

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 4096):
                pass

    def recv(self, timeout_s: float, awaiting: str) -> Message:
        """The next message; DeadlineError naming `awaiting` and the quietest peer if none comes."""
        end = time.monotonic() + timeout_s
        msg = self.poll(timeout_s)
        while msg is None and time.monotonic() < end:  # a wake() ends a poll early
            msg = self.poll(end - time.monotonic())
        if msg is None:
            raise DeadlineError(
                f"{self.name}: nothing arrived in {timeout_s:.1f} s while awaiting {awaiting}; "
                f"{self._quietest()}"
            )
        return msg

    def tick(self) -> None:
        """Send heartbeats if due (for owners that neither poll nor recv for a while)."""
        with self._owned("tick"):
            self._beat(time.monotonic())

    def check_liveness(
        self, deadline_s: float, last_clock: Mapping[int, int] | None = None
    ) -> None:
        """Raise PeerLost if a peer (not departed) was silent for more than `deadline_s` seconds.

        The verdict names the peer, its address and its last clock: `last_clock[peer]` if given,
        else the clock of its last HELLO/HEARTBEAT/CLOCK/UPDATES/BARRIER.
        """
        now = time.monotonic()
        late = sorted(
            (p for p in self.peers - self.departed if now - self.last_seen[p] > deadline_s),
            key=lambda p: self.last_seen[p],
        )
        if not late:
            return
        peer = late[0]
        clocks = last_clock if last_clock is not None else self.last_clock
        silent = "no heartbeat" if peer in self.heard else "never heard from"
        more = f" (and {len(late) - 1} more)" if len(late) > 1 else ""
        raise PeerLost(
            f"{self.peer_role} {peer} ({self.where(peer)}): {silent} for "
            f"{now - self.last_seen[peer]:.1f} s; its last clock was {clocks.get(peer, -1)}{more}"
        )

    def close(self, linger_s: float = 0.0) -> None:
        """Close every socket (pending messages dropped after `linger_s`); safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for sock in self.sockets:
            sock.close(linger=int(linger_s * 1000))
        self.sockets.clear()
        self._ready.clear()
        with self._wake_lock:
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- shared internals -----------------------------------------------------------------------

    def _take_ready(self) -> Message | None:
        """Receive from sockets known to be readable, round robin; None when they are drained."""
        while self._ready:
            sock = self._ready.popleft()
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                continue
            self._ready.append(sock)  # it may hold more; others get their turn first
            try:
                msg = self._accept(sock, frames)
            except WireError as e:
                if self.options.strict:
                    raise
                self.rejected += 1
                # a flood of garbage must not drown the log (or the loop's heartbeats) in lines
                if self.rejected <= 10 or self.rejected % 1000 == 0:
                    log.warning("%s: dropped message %d: %s", self.name, self.rejected, e)
                continue
            if msg is not None:
                return msg
        return None

    def _note(self, msg: Message) -> Message | None:
        """Book-keeping for a valid message; None for messages consumed here (heartbeats)."""
        peer, h = msg.peer, msg.header
        self.last_seen[peer] = time.monotonic()
        self.heard.add(peer)
        if h.type in CLOCKED:
            self.last_clock[peer] = h.clock
        if h.type == MsgType.SHUTDOWN:
            self.departed.add(peer)
        return None if h.type == MsgType.HEARTBEAT else msg

    def _send(self, sock: zmq.Socket, frames: list, peer: int, deadline_s: float, track: bool):
        """Send without blocking; while the high-water mark is full, retry until `deadline_s`."""
        end, pause = time.monotonic() + deadline_s, 0.0005
        while True:
            try:
                return sock.send_multipart(frames, zmq.NOBLOCK, copy=False, track=track)
            except zmq.Again:
                pass
            except zmq.ZMQError as e:
                if e.errno == zmq.EHOSTUNREACH:
                    raise PeerLost(
                        f"{self.peer_role} {peer} ({self.where(peer)}): not connected "
                        f"(exited, or never said HELLO); its last clock was {self.last_clock[peer]}"
                    ) from None
                raise
            if time.monotonic() >= end:
                raise DeadlineError(
                    f"{self.name}: send to {self.peer_role} {peer} ({self.where(peer)}): "
                    f"{self.options.hwm} messages queued and none taken in {deadline_s:.1f} s"
                )
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def _beat(self, now: float) -> None:
        if now < self._next_beat:
            return
        self._next_beat = now + self.options.heartbeat_s
        beat = encode(self.header(MsgType.HEARTBEAT, clock=self.clock))
        for peer in self._beat_targets():
            with contextlib.suppress(DeadlineError, PeerLost, zmq.ZMQError):  # liveness tells
                self._send_to(peer, beat, channel=0, deadline_s=0.0, track=False)

    def _quietest(self) -> str:
        live = self.peers - self.departed
        if not live:
            return f"no {self.peer_role} left"
        peer = min(live, key=lambda p: self.last_seen[p])
        age = time.monotonic() - self.last_seen[peer]
        return f"quietest: {self.peer_role} {peer} ({self.where(peer)}), last heard {age:.1f} s ago"

    def send(
        self,
        peer: int,
        header: Header,
        payload: numpy.ndarray | bytes | list[Part] | None = None,
        *,
        channel: int = 0,
        deadline_s: float = 60.0,
        track: bool = False,
    ) -> zmq.MessageTracker | None:
        """Encode and send to `peer` on `channel`; the payload goes zero-copy (do not write to it
        until sent: pass track=True and wait on the tracker to know when). Raises DeadlineError if
        the queue stays full for `deadline_s`, PeerLost if a server cannot route to the worker."""
        if header.sender != self.id:
            raise PsError(f"{self.name}: header says sender {header.sender}")
        if peer not in self.peers:
            raise PsError(f"{self.name}: no {self.peer_role} {peer} in this job")
        if not 0 <= channel < self.num_channels(peer):
            raise PsError(f"{self.name}: no channel {channel} to {self.peer_role} {peer}")
        frames = encode(header, payload, payload_crc=self.options.payload_crc)
        with self._owned(f"send {header.type.name}"):
            return self._send_to(peer, frames, channel, deadline_s, track)
