"""Shared by the PS benchmarks: a net's solver on fixed random data, timed through a trainer."""

from __future__ import annotations

import argparse
import statistics
import time

from bench_train import NETS, bench_net_param, random_batch, solver_param

from geeps_net.backend import set_threads
from geeps_net.ps.config import Config
from geeps_net.solver import Solver
from geeps_net.worker import ps_trainer_factory


def parse_args(argv, doc: str, iters: int, warmup: int, add=None):
    """The PS benchmarks' shared flags (--nets, --iters, --warmup, --repeats, --threads), with
    `add(parser)` for a benchmark's own; BLAS threads are set as --threads says."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--nets", nargs="+", default=["lenet", "cifar10_quick"], choices=NETS)
    if add is not None:
        add(parser)
    parser.add_argument("--iters", type=int, default=iters)
    parser.add_argument("--warmup", type=int, default=warmup)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    return args


def make_solver(name: str, config: Config | None, batch: int | None = None) -> Solver:
    """The net's TRAIN solver fed one random batch; through the PS when `config` is given."""
    factory = None if config is None else ps_trainer_factory(config)
    solver = Solver(solver_param(bench_net_param(name, batch)), trainer_factory=factory)
    images, labels = random_batch(name, batch)
    solver.trainer.feed("data", images)
    solver.trainer.feed("label", labels)
    return solver


def time_iterations(solver: Solver, iters: int, warmup: int) -> float:
    """Median seconds per iteration after `warmup` untimed ones."""
    solver.step(warmup)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        solver.step(1)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def interleaved_seconds(
    solvers: dict[str, Solver], rounds: int, iters: int, warmup: int
) -> dict[str, list[float]]:
    """Mean seconds per iteration of each solver in each of `rounds` rounds of `iters`
    iterations. The solvers take turns, in reversed order every other round (A B, B A, ...), so
    that drift and other load on the shared machine hit each alike; compare them round by round.
    """
    for solver in solvers.values():
        solver.step(warmup)
    seconds = {label: [] for label in solvers}
    order = list(solvers)
    for r in range(rounds):
        for label in order if r % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            solvers[label].step(iters)
            seconds[label].append((time.perf_counter() - start) / iters)
    return seconds


def paired_ratio(numerator: list[float], denominator: list[float]) -> tuple[float, float, float]:
    """Median and quartiles of the round-by-round ratios numerator[r] / denominator[r]."""
    ratios = sorted(a / b for a, b in zip(numerator, denominator, strict=True))
    if len(ratios) < 2:
        return ratios[0], ratios[0], ratios[0]
    low, _, high = statistics.quantiles(ratios, n=4)
    return statistics.median(ratios), low, high


def unlimited_plan(name: str, batch: int | None = None):
    """The plan at an unlimited budget: its footprint and the smallest budget it accepts."""
    solver = make_solver(name, Config(), batch)
    try:
        return solver.trainer.client.plan
    finally:
        solver.close()
