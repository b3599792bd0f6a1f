"""The verbs of `geeps-net`, one plain function each (Caffe's tools/caffe.cpp shape)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import time
from pathlib import Path

import numpy

from geeps_net.backend import array_module, gpu_available, set_threads, to_host
from geeps_net.cli import command, flag
from geeps_net.errors import GeepsError, NetError, PrototxtError, SolverError

log = logging.getLogger("geeps_net.cli")

INLINE_NET = "<NetParameter>"  # the source path a Net gives a NetParameter without a file


def _gpu(args):
    """-gpu 0 -> device 0; absent -> CPU. Caffe's "all" takes device 0 here (one device per
    worker)."""
    if args.gpu in (None, ""):
        return None
    return 0 if args.gpu == "all" else int(args.gpu.split(",")[0])


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "t", "yes"):
        return True
    if text.lower() in ("0", "false", "f", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _require_files(args, *names: str) -> None:
    """Every file flag given names an existing file (-weights: each of its comma-separated list):
    a mistyped path fails here, in one line, before any net is built or data is read."""
    for name in names:
        value = getattr(args, name, None) or ""
        for path in value.split(",") if name == "weights" else [value]:
            if path and not Path(path).is_file():
                what = "is a directory, not a file" if Path(path).is_dir() else "no such file"
                raise GeepsError(f"-{name} {path}: {what}")


def _ps_flags(p) -> None:
    """-ps_config FILE, -no_ps, and one flag per PsConfig field (overriding the file)."""
    from geeps_net.proto import geeps_pb2

    flag(p, "ps_config", default="", help="PS configuration file (geeps.PsConfig text)")
    flag(p, "no_ps", action="store_true", help="run without the parameter server (baseline)")
    group = p.add_argument_group("PS configuration (geeps.PsConfig fields)")
    types = {
        "TYPE_BOOL": _parse_bool,
        "TYPE_DOUBLE": float,
        "TYPE_FLOAT": float,
        "TYPE_STRING": str,
    }
    for field in geeps_pb2.PsConfig.DESCRIPTOR.fields:
        kind = _FIELD_TYPES.get(field.type, "TYPE_INT")
        if field.enum_type is not None:
            choices = [v.name for v in field.enum_type.values]
            flag(group, field.name, default=None, choices=choices)
        else:
            flag(group, field.name, default=None, type=types.get(kind, int), metavar="V")


_FIELD_TYPES = {8: "TYPE_BOOL", 1: "TYPE_DOUBLE", 2: "TYPE_FLOAT", 9: "TYPE_STRING"}


def _ps_config(args):
    """The PS config: -ps_config file (or defaults), then every PsConfig flag given."""
    from geeps_net.proto import geeps_pb2
    from geeps_net.ps.config import Config

    config = Config.load(args.ps_config) if args.ps_config else Config()
    names = [f.name for f in geeps_pb2.PsConfig.DESCRIPTOR.fields]
    given = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    flags = " ".join(f"-{name} {value}" for name, value in given.items())
    return config.overrides(source=f"flags {flags}", **given) if given else config


def _threads_flag(p) -> None:
    flag(p, "threads", type=_positive, default=None, help="BLAS threads (default: the library's)")


def _positive(text: str) -> int:
    """argparse type: an integer >= 1 (argparse names the flag when this raises)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return value


# -- train ----------------------------------------------------------------------------------------


def _train_flags(p) -> None:
    flag(p, "solver", required=True, help="solver prototxt")
    flag(p, "weights", default="", help="comma-separated .caffemodel files to start from")
    flag(p, "snapshot", default="", help=".solverstate to resume from")
    flag(p, "gpu", default=None, help="GPU id (absent: CPU)")
    flag(p, "sigint_effect", default="stop", choices=["stop", "snapshot", "none"])
    flag(p, "sighup_effect", default="snapshot", choices=["stop", "snapshot", "none"])
    flag(p, "workers", type=int, default=1, help="worker processes (each also a server shard)")
    flag(p, "machinefile", default="", help="one host per line (worker i on line i)")
    flag(p, "worker_id", type=int, default=None, help="this process's worker id (from 0)")
    _threads_flag(p)
    _ps_flags(p)


def train(args) -> int:
    """Train a net from a solver file, through the parameter server unless -no_ps; with several
    workers under -workers N, -machinefile F or mpirun/srun (geeps_net/distributed.py)."""
    from geeps_net import distributed

    if args.weights and args.snapshot:
        raise GeepsError(
            f"-weights {args.weights} and -snapshot {args.snapshot}: give one, not both "
            "(-snapshot resumes a run, -weights starts a new one from trained weights)"
        )
    _require_files(args, "solver", "weights", "snapshot", "ps_config", "machinefile")
    if args.no_ps and args.ps_config:
        log.warning("-no_ps: the PS configuration in %s is not used", args.ps_config)
    config = None if args.no_ps else _ps_config(args)
    role = distributed.resolve(args, config)
    config = distributed.with_servers(config, role, args.workers, args.num_servers is not None)
    if role is distributed.cluster.LAUNCH:
        return distributed.launch(args, config)
    xp = array_module(_gpu(args))
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

    with _naming_solver(args.solver):
        solver = load_solver(
            args.solver, xp=xp, trainer_factory=factory, data_shard=data_shard, is_root=is_root
        )
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


train.add_flags = _train_flags
command("train", "train or fine-tune a model")(train)


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
    _threads_flag(p)
    _ps_flags(p)


def _ps_trainer(net, args, xp, train: bool, rule=None, param=None):
    """A PsTrainer over an in-process shard for `net` (built with resident=False)."""
    from geeps_net.proto import caffe_pb2
    from geeps_net.worker import ps_trainer_factory

    param = param or caffe_pb2.SolverParameter()
    trainer = ps_trainer_factory(_ps_config(args), xp=xp, train=train)(net, rule, param)
    return trainer


def test(args) -> int:
    """Score a model: `iterations` forward passes, per-batch and mean outputs (Caffe's `caffe
    test`), through the parameter server unless -no_ps."""
    from tqdm import tqdm

    from geeps_net.net import Net
    from geeps_net.snapshot import match_weights, read_net_weights
    from geeps_net.solver import learnable_values

    _require_files(args, "model", "weights", "ps_config")
    set_threads(args.threads)
    xp = array_module(_gpu(args))
    stages = [s for s in args.stage.split(",") if s]
    resident = args.no_ps
    net = Net(args.model, args.phase, level=args.level, stages=stages, xp=xp, resident=resident)
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
            trainer = _ps_trainer(net, args, xp, train=False)
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


test.add_flags = _test_flags
command("test", "score a model")(test)


# -- time -----------------------------------------------------------------------------------------


def _time_flags(p) -> None:
    flag(p, "model", required=True, help="net prototxt")
    flag(p, "iterations", type=int, default=50)
    flag(p, "phase", default="TRAIN", choices=["TRAIN", "TEST"])
    flag(p, "gpu", default=None)
    _threads_flag(p)
    _ps_flags(p)


def time_net(args) -> int:
    """Per-layer forward/backward milliseconds averaged over `iterations` (Caffe's `caffe time`).

    Through the PS (the default) an iteration is what training does: reads, forward, backward, an
    SGD update at rate 0 into the PS and the clock; with -no_ps, forward and backward only."""
    from geeps_net.net import Net

    _require_files(args, "model", "ps_config")
    set_threads(args.threads)
    xp = array_module(_gpu(args))
    net = Net(args.model, args.phase, xp=xp, resident=args.no_ps)
    n = len(net.layers)
    seconds = [numpy.zeros(n), numpy.zeros(n)]
    if args.no_ps:
        runner, closer = _resident_iteration(net, xp, seconds), net
    else:
        runner, closer = _ps_iteration(net, args, xp, seconds)
    try:
        log.info("Performing Forward and Backward once (warm-up)")
        runner()
        for part in seconds:
            part[...] = 0
        total = time.perf_counter()
        for _ in range(args.iterations):
            runner()
        total = (time.perf_counter() - total) * 1e3
    finally:
        closer.close()
    forward_ms, backward_ms = (1e3 * part / args.iterations for part in seconds)
    log.info("*** Benchmark begins ***")
    log.info("Average time per layer: ")
    for i, layer in enumerate(net.layers):
        log.info("%16s\tforward: %g ms.", layer.name, forward_ms[i])
        log.info("%16s\tbackward: %g ms.", layer.name, backward_ms[i])
    log.info("Average Forward pass: %g ms.", forward_ms.sum())
    log.info("Average Backward pass: %g ms.", backward_ms.sum())
    log.info("Average Forward-Backward: %g ms.", total / args.iterations)
    log.info("Total Time: %g ms.", total)
    log.info("*** Benchmark ends ***")
    return 0


def _resident_iteration(net, xp, seconds):
    def run():
        for i in range(len(net.layers)):
            t = time.perf_counter()
            net.forward_layer(i)
            _sync(xp)
            seconds[0][i] += time.perf_counter() - t
        for i in reversed(range(len(net.layers))):
            if net.layer_need_backward[i]:
                t = time.perf_counter()
                net.backward_layer(i)
                _sync(xp)
                seconds[1][i] += time.perf_counter() - t

    return run


def _ps_iteration(net, args, xp, seconds):
    """One PS training iteration at learning rate 0 (the numbers do not change), timed per layer."""
    from geeps_net.proto import caffe_pb2
    from geeps_net.solvers import create_update_rule

    param = caffe_pb2.SolverParameter(type="SGD", base_lr=0.0, lr_policy="fixed")
    train = net.phase == caffe_pb2.TRAIN
    trainer = _ps_trainer(net, args, xp, train, create_update_rule(param), param)
    trainer.layer_seconds = seconds
    steps = iter(range(1 << 62))
    if train:
        return (lambda: trainer.step(next(steps), 0.0)), trainer
    return trainer.forward_pass, trainer


def _sync(xp) -> None:
    if xp is not numpy:  # pragma: no cover - GPU only
        xp.cuda.get_current_stream().synchronize()


time_net.add_flags = _time_flags
command("time", "benchmark model execution time")(time_net)


# -- device_query ---------------------------------------------------------------------------------


def _device_flags(p) -> None:
    flag(p, "gpu", default="0")


def device_query(args) -> int:
    """Print the GPU's properties (CuPy), or say that none is available."""
    if not gpu_available():
        log.info("No CUDA device: CuPy is %s", "missing" if not _has_cupy() else "installed")
        return 1
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(_gpu(args) or 0)
    for key in ("name", "totalGlobalMem", "multiProcessorCount", "clockRate", "major", "minor"):
        value = props[key].decode() if isinstance(props[key], bytes) else props[key]
        log.info("%s: %s", key, value)
    return 0


def _has_cupy() -> bool:
    from geeps_net import backend

    return backend.cupy is not None


device_query.add_flags = _device_flags
command("device_query", "show GPU diagnostic information")(device_query)
