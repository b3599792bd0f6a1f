"""ShardServer: one tablet server shard behind a ServerEndpoint, on its own thread (remote.py has
the protocol). It applies updates in worker order, pushes each range to the workers that created its
table when the slowest worker's clock advances, and ends when every worker said SHUTDOWN.
"""

from __future__ import annotations

import threading
from collections import defaultdict

from geeps_net.errors import PeerLost, PsError
from geeps_net.ps.config import Config
from geeps_net.ps.endpoints import ServerEndpoint
from geeps_net.ps.peer import AGREE, Component, RemoteFailure, endpoint_options
from geeps_net.ps.server import Push, ServerRule, TabletServer
from geeps_net.ps.tables import Directory, RowRange
from geeps_net.ps.transport import shard_inproc_urls
from geeps_net.ps.wire import ALL_TABLES, MsgType, Part, TableShape, note, pack


class _ServerEndpoint(ServerEndpoint):
    """A ServerEndpoint that names workers by their address in the job (not our own URL)."""

    def __init__(self, *args, addresses=None, **kwargs) -> None:
        self.addresses = dict(addresses or {})
        super().__init__(*args, **kwargs)

    def where(self, peer: int) -> str:
        return self.addresses.get(peer) or super().where(peer)


class ShardServer(Component):
    """One server shard on its own thread: transport + TabletServer, until every worker left.

    `addresses` names each worker in verdicts (e.g. its host:port in the job). With `inproc`, the
    shard also listens at shard_inproc_urls(server_id, ...) for the client of its own process,
    which must share `ctx` (DESIGN §6: co-located client and server use inproc://).
    """

    def __init__(
        self,
        config,
        server_id,
        num_workers,
        urls,
        *,
        server_rule: ServerRule | None = None,
        addresses=None,
        options=None,
        ctx=None,
        inproc: bool = False,
    ):
        if inproc and ctx is None:
            raise PsError(f"server {server_id}: inproc URLs need the zmq.Context of the client")
        self._setup(config, ctx)
        self.id, self.num_workers, self.name = server_id, num_workers, f"server {server_id}"
        self.tablet = TabletServer(server_id, num_workers, config.update_rule, server_rule)
        self.directory = Directory(config.num_servers, config.row_size)
        self.shapes: dict[int, TableShape] = {}
        self.ranges: dict[int, dict[int, RowRange]] = {}  # table -> row_start -> our range
        self.created: dict[int, set[int]] = {}  # table -> workers that created it
        self.initialized: set[tuple[int, int]] = set()
        self.shut: set[tuple[int, int]] = set()  # (worker, channel) that said SHUTDOWN
        self.unreachable: set[int] = set()
        try:
            self.ep = _ServerEndpoint(
                self.ctx,
                server_id,
                urls,
                range(num_workers),
                self.shapes,
                endpoint_options(config, options, strict=False),
                addresses=addresses,
                local_urls=shard_inproc_urls(server_id, config.num_channels) if inproc else (),
            )
        except BaseException:
            if self._own_ctx:
                self.ctx.term()
            raise
        self.urls = self.ep.urls
        self._thread = threading.Thread(target=self._run, name=f"ps-server-{server_id}")
        self.handlers = {
            MsgType.HELLO: self._hello,
            MsgType.CREATE: self._create,
            MsgType.INIT: self._init,
            MsgType.UPDATE: self._update,
            MsgType.CLOCK: self._clock,
            MsgType.UPDATES: self._updates,
            MsgType.READ_REQ: self._read,
            MsgType.SHUTDOWN: self._shutdown,
            MsgType.ERROR: self._error,
        }

    def start(self) -> ShardServer:
        """Serve on a new thread; returns self."""
        self._thread.start()
        return self

    def join(self) -> None:
        """Wait until every worker said SHUTDOWN (or the server failed: raises its error).

        Liveness bounds the wait: a silent worker fails the server within silence_s."""
        while self._thread.is_alive():
            self._thread.join(1.0)
        if self.error is not None:
            raise self.error

    @property
    def finished(self) -> bool:
        """Every worker closed every channel."""
        return len(self.shut) == self.num_workers * self.config.num_channels

    def _run(self) -> None:
        try:
            while not self.finished:
                if self._abort:
                    raise PsError(self._abort)
                msg = self.ep.poll(self._tick())
                if msg is not None:
                    self._receive(msg)
                self._check_peers()
        except BaseException as e:  # noqa: BLE001 - kept, passed on to peers and hooks
            self._fail(e, sorted(self.ep.routes))
            return
        self._close_endpoint(linger_s=1.0)

    def _receive(self, msg) -> None:
        if msg.peer in self.unreachable:  # back after a reconnect: resend what it missed
            self.unreachable.discard(msg.peer)
            for table, workers in self.created.items():
                if msg.peer in workers:
                    self._push_all(table, [msg.peer])
        handler = self.handlers.get(msg.header.type)
        if handler is None:
            raise PsError(
                f"{self.name}: unexpected {msg.header.type.name} from worker "
                f"{msg.peer} ({self.ep.where(msg.peer)})"
            )
        handler(msg)

    def _hello(self, msg) -> None:
        theirs = Config.parse(note(msg.payload), f"worker {msg.peer}'s PsConfig")
        for field in AGREE:
            if getattr(theirs, field) != getattr(self.config, field):
                raise PsError(
                    f"worker {msg.peer} ({self.ep.where(msg.peer)}) has {field} = "
                    f"{getattr(theirs, field)!r}, {self.name} has {getattr(self.config, field)!r}:"
                    " every process of a job needs the same PS config"
                )
        self.ep.send(msg.peer, self.ep.header(MsgType.HELLO), channel=msg.channel)

    def _create(self, msg) -> None:
        table, worker = msg.header.table, msg.peer
        num_values, row_size = (int(v) for v in msg.payload)
        if row_size != self.config.row_size:
            raise PsError(
                f"worker {worker}: table {table} with row_size {row_size}, "
                f"{self.name} has {self.config.row_size}"
            )
        if table in self.shapes and self.shapes[table].num_values != num_values:
            raise PsError(
                f"worker {worker} creates table {table} with {num_values} values, "
                f"another worker with {self.shapes[table].num_values}: "
                "every worker must build the same net"
            )
        if table not in self.shapes:
            self.shapes[table] = TableShape(num_values, row_size)
            mine = [r for r in self.directory.ranges(table, num_values) if r.shard == self.id]
            self.ranges[table] = {rng.row_start: rng for rng in mine}
            for rng in mine:
                self.tablet.add_range(table, rng)
        self.created.setdefault(table, set()).add(worker)
        self._push_all(table, [worker])

    def _range(self, msg) -> RowRange:
        h = msg.header
        return self._range_of(msg.peer, h.type.name, h.table, h.row_begin, h.row_end)

    def _range_of(self, worker: int, what: str, table: int, begin: int, end: int) -> RowRange:
        rng = self.ranges.get(table, {}).get(begin)
        if rng is None or rng.row_stop != end:
            raise PsError(
                f"worker {worker}: {what} of table {table} rows "
                f"[{begin}, {end}) is not a range of {self.name}"
            )
        return rng

    def _init(self, msg) -> None:
        rng = self._range(msg)
        if msg.peer != 0:
            raise PsError(f"worker {msg.peer} sent initial values: worker 0 alone writes them")
        table = msg.header.table
        self.tablet.master[table, rng.row_start][...] = msg.payload
        self.initialized.add((table, rng.row_start))
        age = self.tablet.data_age(table)
        self._send_push(Push(table, rng, self.tablet.master[table, rng.row_start], age))

    def _update(self, msg) -> None:
        h = msg.header
        self.tablet.apply_update(msg.peer, h.table, h.clock, self._range(msg), msg.payload)

    def _clock(self, msg) -> None:
        for push in self._finish(msg.peer, msg.header.table, msg.header.clock):
            self._send_push(push)

    def _updates(self, msg) -> None:
        """UPDATE and CLOCK parts in order; the pushes they cause go out as one PUSHES per
        worker and channel."""
        pushes = []
        for part in msg.payload:
            if part.values is None:
                pushes += self._finish(msg.peer, part.table, part.clock)
                continue
            rng = self._range_of(msg.peer, "UPDATE", part.table, part.row_begin, part.row_end)
            self.tablet.apply_update(msg.peer, part.table, part.clock, rng, part.values, copy=False)
        if pushes:
            self._send_pushes(pushes)

    def _finish(self, worker: int, table: int, clock: int) -> list[Push]:
        """`worker` finished `clock` of `table`: the pushes that follow."""
        if table == ALL_TABLES:
            return []  # the worker finished an iteration: only its last clock, for verdicts
        if table not in self.shapes:
            raise PsError(f"worker {worker}: CLOCK of table {table}, never created here")
        pushes = self.tablet.clock(worker, table, clock)
        self.ep.clock = min(self.tablet.data_age(t) for t in self.shapes)
        return pushes

    def _read(self, msg) -> None:
        rng, table = self._range(msg), msg.header.table
        head = self.ep.header(
            MsgType.READ_REP,
            table=table,
            clock=self.tablet.data_age(table),
            row_begin=rng.row_start,
            row_end=rng.row_stop,
        )
        values = self.tablet.master[table, rng.row_start].copy()
        self.ep.send(msg.peer, head, values, channel=table % self.config.num_channels)

    def _shutdown(self, msg) -> None:
        self.shut.add((msg.peer, msg.channel))

    def _error(self, msg) -> None:
        raise RemoteFailure(note(msg.payload), f"worker {msg.peer} ({self.ep.where(msg.peer)})")

    def _push_all(self, table: int, workers) -> None:
        """The current values of our initialized ranges of `table` to `workers`."""
        age = self.tablet.data_age(table)
        for start, rng in self.ranges[table].items():
            if (table, start) in self.initialized:
                self._send_push(Push(table, rng, self.tablet.master[table, start], age), workers)

    def _send_pushes(self, pushes: list[Push]) -> None:
        """One PUSHES per (worker, channel) with the values of `pushes`, copied (the master
        changes on) once for all the workers that get the same parts."""
        groups: dict[tuple[int, int], list[Part]] = defaultdict(list)
        for push in pushes:
            rng = push.range
            part = Part(push.table, rng.row_start, rng.row_stop, push.data_age, push.values)
            for worker in self.created.get(push.table, ()):
                groups[worker, push.table % self.config.num_channels].append(part)
        packed = {}  # (channel, parts' tables and rows) -> those parts packed
        for (worker, channel), parts in sorted(groups.items()):
            clock = max(part.clock for part in parts)
            head = self.ep.header(MsgType.PUSHES, clock=clock, row_end=len(parts))
            key = (channel, *((part.table, part.row_begin) for part in parts))
            if key not in packed:
                packed[key] = pack(parts)
            self._send_to(worker, head, packed[key], channel)

    def _send_to(self, worker: int, head, payload, channel: int) -> None:
        if worker in self.ep.departed or worker in self.unreachable:
            return
        try:
            self.ep.send(worker, head, payload, channel=channel, deadline_s=self.config.deadline_s)
        except PeerLost:
            # disconnected: it left (its SHUTDOWN may still be queued) or it died (liveness
            # will say so); if it comes back, _receive resends the current values
            self.unreachable.add(worker)

    def _send_push(self, push: Push, workers=None) -> None:
        """One copy of the values (the master changes on) to each worker that created the table."""
        values = push.values.copy()
        head = self.ep.header(
            MsgType.PUSH,
            table=push.table,
            clock=push.data_age,
            row_begin=push.range.row_start,
            row_end=push.range.row_stop,
        )
        targets = self.created.get(push.table, set()) if workers is None else workers
        for worker in sorted(targets):
            self._send_to(worker, head, values, push.table % self.config.num_channels)
