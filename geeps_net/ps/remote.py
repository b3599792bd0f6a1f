"""The shard interface over ZeroMQ: RemoteShards on the worker, ShardServer on the server.

    server = ShardServer(config, 0, num_workers=2, urls=tcp_urls("127.0.0.1", 5570, 1))
    server.start()                                     # its own thread (and zmq.Context)
    shards = RemoteShards(config, 1, num_workers=2, servers=[server.urls])  # HELLO handshake
    client = Client(config, shards, worker_id=1, num_workers=2)
    ...
    client.close(); shards.close(); server.join()     # SHUTDOWN; the server ends when all did

Messages for the calls of the shard interface (server.py's docstring), in wire.py's types:

    HELLO     worker -> every channel of every server, payload its PsConfig text; the server checks
              the fields both sides must agree on and answers HELLO (the worker waits for all).
    CREATE    worker -> owners of the table's ranges: int64 [num_values, row_size].
    INIT      worker 0 -> owner of a range: initial values.
    UPDATES   worker -> server: in order, the deltas of its ranges (UPDATE) and the CLOCKs of the
              tables a worker finished at one clock, gathered per (server, channel) until the
              worker finished that clock of every table (or sends anything else to the server),
              with a CLOCK of ALL_TABLES (the iteration, for verdicts) on channel 0.
    PUSH      server -> every worker that created the table: a range's values at data age `clock`
              (after CREATE, INIT or a reconnect);
    PUSHES    the same for every range whose data age one UPDATES message advanced.
    READ_REQ / READ_REP   read_table (tests, diagnostics).
    SHUTDOWN  worker -> every channel of every server when it closes; a server ends when all did.
    ERROR     either way: the sender failed; payload = the root cause, one line, passed on as is.

Everything about table t travels on channel t % num_channels, so it arrives in order. A peer
silent for `silence_s(config)` (heartbeats included) is lost: the verdict names it, its address
and its last clock, goes to every other peer as ERROR, and the component fails; `on_failure`
hooks (cluster.FailStop in a training process) turn that into a non-zero exit.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy
from google.protobuf import text_format

from geeps_net.errors import DeadlineError, GeepsError, PsError
from geeps_net.ps.endpoints import ClientEndpoint
from geeps_net.ps.peer import Component, RemoteFailure, endpoint_options
from geeps_net.ps.server import Push
from geeps_net.ps.shard_server import ShardServer
from geeps_net.ps.tables import Directory, RowRange
from geeps_net.ps.wire import ALL_TABLES, Header, MsgType, Packed, Part, TableShape, note

__all__ = ["RemoteShards", "ShardServer"]


class _Batch:
    """The parts of one UPDATES being gathered, their values copied into `buffer` in order."""

    def __init__(self, clock: int, capacity: int) -> None:
        self.clock, self.parts, self.used, self.capacity = clock, [], 0, capacity
        self.buffer = numpy.empty(0, dtype="float32")  # allocated with the first values

    def add(self, part: Part, values: numpy.ndarray | None) -> None:
        if values is not None:
            if not self.buffer.size:
                self.buffer = numpy.empty(max(self.capacity, values.size), dtype="float32")
            end = self.used + values.size
            if end > self.buffer.size:  # a table created since the batch began
                more = numpy.empty(max(values.size, self.buffer.size), dtype="float32")
                self.buffer = numpy.concatenate([self.buffer[: self.used], more])
            self.buffer[self.used : end] = values  # the one copy: the caller reuses its buffer
            self.used = end
        self.parts.append(part)

    def packed(self) -> Packed:
        return Packed(self.parts, self.buffer[: self.used] if self.used else None)


class RemoteShards(Component):
    """The shard interface of server.py over ZeroMQ, for one worker.

    `servers[s]` lists the channel URLs of server s. Calls queue messages and return; a
    communication thread (the only user of the sockets) sends them, receives pushes and hands
    them to the subscribed callback, heartbeats and watches the servers' liveness. After a
    failure every call raises it (`error`).
    """

    def __init__(self, config, worker_id, num_workers, servers, *, options=None, ctx=None):
        if len(servers) != config.num_servers:
            raise PsError(f"{len(servers)} server addresses for num_servers {config.num_servers}")
        self._setup(config, ctx)
        self.worker_id, self.num_workers = worker_id, num_workers
        self.name = f"worker {worker_id}"
        self.directory = Directory(config.num_servers, config.row_size)
        self.tables: dict[int, list[RowRange]] = {}
        self.shapes: dict[int, TableShape] = {}  # the endpoint validates pushes against these
        self.ages: dict[int, dict[int, int]] = {}  # table -> row_start -> last pushed data age
        self.clocked: dict[int, int] = {}  # table -> last clock finished
        self.iteration = -1  # the last clock every table finished
        self.pushed = dict.fromkeys(range(config.num_servers), -1)  # server -> its last data age
        self._deliver = None
        self._outbox: deque = deque()
        self._batches: dict[tuple[int, int], _Batch] = {}  # (server, channel) -> not yet sent
        self._batch_lock = threading.Lock()
        self._capacity: dict[tuple[int, int], int] = {}  # (server, channel) -> values of tables
        self._cond = threading.Condition()
        self._answered: set[tuple[int, int]] = set()
        self._replies: dict[tuple[int, int], numpy.ndarray] = {}
        self._closing = False
        try:
            options = endpoint_options(config, options)
            self.ep = ClientEndpoint(self.ctx, worker_id, servers, self.shapes, options)
        except BaseException:
            if self._own_ctx:
                self.ctx.term()
            raise
        self._thread = threading.Thread(target=self._run, name=f"ps-comm-{worker_id}")
        self._thread.start()
        self._handshake()

    # ---- the shard interface (any thread) -------------------------------------------------------

    def create_table(self, table: int, num_values: int) -> list[RowRange]:
        """Create `table` on the servers owning its ranges; returns the ranges (row order)."""
        self._check()
        if table in self.tables:
            if self.shapes[table].num_values != num_values:
                raise PsError(
                    f"table {table}: created with {self.shapes[table].num_values} "
                    f"values, now {num_values}"
                )
            return self.tables[table]
        ranges = self.directory.ranges(table, num_values)
        self.shapes[table] = TableShape(num_values, self.config.row_size)
        self.tables[table] = ranges
        self.ages[table] = {rng.row_start: -2 for rng in ranges}
        self.clocked[table] = -1
        with self._batch_lock:
            for rng in ranges:
                key = (rng.shard, table % self.config.num_channels)
                self._capacity[key] = self._capacity.get(key, 0) + rng.value_stop - rng.value_start
        spec = numpy.array([num_values, self.config.row_size], dtype="int64")
        for shard in sorted({rng.shard for rng in ranges}):
            self._queue(shard, Header(MsgType.CREATE, self.worker_id, table), spec)
        return ranges

    def subscribe(self, worker: int, deliver) -> None:
        """Send every push for this worker to `deliver(push)` (on the communication thread)."""
        if worker != self.worker_id:
            raise PsError(f"{self.name}: cannot subscribe worker {worker}")
        self._deliver = deliver

    def write_initial(self, table: int, values: numpy.ndarray) -> None:
        """Worker 0's initial values of `table`, to the owner of each range."""
        values = self._values(MsgType.INIT, table, values)
        for rng in self.tables[table]:
            head = Header(MsgType.INIT, self.worker_id, table, -1, rng.row_start, rng.row_stop)
            self._queue(rng.shard, head, values[rng.values].copy())  # sent later, zero-copy

    def push_update(self, worker: int, table: int, clock: int, delta: numpy.ndarray) -> None:
        """This worker's whole-table delta of `clock`, cut into ranges (copied: the caller reuses
        its buffer); sent with the clock's UPDATES."""
        values = self._values(MsgType.UPDATE, table, delta)
        channel = table % self.config.num_channels
        for rng in self.tables[table]:
            part = Part(table, rng.row_start, rng.row_stop, clock)
            self._gather(rng.shard, channel, part, values[rng.values])

    def share_master(self, worker: int, table: int, values: numpy.ndarray) -> bool:
        """Never: the master copies live in other processes."""
        return False

    def clock(self, worker: int, table: int, clock: int) -> None:
        """This worker finished `clock` of `table`: tell every server holding part of it. Once
        every table finished `clock`, the gathered UPDATES go out."""
        self._check()
        channel = table % self.config.num_channels
        for shard in sorted({rng.shard for rng in self.tables[table]}):
            self._gather(shard, channel, Part(table, 0, 0, clock))
        self.clocked[table] = clock
        done = min(self.clocked.values())
        if done > self.iteration:  # every table finished `done`: tell every server (verdicts)
            self.iteration = done
            for server in range(self.config.num_servers):
                self._gather(server, 0, Part(ALL_TABLES, 0, 0, done))
            self._seal()

    def read_table(self, table: int) -> numpy.ndarray:
        """The servers' master copy of `table` (a new array; waits for the answers, deadline_s)."""
        self._check()
        out = numpy.empty(self.shapes[table].num_values, dtype="float32")
        keys = [(table, rng.row_start) for rng in self.tables[table]]
        with self._cond:
            for key in keys:
                self._replies.pop(key, None)
        for rng in self.tables[table]:
            head = Header(MsgType.READ_REQ, self.worker_id, table, -1, rng.row_start, rng.row_stop)
            self._queue(rng.shard, head)
        self._wait(lambda: all(k in self._replies for k in keys), f"read of table {table}")
        with self._cond:
            for rng in self.tables[table]:
                out[rng.values] = self._replies.pop((table, rng.row_start))
        return out

    def data_age(self, table: int) -> int:
        """The oldest data age pushed to this worker among the table's ranges (-2: none yet)."""
        return min(self.ages[table].values(), default=-1)

    def close(self) -> None:
        """Say SHUTDOWN on every channel of every server, stop the thread, close the sockets."""
        if self._closing:
            return
        if self.error is None and self._thread.is_alive():
            for server in range(self.config.num_servers):
                for channel in range(self.config.num_channels):
                    self._queue(server, Header(MsgType.SHUTDOWN, self.worker_id), channel=channel)
            self._closing = True
            self.ep.wake()
        self._closing = True
        self._thread.join(self.config.deadline_s)
        if self._thread.is_alive():
            raise DeadlineError(
                f"{self.name}: communication thread did not stop in {self.config.deadline_s} s"
            )

    # ---- plumbing -------------------------------------------------------------------------------

    def _values(self, kind: MsgType, table: int, values: numpy.ndarray) -> numpy.ndarray:
        self._check()
        values = numpy.asarray(values, dtype="float32").reshape(-1)
        if values.size != self.shapes[table].num_values:
            raise PsError(
                f"{kind.name} table {table}: {values.size} values, "
                f"expected {self.shapes[table].num_values}"
            )
        return values

    def _gather(self, server: int, channel: int, part: Part, values=None) -> None:
        """Add `part` (and a copy of its `values`) to the UPDATES of (server, channel); one of
        another clock goes out first."""
        with self._batch_lock:
            batch = self._batches.get((server, channel))
            if batch is not None and batch.clock != part.clock:
                self._post(server, channel, self._updates(batch))
                batch = None
            if batch is None:
                capacity = self._capacity.get((server, channel), 0)
                batch = self._batches[server, channel] = _Batch(part.clock, capacity)
            batch.add(part, values)

    def _seal(self) -> None:
        """Queue every gathered UPDATES (server, then channel order)."""
        with self._batch_lock:
            for (server, channel), batch in sorted(self._batches.items()):
                self._post(server, channel, self._updates(batch))
            self._batches.clear()

    def _updates(self, batch: _Batch) -> tuple[Header, Packed]:
        head = Header(MsgType.UPDATES, self.worker_id, clock=batch.clock, row_end=len(batch.parts))
        return head, batch.packed()

    def _queue(self, server: int, header: Header, payload=None, channel: int | None = None):
        if channel is None:
            channel = header.table % self.config.num_channels
        self._seal()  # what was gathered goes first: the server sees the calls' order
        self._post(server, channel, (header, payload))

    def _post(self, server: int, channel: int, message: tuple) -> None:
        self._outbox.append((server, channel, *message))
        # One wake per batch: the thread flushes until the outbox is empty before it polls, so a
        # longer outbox already has a wake on its way (a per-table burst is ~20 messages)
        if len(self._outbox) == 1:
            self.ep.wake()

    def _check(self) -> None:
        if self.error is not None:
            raise self.error
        if self._closing:
            raise PsError(f"{self.name}: the shards are closed")

    def _handshake(self) -> None:
        text = text_format.MessageToString(self.config.to_proto(), as_one_line=True).encode()
        everyone = {
            (s, c) for s in range(self.config.num_servers) for c in range(self.config.num_channels)
        }
        for server, channel in sorted(everyone):
            self._queue(server, Header(MsgType.HELLO, self.worker_id), text, channel=channel)
        try:
            self._wait(lambda: self._answered >= everyone, "the servers' answers to HELLO")
        except GeepsError:
            self.close()
            raise

    def _wait(self, ready, what: str) -> None:
        end = time.monotonic() + self.config.deadline_s
        with self._cond:
            while not ready():
                if self.error is not None:
                    self._check()
                left = end - time.monotonic()
                if left <= 0:
                    missing = sorted(
                        set(range(self.config.num_servers)) - {s for s, _ in self._answered}
                    )
                    who = ", ".join(f"server {s} ({self.ep.where(s)})" for s in missing)
                    raise DeadlineError(
                        f"{self.name}: no answer within {self.config.deadline_s}"
                        f" s awaiting {what}" + (f"; silent: {who}" if who else "")
                    )
                self._cond.wait(left)

    def _peer_clocks(self) -> dict[int, int]:
        return self.pushed  # a server's clock: the data age of its last push

    def _wake_waiters(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _run(self) -> None:
        try:
            while True:
                if self._abort:
                    raise PsError(self._abort)
                self._flush()
                if self._closing and not self._outbox:
                    break
                msg = self.ep.poll(self._tick())
                if msg is not None:
                    self._handle(msg)
                self._check_peers()
        except BaseException as e:  # noqa: BLE001 - kept, passed on to peers and hooks
            self._fail(e, range(self.config.num_servers))
            return
        self._close_endpoint(linger_s=min(self.config.deadline_s, 5.0))  # the SHUTDOWNs leave

    def _flush(self) -> None:
        while self._outbox:
            server, channel, header, payload = self._outbox.popleft()
            if header.type in (MsgType.CLOCK, MsgType.UPDATES):
                self.ep.clock = max(self.ep.clock, header.clock)  # heartbeats carry it
            self.ep.send(
                server, header, payload, channel=channel, deadline_s=self.config.deadline_s
            )

    def _handle(self, msg) -> None:
        h, server = msg.header, msg.peer
        if h.type == MsgType.PUSH:
            self._push(server, Part(h.table, h.row_begin, h.row_end, h.clock, msg.payload))
        elif h.type == MsgType.PUSHES:
            for part in msg.payload:
                self._push(server, part)
        elif h.type in (MsgType.HELLO, MsgType.READ_REP):
            with self._cond:
                if h.type == MsgType.HELLO:
                    self._answered.add((server, msg.channel))
                else:
                    self._replies[h.table, h.row_begin] = numpy.array(msg.payload)
                self._cond.notify_all()
        elif h.type == MsgType.ERROR:
            raise RemoteFailure(note(msg.payload), f"server {server} ({self.ep.where(server)})")
        else:
            raise PsError(
                f"{self.name}: unexpected {h.type.name} from server {server} "
                f"({self.ep.where(server)})"
            )

    def _push(self, server: int, part: Part) -> None:
        rng = next(r for r in self.tables[part.table] if r.row_start == part.row_begin)
        if self._deliver is not None:  # without a subscriber only the age is kept
            self._deliver(Push(part.table, rng, part.values, part.clock, fresh=True))
        ages = self.ages[part.table]
        ages[part.row_begin] = max(ages[part.row_begin], part.clock)
        self.pushed[server] = max(self.pushed[server], part.clock)
