"""The solver loop (Caffe's Solver::Step/Solve): test, display, update, snapshot, resume.

The per-iteration work is done by a *trainer*: `worker.PsTrainer` (through the parameter server, the
default) or `resident.ResidentTrainer` (no PS: every blob resident, Caffe's own order). Both compute
the same numbers; tests pin them down as bit-identical.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from pathlib import Path

import numpy

from geeps_net import checkpoint
from geeps_net.backend import to_host
from geeps_net.errors import SolverError
from geeps_net.net import Net
from geeps_net.proto import caffe_pb2
from geeps_net.prototxt import read_net, read_solver
from geeps_net.resident import ResidentTrainer
from geeps_net.solvers import LrState, create_update_rule, learning_rate

log = logging.getLogger(__name__)


def resolve_path(path: str, solver_dir: Path) -> str:
    """Caffe resolves paths from the working directory; fall back to the solver file's folder."""
    if Path(path).exists() or Path(path).is_absolute():
        return path
    candidate = solver_dir / path
    return str(candidate) if candidate.exists() else path


def weights_by_layer(net: Net, arrays) -> dict[str, list]:
    """Layer name -> arrays of its learnable blobs, from arrays given in `net.learnable` order."""
    by_blob = {id(p.blob): a for p, a in zip(net.learnable, arrays)}
    return {
        layer.name: [by_blob[id(b)] for b in layer.blobs] for layer in net.layers if layer.blobs
    }


def learnable_values(net: Net, weights: dict) -> list:
    """Arrays for `net.learnable` from layer name -> arrays (None where the layer is absent)."""
    out = []
    for p in net.learnable:
        arrays = weights.get(net.layers[p.layer_index].name)
        out.append(arrays[p.param_index] if arrays else None)
    return out


class Solver:
    """Caffe's Solver: builds the train and test nets from a SolverParameter and runs the loop."""

    def __init__(
        self,
        param: caffe_pb2.SolverParameter,
        *,
        solver_dir=".",
        xp=numpy,
        trainer_factory=None,
        data_shard=(0, 1),
        is_root: bool = True,
        solver_file=None,
    ) -> None:
        """`trainer_factory(net, rule, param)` builds the trainer (default: ResidentTrainer);
        `solver_file`, the prototxt `param` came from, names snapshots without a prefix."""
        self.param, self.xp, self.is_root = param, xp, is_root
        self.solver_file = solver_file
        self.worker, self.num_workers = data_shard
        # more parts of a snapshot: each called with this worker's .solverstate path (SERVER rule)
        self.snapshot_hooks: list = []
        self.solver_dir = Path(solver_dir)
        self.rule = create_update_rule(param)
        self.lr_state = LrState()
        learning_rate(param, 0, LrState())  # an unknown lr_policy fails here, before any work
        seed = param.random_seed if param.random_seed >= 0 else None
        factory = trainer_factory or ResidentTrainer
        self.net = self._train_net(seed, data_shard, getattr(factory, "resident", True))
        self.test_nets = self._test_nets(seed)
        self.trainer = factory(self.net, self.rule, param)
        self.iter = 0
        self.losses: deque[float] = deque(maxlen=max(param.average_loss, 1))
        self.smoothed_loss = 0.0
        self.requested_action = None  # set by signal handlers: "stop" or "snapshot"
        self.stopped = False

    # -- building -------------------------------------------------------------------------------

    def _net_source(self, file_field: str, param_field: str):
        p = self.param
        if p.HasField(param_field):
            return getattr(p, param_field)
        if p.HasField(file_field) and getattr(p, file_field):
            return read_net(resolve_path(getattr(p, file_field), self.solver_dir))
        return None

    def _train_net(self, seed, data_shard, resident: bool) -> Net:
        sources = [
            self._net_source("train_net", "train_net_param"),
            self._net_source("net", "net_param"),
        ]
        given = [s for s in sources if s is not None]
        if len(given) != 1:
            raise SolverError(
                "the solver must name exactly one of train_net, train_net_param, net, net_param"
            )
        state = self.param.train_state
        return Net(
            given[0], caffe_pb2.TRAIN, level=state.level, stages=state.stage, seed=seed,
            xp=self.xp, resident=resident, data_shard=data_shard,
        )  # fmt: skip

    def _test_nets(self, seed) -> list[Net]:
        p = self.param
        sources = [read_net(resolve_path(f, self.solver_dir)) for f in p.test_net]
        sources += list(p.test_net_param)
        generic = self._net_source("net", "net_param")
        if generic is not None:
            sources += [generic] * (len(p.test_iter) - len(sources))
        if len(sources) != len(p.test_iter):
            raise SolverError(f"{len(p.test_iter)} test_iter values for {len(sources)} test net(s)")
        if p.test_state and len(p.test_state) != len(sources):
            raise SolverError(
                f"{len(p.test_state)} test_state entries for {len(sources)} test nets"
            )
        nets = []
        for i, source in enumerate(sources if self.is_root else []):
            state = p.test_state[i] if p.test_state else caffe_pb2.NetState()
            net = Net(
                source, caffe_pb2.TEST, level=state.level, stages=state.stage, seed=seed,
                xp=self.xp,
            )  # fmt: skip
            nets.append(net.forward_only())  # tested, never trained
        return nets

    # -- the loop -------------------------------------------------------------------------------

    def rate(self) -> float:
        return learning_rate(self.param, self.iter, self.lr_state)

    def step(self, iters: int) -> None:
        """Caffe's Solver::Step: `iters` iterations with tests, display and snapshots."""
        p, start, stop = self.param, self.iter, self.iter + iters
        tic, tic_iter = time.perf_counter(), self.iter
        while self.iter < stop:
            if p.test_interval and self.iter % p.test_interval == 0:
                if self.iter > 0 or p.test_initialization:
                    self.test_all()
            display = p.display and self.iter % p.display == 0
            rate = self.rate()
            loss = self.trainer.step(self.iter, rate)
            self._smooth(loss, start)
            if display:
                lapse = time.perf_counter() - tic
                per_s = (
                    (self.iter - tic_iter) / lapse if lapse > 0 and self.iter > tic_iter else 0.0
                )
                log.info(
                    "Iteration %d (%g iter/s, %.3gs/%d iters), loss = %g",
                    self.iter, per_s, lapse, p.display, self.smoothed_loss,
                )  # fmt: skip
                self._log_outputs("Train", self.trainer.outputs(), self.net)
                log.info("Iteration %d, lr = %g", self.iter, rate)
                self._log_ps_stats()
                tic, tic_iter = time.perf_counter(), self.iter
            self.iter += 1
            if p.snapshot and self.iter % p.snapshot == 0:
                self.snapshot()
            actions = self._actions()
            if "snapshot" in actions:
                self.snapshot()
            if "stop" in actions:
                self.stopped = True
                break

    def _actions(self) -> list[str]:
        """What a signal asked for, done now: at once in one process; with several workers at a
        clock the whole job agrees on (worker 0 decides, geeps_net/control.py)."""
        action, self.requested_action = self.requested_action, None
        if self.num_workers == 1:
            return [action] if action else []
        if action:
            self.trainer.request(action)
        return self.trainer.agreed_actions()

    def solve(self, resume_file=None) -> None:
        """Caffe's Solver::Solve: optional restore, max_iter iterations, final snapshot and test."""
        p = self.param
        log.info("Solving %s", self.net.name)
        log.info("Learning Rate Policy: %s", p.lr_policy or "fixed")
        if resume_file:
            self.restore(resume_file)
        self.step(p.max_iter - self.iter)
        stopped = self.stopped
        if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot):
            self.snapshot()
        if stopped:
            log.info("Optimization stopped early.")
            return
        if p.display and self.iter % p.display == 0:
            log.info("Iteration %d, loss = %g", self.iter, self.smoothed_loss)
        if p.test_interval and self.iter % p.test_interval == 0:
            self.test_all()
        log.info("Optimization Done.")

    def _log_ps_stats(self) -> None:
        """One line of PS figures per display: stall fraction, waits, bytes moved per iteration."""
        stats = getattr(self.trainer, "stats", None)
        if stats is None:
            return
        s = stats()
        n = max(s.get("iterations", 0), 1)
        log.info(
            "PS: stall %.1f%%, read wait %.3g ms/iter, %.3g MiB/iter to device, "
            "%.3g MiB/iter to host, arena high water %.3g MiB",
            100 * s.get("stall_fraction", 0.0), 1e3 * s.get("read_wait_s", 0.0) / n,
            s.get("bytes_to_device", 0) / n / 2**20, s.get("bytes_to_host", 0) / n / 2**20,
            s.get("arena_high_water", 0) / 2**20,
        )  # fmt: skip

    def _smooth(self, loss: float, start: int) -> None:
        self.losses.append(loss)
        self.smoothed_loss = sum(self.losses) / len(self.losses)

    def _log_outputs(self, kind: str, outputs: dict, net: Net, scale: float = 1.0) -> None:
        index = 0
        weights = {
            t.name: w for tops, ws in zip(net.tops, net.loss_weights) for t, w in zip(tops, ws)
        }
        for name, values in outputs.items():
            for value in numpy.ravel(values):
                value = float(value) * scale
                weight = weights.get(name, 0.0)
                suffix = f" (* {weight:g} = {weight * value:g} loss)" if weight else ""
                log.info("    %s net output #%d: %s = %g%s", kind, index, name, value, suffix)
                index += 1

    # -- testing --------------------------------------------------------------------------------

    def test_all(self) -> list[dict]:
        """Run every test net for its test_iter batches; log and return the mean outputs."""
        return [self.test(i) for i in range(len(self.test_nets))]

    def test(self, index: int) -> dict:
        """Caffe's Solver::Test on test net `index` with the current weights."""
        net, iterations = self.test_nets[index], self.param.test_iter[index]
        log.info("Iteration %d, Testing net (#%d)", self.iter, index)
        self.share_weights(net)
        totals, loss = {}, 0.0
        for _ in range(iterations):
            outputs = net.forward()
            loss += net.loss
            for name, value in outputs.items():
                totals[name] = totals.get(name, 0.0) + to_host(value).astype(numpy.float64)
        if self.param.test_compute_loss:
            log.info("Test loss: %g", loss / max(iterations, 1))
        means = {name: total / max(iterations, 1) for name, total in totals.items()}
        self._log_outputs("Test", means, net)
        return means

    def share_weights(self, net: Net) -> None:
        """Copy the trainer's current weights into `net` by layer name (ShareTrainedLayersWith)."""
        weights = weights_by_layer(self.net, self.trainer.param_arrays())
        for layer in net.layers:
            for blob, value in zip(layer.blobs, weights.get(layer.name, [])):
                if blob.shape != value.shape:
                    raise SolverError(
                        f'test net layer "{layer.name}": weights {value.shape} vs {blob.shape}'
                    )
                blob.data[...] = net.xp.asarray(value)

    # -- snapshots ------------------------------------------------------------------------------

    def snapshot_prefix(self) -> str:
        """Where snapshots go, as Caffe after 1.0 reads snapshot_prefix: empty means the solver
        file's path without its extension; a folder means the solver's name inside it ("snapshot"
        stands in for the name of a solver that came from no file)."""
        prefix = self.param.snapshot_prefix
        stem = Path(self.solver_file).stem if self.solver_file else "snapshot"
        if not prefix:
            return str(self.solver_dir / stem)
        if Path(prefix).is_dir():
            return str(Path(prefix) / stem)
        return prefix

    def snapshot(self) -> tuple[str, str]:
        """Write <prefix>_iter_<N>.caffemodel and .solverstate (temp file, then rename); with
        several workers, each writes its own part of a snapshot consistent at this clock
        (geeps_net/checkpoint.py)."""
        from geeps_net.snapshot import write_solverstate

        hdf5 = self.param.snapshot_format == caffe_pb2.SolverParameter.HDF5
        ext = ".h5" if hdf5 else ""
        base = f"{self.snapshot_prefix()}_iter_{self.iter}"
        Path(base).parent.mkdir(parents=True, exist_ok=True)
        model = f"{base}.caffemodel{ext}"
        state = checkpoint.worker_state_path(f"{base}.solverstate{ext}", self.worker)
        if self.is_root:
            self._write_model(model)  # param_arrays settles: every worker's earlier updates are in
        elif self.num_workers > 1:
            self.trainer.settle()  # the same wait: our shards' SERVER history is then at this clock
        write_solverstate(
            state, self.iter, model, self.trainer.history_arrays(), self.lr_state.current_step
        )
        content = checkpoint.run_state(self.net, self.iter, self.losses, self.num_workers)
        checkpoint.write_run_state(state, content)
        for hook in self.snapshot_hooks:
            hook(state)
        log.info("Snapshotting solver state to binary proto file %s", state)
        return model, state

    def _write_model(self, model: str) -> None:
        from geeps_net.snapshot import write_caffemodel

        weights = weights_by_layer(self.net, self.trainer.param_arrays())
        write_caffemodel(model, self.net.name, self.net.model_layers(weights))
        log.info("Snapshotting to binary proto file %s", model)

    def restore(self, path) -> None:
        """Resume from a .solverstate: its iteration, history, and the .caffemodel it names. With
        several workers `path` is worker 0's file and each worker reads its own beside it."""
        from geeps_net.snapshot import read_solverstate

        content = checkpoint.read_run_state(path, self.num_workers)
        path = checkpoint.worker_state_path(path, self.worker)
        if not Path(path).exists():
            raise SolverError(f"{path}: no such file (the snapshot is incomplete)")
        it, learned_net, history, current_step = read_solverstate(path)
        if learned_net:
            model = resolve_path(learned_net, Path(path).parent)
            if not Path(model).exists():
                model = str(Path(path).parent / Path(learned_net).name)
            self.load_weights(model)
        expected = len(self.net.learnable) * self.rule.num_history
        if len(history) != expected:
            raise SolverError(f"{path}: {len(history)} history blobs, the solver needs {expected}")
        self.trainer.load(history=history)
        self.iter, self.lr_state.current_step = it, current_step
        if self.worker:
            content = checkpoint.read_run_state(path, self.num_workers)
        if content is not None:
            self.losses.extend(checkpoint.restore_run_state(self.net, content))
        else:
            log.warning(
                "%s: no %s beside it: data order and random draws restart",
                path, checkpoint.RUN_STATE,
            )  # fmt: skip
        log.info("Restored solver state from %s at iteration %d", path, it)

    def load_weights(self, path) -> None:
        """Fine-tune start: copy a .caffemodel's blobs into the trainer by layer name."""
        from geeps_net.snapshot import match_weights, read_net_weights

        wanted = {layer.name: [b.shape for b in layer.blobs] for layer in self.net.layers}
        weights = match_weights(read_net_weights(path), wanted, str(path))
        self.trainer.load(params=self._learnable_order(weights))

    def _learnable_order(self, weights: dict) -> list:
        return learnable_values(self.net, weights)

    def close(self) -> None:
        self.trainer.close()
        for net in self.test_nets:
            net.close()


def load_solver(path, edit=None, **kwargs) -> Solver:
    """A Solver from a solver prototxt file; `edit(param)` may change the SolverParameter before
    the nets are built (the command line's -level and -stage do)."""
    param = read_solver(path)
    if edit is not None:
        edit(param)
    return Solver(param, solver_dir=Path(path).parent, solver_file=path, **kwargs)
