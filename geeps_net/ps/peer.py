"""What both ends of the PS protocol (remote.py) share: a thread that owns one endpoint, failures
kept and passed on to peers as ERROR, `on_failure` hooks, abort, and how long a peer may be silent.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

import zmq

from geeps_net.errors import GeepsError, PeerLost, PsError
from geeps_net.ps.transport import Options
from geeps_net.ps.wire import MsgType

log = logging.getLogger(__name__)

AGREE = ("update_rule", "row_size", "num_servers", "num_channels", "slack")  # same on every peer
HWM = 100_000  # messages per socket: a burst of pushes of a many-table net must not block a send


def silence_s(config) -> float:
    """How long a peer may stay silent before it is declared lost: half the deadline (at least
    two heartbeats), so the verdict comes before the deadline of a read waiting on that peer."""
    return min(config.deadline_s, max(2 * config.heartbeat_s, config.deadline_s / 2))


class RemoteFailure(PsError):
    """A failure another process reported (ERROR): `root` is its one-line cause."""

    def __init__(self, root: str, via: str) -> None:
        super().__init__(f"{root} (reported by {via})")
        self.root = root


def root_of(error: BaseException, who: str) -> str:
    """The one line to pass on to peers: the original cause, naming who failed."""
    if isinstance(error, RemoteFailure):
        return error.root
    if isinstance(error, PeerLost):
        return str(error)  # already names the lost peer, its address and its last clock
    return f"{who} failed: {error}"


def endpoint_options(config, options: Options | None, strict: bool = True) -> Options:
    """Endpoint options from the config; servers drop invalid messages (a stranger must not stop
    the job), workers fail on them (only their servers talk to them)."""
    return options or Options(heartbeat_s=config.heartbeat_s, hwm=HWM, strict=strict)


class Component:
    """What both sides share: a thread owning one endpoint, failure bookkeeping and hooks."""

    name = ""

    def _setup(self, config, ctx: zmq.Context | None) -> None:
        self.config = config
        self.error: GeepsError | None = None
        self._hooks: list = []
        self._abort: str | None = None
        self._own_ctx = ctx is None
        self._next_check = 0.0  # when _check_peers looks again
        self.ctx = ctx or zmq.Context()

    def on_failure(self, hook) -> None:
        """Call `hook(error)` once when this component fails (at once if it already has)."""
        self._hooks.append(hook)
        if self.error is not None:
            hook(self.error)

    def abort(self, reason: str, deadline_s: float = 2.0) -> None:
        """Stop now, telling every peer `reason` (ERROR); no hooks are called (the caller knows)."""
        if self.error is not None or not self._thread.is_alive():
            return
        self._abort = reason
        self.ep.wake()
        self._thread.join(deadline_s)

    def _check_program(self) -> None:
        """Abort (ERROR to every peer, at the loop's next turn) once the program's main thread has
        ended without close(): this thread is not a daemon, so it would keep the interpreter from
        exiting, for ever where peers keep it busy (the data layer's prefetch thread ends then
        too)."""
        if self._abort is None and not threading.main_thread().is_alive():
            self._abort = f"{self.name}: the program ended without closing it"

    def _tick(self) -> float:
        return min(self.config.heartbeat_s, silence_s(self.config)) / 2

    def _check_peers(self) -> None:
        """Liveness: peers never heard from get the whole deadline (start-up), others silence_s.

        At most every tick / 4 seconds: the loop calls this after every message, and a verdict a
        fraction of a tick late is still seconds before anyone's deadline."""
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + self._tick() / 4
        self._check_program()
        ep = self.ep
        started = ep.heard >= ep.peers - ep.departed
        limit = silence_s(self.config) if started else self.config.deadline_s
        ep.check_liveness(limit, self._peer_clocks())

    def _peer_clocks(self) -> dict[int, int] | None:
        """Each peer's last clock for verdicts (None: the endpoint's, from CLOCK and heartbeats)."""
        return None

    def _fail(self, error: BaseException, peers) -> None:
        """Record the failure, pass its root cause to `peers`, close, call the hooks."""
        if not isinstance(error, GeepsError):
            log.exception("%s: unexpected failure", self.name)
            error = PsError(f"{self.name}: {error!r}")
        self.error = error
        root = self._abort or root_of(error, self.name)
        log.error("%s: %s", self.name, error)
        for peer in peers:
            with contextlib.suppress(GeepsError, zmq.ZMQError):
                self.ep.send(peer, self.ep.header(MsgType.ERROR), root.encode(), deadline_s=0.0)
        self._wake_waiters()
        self._close_endpoint(linger_s=0.5)  # let the ERRORs leave
        if not self._abort:
            for hook in self._hooks:
                hook(error)

    def _wake_waiters(self) -> None:
        """Wake threads blocked on this component (the worker side has some)."""

    def _close_endpoint(self, linger_s: float) -> None:
        self.ep.close(linger_s)
        if self._own_ctx:
            self.ctx.term()
