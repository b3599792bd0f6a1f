"""Where the engine meets GeePS: a Net's iteration driven through a PS client (DESIGN §4).

`PsTrainer` registers every trainable layer's params as PS tables and every blob, internal blob,
frozen param and solver history as PS local data, records one iteration with compute off (the
virtual iteration), then runs every real iteration through the same calls: read/post_read for
params, pre_update/update for the solver's update (computed straight into the update buffer),
local_access/post_local_access for the rest. This module is the only one in the engine that imports
`geeps_net.ps`; worker_state.py, its foreground half (loads, snapshots, feeds), only calls the
client it is given.
"""

from __future__ import annotations

import logging
import time

import numpy

from geeps_net.backend import to_host
from geeps_net.control import ACTIONS, JobControl
from geeps_net.errors import NetError
from geeps_net.ps.client import Client
from geeps_net.ps.config import Config
from geeps_net.ps.server import LocalShards
from geeps_net.schedule import build_schedule
from geeps_net.solvers import clip_gradients, normalize
from geeps_net.worker_state import TrainerState

log = logging.getLogger(__name__)


class PsTrainer(TrainerState):
    """One training iteration through the parameter server; numbers identical to ResidentTrainer.
    What the solver reads and writes between iterations (weights, history, feeds) is
    TrainerState's, in worker_state.py."""

    resident = False  # the Solver builds the train net with unbound blobs for us

    def __init__(self, net, rule, param, client: Client, train: bool = True) -> None:
        """`train=False` runs forward passes only (`geeps-net test`): no diffs, no updates."""
        if any(layer.reshape_reads_data for layer in net.layers):
            raise NetError(
                f'net "{net.name}": a layer with data-dependent shapes cannot run on the PS'
            )
        self.net, self.rule, self.param, self.client = net, rule, param, client
        self.xp = net.xp
        # -- distributed (ps/remote.py): update_rule SERVER runs the solver on the servers. The
        # update buffer then carries the normalized gradient (not the rule's output, not negated),
        # the worker keeps no solver history, and its cache does not apply its own update (the
        # Client's ParamCache knows). See ServerSideRule in geeps_net/distributed.py.
        self.server_side_rule = client.config.update_rule == "SERVER"
        self.train = train
        self.num_history = 0 if self.server_side_rule or not train else rule.num_history
        self.trace = client.trace  # compute spans join the client's copies, waits and pushes
        self.layer_seconds = None  # [forward, backward] seconds per layer, when timing
        self.steps = 0  # iterations done (clocks); multi-worker reads settle on steps - 1
        self.iter_size = max(param.iter_size, 1) if train else 1
        self.deferred = train and (self.iter_size > 1 or param.clip_gradients >= 0)
        self.schedule = build_schedule(net, client.config.layers_per_table, train)
        self.control = None  # several workers: stop/snapshot agreed through a PS table
        if train and client.num_workers > 1:
            cfg = client.config
            self.control = JobControl(
                client.worker_id, client.num_workers, cfg.slack, cfg.update_rule
            )
        self._register()
        with client.virtual_iteration():
            self._iterate(0, 0.0, compute=False)
        self._started = False  # the threads start at the first step: loads and feeds go before it
        self._outputs: dict = {}

    # -- registration ---------------------------------------------------------------------------

    def _register(self) -> None:
        c, s = self.client, self.schedule
        self.table_ids = [c.create_table(t.name, t.size) for t in s.tables]
        self.local_ids = {
            key: c.create_local(".".join(key), blob.count, kind, dtype=blob.dtype)
            for key, (blob, kind) in s.locals.items()
        }
        # Solver history (and, when updates are deferred, gradient accumulators) per trainable
        # param.
        self.history_ids = {}
        for t, table in enumerate(s.tables):
            for k in range(self.num_history):
                self.history_ids[t, k] = c.create_local(
                    f"{table.name}.history{k}", table.size, "history"
                )
            if self.deferred:
                self.history_ids[t, "grad"] = c.create_local(
                    f"{table.name}.grad", table.size, "diff"
                )
        if c.worker_id == 0:
            for t, table in enumerate(s.tables):
                init = numpy.concatenate([p.blob_init.ravel() for p in table.params])
                c.write_initial(self.table_ids[t], init.astype(numpy.float32))
        if self.control is not None:  # after the net's tables: ids match layout() on the servers
            self.control_id = c.create_table("job.control", len(ACTIONS))
            if c.worker_id == 0:
                c.write_initial(self.control_id, numpy.zeros(len(ACTIONS), numpy.float32))
        for key, lid in self.history_ids.items():
            c.write_local(lid, numpy.zeros(s.tables[key[0]].size, numpy.float32))
        for key, (blob, kind) in s.locals.items():
            if kind in ("diff", "internal", "frozen"):
                value = self._frozen_init(blob) if kind == "frozen" else numpy.zeros(blob.count)
                c.write_local(self.local_ids[key], value.astype(blob.dtype).ravel())

    def _frozen_init(self, blob):
        return next(p.blob_init for p in self.net.learnable if p.blob is blob)

    # -- one iteration --------------------------------------------------------------------------

    def step(self, it: int, rate: float) -> float:
        """Forward/backward iter_size times, update every table, clock; the mean loss."""
        self._start()
        loss = self._iterate(it, rate, compute=True)
        self.steps += 1
        return loss

    def _start(self) -> None:
        """The PS's threads start at the first iteration: loads and feeds go before it."""
        if not self._started:
            self.client.start_iterations()
            self._started = True

    def _iterate(self, it: int, rate: float, compute: bool) -> float:
        loss = 0.0
        if self.control is not None:
            self._read_control(compute)
        for _ in range(self.iter_size):
            loss += self._forward(compute)
            self._backward(it, rate, compute)
        if self.deferred:
            self._deferred_updates(it, rate, compute)
        for t in self.schedule.idle_updates if not self.deferred else []:
            self._update_table(t, it, rate, compute, grad=None)
        if self.control is not None:
            self._write_control(compute)
        self.client.clock()
        return loss / self.iter_size

    def _forward(self, compute: bool) -> float:
        net, loss = self.net, 0.0
        outputs = set(net.outputs)
        for step in self.schedule.forward:
            self._acquire(step, compute)
            if compute:
                start = time.perf_counter()
                loss += net.forward_layer(step.layer)
                self._timed(step.layer, 0, start)
                for top in net.tops[step.layer]:
                    if top.name in outputs:
                        self._outputs[top.name] = to_host(top.data).copy()
            self._release(step)
        return loss

    def _backward(self, it: int, rate: float, compute: bool) -> None:
        net, c = self.net, self.client
        for step in self.schedule.backward:
            for t in step.pre_updates:
                buf = c.pre_update(self.table_ids[t]) if not self.deferred else None
                self._bind_table(t, diff=buf)
                if self.deferred:
                    grad = c.local_access(self.history_ids[t, "grad"], fetch=True)
                    self._bind_table(t, diff=grad)
            self._acquire(step, compute)
            if compute:
                start = time.perf_counter()
                net.set_loss_diffs(step.layer)
                net.backward_layer(step.layer)
                self._timed(step.layer, 1, start)
            for t in step.updates:
                if self.deferred:
                    c.post_local_access(self.history_ids[t, "grad"], keep=True)
                else:
                    self._apply_rule(t, it, rate, compute)
                    c.update(self.table_ids[t])
            self._release(step)

    def _read_control(self, compute: bool) -> None:
        values = self.client.read(self.control_id)
        if compute:
            self.control.observe(to_host(values), self.steps)
        self.client.post_read(self.control_id)

    def _write_control(self, compute: bool) -> None:
        buf = self.client.pre_update(self.control_id)
        if compute:
            buf[...] = self.xp.asarray(self.control.delta(self.steps))
        self.client.update(self.control_id)

    def request(self, action: str) -> None:
        """Several workers: ask for "stop" or "snapshot" at a clock the whole job agrees on."""
        self.control.request(action)

    def agreed_actions(self) -> list[str]:
        """Several workers: the actions every worker takes now, at the end of this clock."""
        return self.control.due(self.steps) if self.control is not None else []

    def _deferred_updates(self, it: int, rate: float, compute: bool) -> None:
        """iter_size > 1 or clipping: updates wait for every gradient (Caffe's ApplyUpdate
        order)."""
        c, s = self.client, self.schedule
        if self.param.clip_gradients >= 0:
            grads = [
                c.local_access(self.history_ids[t, "grad"], fetch=True)
                for t in range(len(s.tables))
            ]
            if compute:
                clip_gradients(self.xp, self._param_views(grads), self.param.clip_gradients)
            for t in range(len(s.tables)):
                c.post_local_access(self.history_ids[t, "grad"], keep=True)
        for t in range(len(s.tables)):
            grad = c.local_access(self.history_ids[t, "grad"], fetch=True)
            self._update_table(t, it, rate, compute, grad)
            if compute:
                grad[...] = 0  # the next iteration accumulates from zero
            c.post_local_access(self.history_ids[t, "grad"], keep=True)

    def _update_table(self, t: int, it: int, rate: float, compute: bool, grad) -> None:
        """pre_update + read + rule + update for table t (gradient `grad`, or zero when None)."""
        c = self.client
        buf = c.pre_update(self.table_ids[t])
        if compute and grad is not None:
            buf[...] = grad
        self._bind_table(t, diff=buf)
        self._bind_table(t, data=c.read(self.table_ids[t]))
        self._apply_rule(t, it, rate, compute)
        c.update(self.table_ids[t])
        c.post_read(self.table_ids[t])

    def _apply_rule(self, t: int, it: int, rate: float, compute: bool) -> None:
        """Normalize/regularize/update each param of table t in its update buffer, then negate it:
        the PS adds the buffer to the params, and w + (-d) == w - d exactly."""
        c, table = self.client, self.schedule.tables[t]
        history = [
            c.local_access(self.history_ids[t, k], fetch=True) for k in range(self.num_history)
        ]
        if compute:
            for p, sl in table.slices:
                blob = p.blob
                hist = [h[sl].reshape(blob.shape) for h in history]
                normalize(self.xp, blob.diff, self.iter_size)
                if self.server_side_rule:
                    continue  # the servers run the rule on the mean gradient
                self.rule.update(
                    self.xp, it, rate, p.lr_mult, p.decay_mult, blob.data, blob.diff, hist,
                    then="negate",
                )  # fmt: skip
        for k in range(self.num_history):
            c.post_local_access(self.history_ids[t, k], keep=True)

    # -- binding --------------------------------------------------------------------------------

    def _acquire(self, step, compute: bool) -> None:
        c = self.client
        for t in step.reads:
            self._bind_table(t, data=c.read(self.table_ids[t]))
        for key, fetch in step.acquire:
            buf = c.local_access(self.local_ids[key], fetch=fetch)
            if compute:
                blob = self.schedule.locals[key][0]
                if key[0] == "diff":
                    blob.diff = buf.reshape(blob.shape)
                else:
                    blob.data = buf.reshape(blob.shape)

    def _release(self, step) -> None:
        c = self.client
        for key, keep in step.release:
            c.post_local_access(self.local_ids[key], keep=keep)
        for t in step.reads:
            c.post_read(self.table_ids[t])

    def _bind_table(self, t: int, data=None, diff=None) -> None:
        """Point table t's param blobs at slices of a PS buffer (data from read, diff from
        pre_update); None leaves that side as it is (and is what recording hands back)."""
        for p, sl in self.schedule.tables[t].slices:
            if data is not None:
                p.blob.data = data[sl].reshape(p.blob.shape)
            if diff is not None:
                p.blob.diff = diff[sl].reshape(p.blob.shape)

    def _param_views(self, grads) -> list:
        return [
            grads[t][sl] for t, table in enumerate(self.schedule.tables) for _, sl in table.slices
        ]

    # -- what the solver asks for ---------------------------------------------------------------

    def outputs(self) -> dict:
        return dict(self._outputs)

    def stats(self) -> dict:
        return self.client.stats()

    def forward_pass(self) -> tuple[float, dict]:
        """One forward-only iteration (a test batch): the loss and the output blobs' values."""
        self._start()
        loss = self._iterate(0, 0.0, compute=True)
        return loss, self.outputs()

    def _timed(self, layer: int, phase: int, start: float) -> None:
        """Account layer compute time (per-layer table of `geeps-net time`; Chrome trace)."""
        end = time.perf_counter()
        if self.layer_seconds is not None:
            self.layer_seconds[phase][layer] += end - start
        if self.trace is not None:
            name = f"{('forward', 'backward')[phase]} {self.net.layers[layer].name}"
            self.trace.add(name, "compute", start, end)

    def close(self) -> None:
        self.client.close()
        if self.trace is not None:
            self.trace.write(self.client.config.trace_file)
        self.net.close()


def ps_trainer_factory(
    config: Config,
    xp=numpy,
    worker_id: int = 0,
    num_workers: int = 1,
    shards=None,
    train: bool = True,
):
    """A trainer factory for `Solver`: PsTrainer over a client of `config` (in-process shard
    default)."""

    def make(net, rule, param):
        client = Client(
            config,
            shards=shards or LocalShards(config, num_workers=num_workers),
            worker_id=worker_id,
            num_workers=num_workers,
            xp=xp,
        )
        return PsTrainer(net, rule, param, client, train=train)

    make.resident = False
    return make
