"""`geeps-net time` (per-layer forward/backward milliseconds, Caffe's `caffe time`) and
`geeps-net device_query`: how fast a net runs here, and on what."""

from __future__ import annotations

import logging
import time

import numpy

from geeps_net.backend import array_module, gpu_available, set_threads
from geeps_net.cli import command, flag
from geeps_net.cli_flags import gpu_index, ps_flags, require_files, threads_flag
from geeps_net.commands import ps_trainer

log = logging.getLogger("geeps_net.cli")


def _time_flags(p) -> None:
    flag(p, "model", required=True, help="net prototxt")
    flag(p, "iterations", type=int, default=50)
    flag(p, "phase", default="TRAIN", choices=["TRAIN", "TEST"])
    flag(p, "level", type=int, default=0)
    flag(p, "stage", default="", help="comma-separated NetState stages")
    flag(p, "gpu", default=None)
    threads_flag(p)
    ps_flags(p)


@command("time", "benchmark model execution time", _time_flags)
def time_net(args) -> int:
    """Per-layer forward/backward milliseconds averaged over `iterations` (Caffe's `caffe time`).

    Through the PS (the default) an iteration is what training does: reads, forward, backward, an
    SGD update at rate 0 into the PS and the clock; with -no_ps, forward and backward only."""
    from geeps_net.net import Net

    require_files(args, "model", "ps_config")
    set_threads(args.threads)
    xp = array_module(gpu_index(args))
    stages = [s for s in args.stage.split(",") if s]
    net = Net(args.model, args.phase, level=args.level, stages=stages, xp=xp, resident=args.no_ps)
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
    trainer = ps_trainer(net, args, xp, train, create_update_rule(param), param)
    trainer.layer_seconds = seconds
    steps = iter(range(1 << 62))
    if train:
        return (lambda: trainer.step(next(steps), 0.0)), trainer
    return trainer.forward_pass, trainer


def _sync(xp) -> None:
    if xp is not numpy:  # pragma: no cover - GPU only
        xp.cuda.get_current_stream().synchronize()


# -- device_query ---------------------------------------------------------------------------------


def _device_flags(p) -> None:
    flag(p, "gpu", default="0")


@command("device_query", "show GPU diagnostic information", _device_flags)
def device_query(args) -> int:
    """Print the GPU's properties (CuPy), or say that none is available."""
    if not gpu_available():
        log.info("No CUDA device: CuPy is %s", "missing" if not _has_cupy() else "installed")
        return 1
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(gpu_index(args) or 0)
    for key in ("name", "totalGlobalMem", "multiProcessorCount", "clockRate", "major", "minor"):
        value = props[key].decode() if isinstance(props[key], bytes) else props[key]
        log.info("%s: %s", key, value)
    return 0


def _has_cupy() -> bool:
    from geeps_net import backend

    return backend.cupy is not None
