"""The training verbs of `geeps-net`, train and test, one plain function each (Caffe's
tools/caffe.cpp shape); timing.py has time and device_query, tools_cli.py the tools."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from pathlib import Path

import numpy

from geeps_net.backend import array_module, set_threads, to_host
from geeps_net.cli import command, flag
from geeps_net.cli_flags import gpu_index, ps_config, ps_flags, require_files, threads_flag
from geeps_net.errors import GeepsError, NetError, PrototxtError, SolverError

log = logging.getLogger("geeps_net.cli")

INLINE_NET = "<NetParameter>"  # the source path a Net gives a NetParameter without a file


# -- train ----------------------------------------------------------------------------------------


def _train_flags(p) -> None:
    flag(p, "solver", required=True, help="solver prototxt")
    flag(p, "weights", default="", help="comma-separated .caffemodel files to start from")
    flag(p, "snapshot", default="", help=".solverstate to resume from")
    flag(p, "gpu", default=None, help="GPU id (absent: CPU)")
    flag(p, "sigint_effect", default="stop", choices=["stop", "snapshot", "none"])
    flag(p, "sighup_effect", default="snapshot", choices=["stop", "snapshot", "none"])
    flag(p, "level", type=int, default=None, help="the train net's NetState level")
    flag(p, "stage", default="", help="comma-separated stages added to the train net's NetState")
    flag(p, "workers", type=int, default=1, help="worker processes (each also a server shard)")
    flag(p, "machinefile", default="", help="one host per line (worker i on line i)")
    flag(p, "worker_id", type=int, default=None, help="this process's worker id (from 0)")
    threads_flag(p)
    ps_flags(p)


@command("train", "train or fine-tune a model", _train_flags)
def train(args) -> int:
    """Train a net from a solver file, through the parameter server unless -no_ps; with several
    workers under -workers N, -machinefile F or mpirun/srun (geeps_net/distributed.py)."""
    from geeps_net import distributed

    if args.weights and args.snapshot:
        raise GeepsError(
            f"-weights {args.weights} and -snapshot {args.snapshot}: give one, not both "
            "(-snapshot resumes a run, -weights starts a new one from trained weights)"
        )
    require_files(args, "solver", "weights", "snapshot", "ps_config", "machinefile")
    if args.no_ps and args.ps_config:
        log.warning("-no_ps: the PS configuration in %s is not used", args.ps_config)
    config = None if args.no_ps else ps_config(args)
    role = distributed.resolve(args, config)
    config = distributed.with_servers(config, role, args.workers, args.num_servers is not None)
    if role is distributed.cluster.LAUNCH:
        return distributed.launch(args, config)
    xp = array_module(gpu_index(args))
    set_threads(args.threads)
    if role is not None:
        return distributed.run_worker(
            args, role, config, xp, lambda factory, **kw: _solve(args, xp, factory, **kw)
        )
    factory = None
    if not args.no_ps:
        from geeps_net.worker import ps_trainer_factory

        factory = ps_trainer_factory(config, xp=xp)
    return _solve(args, xp, factory)


def _solve(args, xp, factory, data_shard=(0, 1), is_root=True, prepare=None) -> int:
    """Build the Solver, load -weights / -snapshot, train. With several workers
    `prepare(solver, resume)` runs before the first iteration (after a restore)."""
    from geeps_net.solver import load_solver

    def train_state(param) -> None:  # as Caffe's train: -level and -stage set the train net's
        if args.level is not None:
            param.train_state.level = args.level
        param.train_state.stage.extend(s for s in args.stage.split(",") if s)

    with _naming_solver(args.solver):
        solver = load_solver(
            args.solver, edit=train_state, xp=xp, trainer_factory=factory,
            data_shard=data_shard, is_root=is_root,
        )  # fmt: skip
    try:
        if is_root:
            _check_snapshot_folder(args.solver, solver.snapshot_prefix())
        _install_signals(solver, args)  # stop/snapshot at the end of an iteration
        if args.weights:
            for path in args.weights.split(","):
                solver.load_weights(path)
        resume = args.snapshot or None
        if prepare is not None:
            if resume:
                solver.restore(resume)
            prepare(solver, resume)
            resume = None
        solver.solve(resume_file=resume)
    finally:
        solver.close()
    return 0


def _check_snapshot_folder(solver_path: str, prefix: str) -> None:
    """Caffe's CheckSnapshotWritePermissions: a snapshot folder that cannot be made or written
    fails now, not after the first `snapshot` iterations of training."""
    folder = Path(prefix).absolute().parent
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise SolverError(f"{solver_path}: snapshot_prefix {prefix}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SolverError(f"{solver_path}: snapshot_prefix {prefix}: cannot write in {existing}")


@contextlib.contextmanager
def _naming_solver(path: str):
    """Errors in the solver's own fields name the solver file; an inline net_param's errors
    name it too (the net there has no file of its own)."""
    try:
        yield
    except SolverError as e:
        message = str(e)
        raise SolverError(message if message.startswith(path) else f"{path}: {message}") from None
    except PrototxtError as e:
        if getattr(e, "unreadable", False) and not str(e).startswith(path):
            raise PrototxtError(f"{path}: net file {e}") from None
        raise
    except NetError as e:
        message = str(e)
        if message.startswith(INLINE_NET):
            raise type(e)(f"{path}: inline net{message[len(INLINE_NET) :]}") from None
        raise


def _install_signals(solver, args) -> None:
    """SIGINT/SIGHUP/SIGTERM ask the loop to stop or snapshot at the end of the iteration."""

    def handler_for(effect):
        def handle(signum, frame):
            if effect != "none":
                log.info("Received signal %d: %s requested", signum, effect)
                solver.requested_action = effect

        return handle

    signal.signal(signal.SIGINT, handler_for(args.sigint_effect))
    signal.signal(signal.SIGTERM, handler_for("stop"))
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, handler_for(args.sighup_effect))


# -- test -----------------------------------------------------------------------------------------


def _test_flags(p) -> None:
    flag(p, "model", required=True, help="net prototxt")
    flag(p, "weights", default="", help=".caffemodel with the trained weights")
    flag(p, "iterations", type=int, default=50)
    flag(p, "phase", default="TEST", choices=["TRAIN", "TEST"])
    flag(p, "level", type=int, default=0)
    flag(p, "stage", default="", help="comma-separated NetState stages")
    flag(p, "gpu", default=None)
    threads_flag(p)
    ps_flags(p)


def ps_trainer(net, args, xp, train: bool, rule=None, param=None):
    """A PsTrainer over an in-process shard for `net` (built with resident=False)."""
    from geeps_net.proto import caffe_pb2
    from geeps_net.worker import ps_trainer_factory

    param = param or caffe_pb2.SolverParameter()
    trainer = ps_trainer_factory(ps_config(args), xp=xp, train=train)(net, rule, param)
    return trainer


@command("test", "score a model", _test_flags)
def test(args) -> int:
    """Score a model: `iterations` forward passes, per-batch and mean outputs (Caffe's `caffe
    test`), through the parameter server unless -no_ps."""
    from tqdm import tqdm

    from geeps_net.net import Net
    from geeps_net.snapshot import match_weights, read_net_weights
    from geeps_net.solver import learnable_values

    require_files(args, "model", "weights", "ps_config")
    set_threads(args.threads)
    xp = array_module(gpu_index(args))
    stages = [s for s in args.stage.split(",") if s]
    resident = args.no_ps
    net = Net(args.model, args.phase, level=args.level, stages=stages, xp=xp, resident=resident)
    net.forward_only()
    trainer = None
    try:
        weights = {}
        if args.weights:
            wanted = {layer.name: [b.shape for b in layer.blobs] for layer in net.layers}
            weights = match_weights(read_net_weights(args.weights), wanted, args.weights)
        if resident:
            net.copy_from(weights, args.weights) if weights else None

            def run():
                outputs = net.forward()
                return net.loss, {k: to_host(v) for k, v in outputs.items()}
        else:
            trainer = ps_trainer(net, args, xp, train=False)
            if weights:
                trainer.load(params=learnable_values(net, weights))
            run = trainer.forward_pass
        _score(net, run, args.iterations, tqdm)
    finally:
        (trainer or net).close()
    return 0


def _score(net, run, iterations: int, tqdm) -> None:
    """Log each batch's outputs and the means, as `caffe test` does."""
    totals, loss = {}, 0.0
    for i in tqdm(range(iterations), desc="test", unit="batch", disable=None):
        batch_loss, outputs = run()
        loss += batch_loss
        for name, value in outputs.items():
            values = numpy.ravel(value)
            for v in values:
                log.info("Batch %d, %s = %g", i, name, v)
            totals[name] = totals.get(name, 0.0) + values.astype(numpy.float64)
    log.info("Loss: %g", loss / iterations)
    weights = {t.name: w for tops, ws in zip(net.tops, net.loss_weights) for t, w in zip(tops, ws)}
    for name, total in totals.items():
        for v in total / iterations:
            w = weights.get(name, 0.0)
            suffix = f" (* {w:g} = {w * v:g} loss)" if w else ""
            log.info("%s = %g%s", name, v, suffix)
