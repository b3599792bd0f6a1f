"""CURVE keys for the PS sockets: key files, key generation, and the server's ZAP authenticator.

    public, secret = generate_keys("keys", "server")   # keys/server.key, keys/server.key_secret
    generate_keys("keys/authorized", "worker")           # a client pair; its .key authorises it

A server encrypts with its secret key and admits only clients whose public key file lies in
`authorized_dir`; a client needs its own secret key and the server's public key.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from geeps_net.errors import PsError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CurveKeys:
    """Key files: our own `.key_secret`; a client also names the server's public `.key`, a server
    the directory of authorised clients' public `.key` files."""

    secret_file: Path
    server_public_file: Path | None = None
    authorized_dir: Path | None = None

    def own_pair(self) -> tuple[bytes, bytes]:
        """(public, secret) from secret_file."""
        public, secret = load_key(self.secret_file)
        if secret is None:
            raise PsError(f"{self.secret_file}: no secret key in it (use the .key_secret file)")
        return public, secret

    def server_public(self) -> bytes:
        """The server's public key (clients)."""
        if self.server_public_file is None:
            raise PsError("CURVE client: the server's public key file is not given")
        return load_key(self.server_public_file)[0]


def generate_keys(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Write a key pair `name.key` (public) and `name.key_secret` in `directory` (created)."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(directory, name)
    return Path(public), Path(secret)


def load_key(path: str | Path) -> tuple[bytes, bytes | None]:
    """(public, secret or None) from a key file; PsError naming the file if it is unreadable."""
    try:
        return zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise PsError(f"{path}: cannot read a CURVE key: {e}") from None


def start_authenticator(ctx: zmq.Context, authorized_dir: Path | None) -> ThreadAuthenticator:
    """A ZAP handler on `ctx` admitting the clients whose public keys are in `authorized_dir`.

    ZeroMQ allows one handler per Context, so servers sharing a Context (the shards of one worker,
    which its client reaches over inproc://) share one: each start counts a user, and
    stop_authenticator stops the handler when its last user stops.
    """
    if authorized_dir is None or not Path(authorized_dir).is_dir():
        raise PsError(
            f"CURVE server: {authorized_dir} is not a directory of authorised client keys"
        )
    with _SHARED_LOCK:
        shared = _SHARED.get(ctx)
        if shared is not None:
            if shared.authorized_dir != Path(authorized_dir):
                raise PsError(
                    f"CURVE server: {authorized_dir}: this Context's servers admit the keys of "
                    f"{shared.authorized_dir}; one directory per Context"
                )
            shared.users += 1
            return shared.auth
        auth = ThreadAuthenticator(ctx, log=log)
        try:
            auth.start()
        except zmq.ZMQError as e:
            raise PsError(
                f"CURVE server: cannot start the authenticator ({e}); one per Context"
            ) from None
        auth.configure_curve(domain="*", location=str(authorized_dir))
        _SHARED[ctx] = _Shared(auth, Path(authorized_dir))
        return auth


def stop_authenticator(auth: ThreadAuthenticator, deadline_s: float = 5.0) -> None:
    """One user fewer; the last one stops the handler thread, joined within `deadline_s`
    (logged if it does not stop)."""
    with _SHARED_LOCK:
        shared = _SHARED.get(auth.context)
        if shared is not None and shared.auth is auth:
            shared.users -= 1
            if shared.users:
                return
            del _SHARED[auth.context]
    if auth.pipe is not None and auth.thread is not None:
        with contextlib.suppress(zmq.Again):  # a thread that is gone reads nothing: never block
            auth.pipe.send(b"TERMINATE", zmq.NOBLOCK)
        auth.thread.join(timeout=deadline_s)
        if auth.thread.is_alive():
            log.error("the CURVE authenticator did not stop in %.1f s", deadline_s)
            return
        # auth.stop() would send TERMINATE again, to a pipe whose reader has closed: that send
        # can block for ever (a hang seen in tests), so the pipe is closed here first
        auth.pipe.close()
        auth.pipe, auth.thread = None, None
    auth.stop()  # what is left: the ZAP socket


@dataclass
class _Shared:
    """The ZAP handler of one Context and how many servers use it."""

    auth: ThreadAuthenticator
    authorized_dir: Path
    users: int = 1


# The handler of each Context with servers on it: ZeroMQ binds a Context's ZAP handler to one
# fixed inproc address, so this bookkeeping is per Context by nature, not a choice of ours.
_SHARED: dict[zmq.Context, _Shared] = {}
_SHARED_LOCK = threading.Lock()
