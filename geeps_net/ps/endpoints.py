"""The two endpoint roles over transport.Endpoint: ServerEndpoint (one ROUTER bound per channel)
and ClientEndpoint (one DEALER per server channel, identity `worker-<id>`)."""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence

import zmq

from geeps_net.errors import PsError, WireError
from geeps_net.ps.curve import start_authenticator, stop_authenticator
from geeps_net.ps.transport import IDENTITY, LOOPBACK, Endpoint, Message, Options
from geeps_net.ps.wire import TableShape, decode

log = logging.getLogger(__name__)


class ServerEndpoint(Endpoint):
    """One ROUTER per channel, bound to `urls` (loopback unless CURVE keys or allow_insecure).

    `local_urls` (inproc://, one per channel) are bound too, for a client in this process that
    shares `ctx`: it skips TCP's copies and system calls. ZeroMQ runs no CURVE handshake on
    inproc, and none is needed: only code in this process can reach those URLs.
    """

    role, peer_role = "server", "worker"

    def __init__(
        self,
        ctx: zmq.Context,
        server_id: int,
        urls: Sequence[str],
        workers: Collection[int],
        tables: Mapping[int, TableShape] | None = None,
        options: Options = Options(),  # noqa: B008 (a frozen dataclass)
        local_urls: Sequence[str] = (),
    ) -> None:
        super().__init__(ctx, server_id, workers, tables, options)
        self.auth = None  # the ZAP handler thread when CURVE is on
        self.routes: dict[int, int] = {}  # worker -> channel it was last heard on
        self.urls: list[str] = []
        self.local_urls = list(local_urls)
        try:
            self._check_bind(urls)
            if self.local_urls and len(self.local_urls) != len(urls):
                n = len(self.local_urls)
                raise PsError(f"{self.name}: {n} inproc URLs for {len(urls)} channels")
            if options.curve is not None:
                self.auth = start_authenticator(ctx, options.curve.authorized_dir)
            for channel, url in enumerate(urls):
                self.urls.append(self._bind(channel, url))
            for channel, url in enumerate(self.local_urls):
                self._bind_too(channel, url)
        except BaseException:
            self.close()
            raise

    def _check_bind(self, urls: Sequence[str]) -> None:
        for url in urls:
            host = url.split("://", 1)[-1].rsplit(":", 1)[0]
            if not url.startswith("tcp://") or LOOPBACK.match(host) or self.options.curve:
                continue
            if not self.options.allow_insecure:
                raise PsError(
                    f"{self.name}: binding {url} without CURVE keys lets anyone on the network "
                    "write parameters; give CURVE key files (geeps-net keygen), or -bind "
                    "ADDRESS to accept unauthenticated peers anyway"
                )
            log.warning("%s: %s is reachable from the network without CURVE keys", self.name, url)

    def _bind(self, channel: int, url: str) -> str:
        sock = self._socket(zmq.ROUTER, channel)
        sock.router_mandatory = 1  # an unroutable worker is an error, not a silent drop
        sock.router_handover = 1  # a restarted worker takes its identity back
        if self.options.curve is not None:
            sock.curve_publickey, sock.curve_secretkey = self.options.curve.own_pair()
            sock.curve_server = True
        try:
            sock.bind(url)
        except zmq.ZMQError as e:
            raise PsError(f"{self.name}: cannot bind channel {channel} to {url}: {e}") from None
        return sock.last_endpoint.decode()

    def _bind_too(self, channel: int, url: str) -> None:
        """Bind channel's ROUTER to a second URL (its inproc:// one)."""
        if not url.startswith("inproc://"):
            raise PsError(f"{self.name}: channel {channel}'s local URL {url} is not inproc://")
        try:
            self.sockets[channel].bind(url)
        except zmq.ZMQError as e:
            raise PsError(f"{self.name}: cannot bind channel {channel} to {url}: {e}") from None

    def where(self, peer: int) -> str:
        return self.urls[self.routes.get(peer, 0)] if self.urls else "unbound"

    def num_channels(self, peer: int) -> int:
        return len(self.urls)

    def _beat_targets(self) -> Collection[int]:
        return [w for w in self.routes if w not in self.departed]

    def _send_to(self, peer: int, frames: list, channel: int, deadline_s: float, track: bool):
        ident = b"worker-%d" % peer
        return self._send(self.sockets[channel], [ident, *frames], peer, deadline_s, track)

    def _accept(self, sock: zmq.Socket, frames: list) -> Message | None:
        channel = self.channel_of[sock]
        ident = frames[0].bytes
        match = IDENTITY.match(ident)
        if match is None or int(match[1]) not in self.peers:
            raise WireError(f"message from a stranger {ident[:40]!r} on {self.urls[channel]}")
        worker = int(match[1])
        peer = f"worker {worker} ({self.urls[channel]})"
        header, payload = decode(frames[1:], senders=self.peers, tables=self.tables, peer=peer)
        if header.sender != worker:
            raise WireError(f"message from {peer}: header claims sender {header.sender}")
        self.routes[worker] = channel
        return self._note(Message(worker, channel, header, payload))

    def close(self, linger_s: float = 0.0) -> None:
        """Close the sockets and stop the CURVE authenticator thread (joined with a deadline)."""
        super().close(linger_s)
        if self.auth is not None:
            auth, self.auth = self.auth, None
            stop_authenticator(auth)


class ClientEndpoint(Endpoint):
    """DEALER sockets with identity `worker-{id}`, one per (server, channel); `servers[s][c]` is the
    URL of server s's channel c."""

    role, peer_role = "worker", "server"

    def __init__(
        self,
        ctx: zmq.Context,
        worker_id: int,
        servers: Sequence[Sequence[str]],
        tables: Mapping[int, TableShape] | None = None,
        options: Options = Options(),  # noqa: B008 (a frozen dataclass)
    ) -> None:
        super().__init__(ctx, worker_id, range(len(servers)), tables, options)
        self.urls = [list(urls) for urls in servers]
        self.route: dict[tuple[int, int], zmq.Socket] = {}
        self.server_of: dict[zmq.Socket, int] = {}
        try:
            curve = options.curve
            keys = (*curve.own_pair(), curve.server_public()) if curve is not None else None
            for server, urls in enumerate(self.urls):
                for channel, url in enumerate(urls):
                    self._connect(server, channel, url, keys)
        except BaseException:
            self.close()
            raise

    def _connect(self, server: int, channel: int, url: str, keys) -> None:
        sock = self._socket(zmq.DEALER, channel)
        sock.identity = b"worker-%d" % self.id
        if keys is not None:
            sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = keys
        try:
            sock.connect(url)
        except zmq.ZMQError as e:
            raise PsError(f"{self.name}: cannot connect to server {server} at {url}: {e}") from None
        self.route[server, channel] = sock
        self.server_of[sock] = server

    def where(self, peer: int) -> str:
        return self.urls[peer][0]

    def num_channels(self, peer: int) -> int:
        return len(self.urls[peer])

    def _beat_targets(self) -> Collection[int]:
        return sorted(self.peers - self.departed)

    def _send_to(self, peer: int, frames: list, channel: int, deadline_s: float, track: bool):
        return self._send(self.route[peer, channel], frames, peer, deadline_s, track)

    def _accept(self, sock: zmq.Socket, frames: list) -> Message | None:
        server, channel = self.server_of[sock], self.channel_of[sock]
        peer = f"server {server} ({self.urls[server][channel]})"
        header, payload = decode(frames, senders={server}, tables=self.tables, peer=peer)
        return self._note(Message(server, channel, header, payload))
