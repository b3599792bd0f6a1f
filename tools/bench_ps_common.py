"""Shared by the PS benchmarks: a net's solver on fixed random data, timed through a trainer."""

from __future__ import annotations

import statistics
import time

from bench_train import bench_net_param, random_batch, solver_param

from geeps_net.ps.config import Config
from geeps_net.solver import Solver
from geeps_net.worker import ps_trainer_factory


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


def unlimited_plan(name: str, batch: int | None = None):
    """The plan at an unlimited budget: its footprint and the smallest budget it accepts."""
    solver = make_solver(name, Config(), batch)
    try:
        return solver.trainer.client.plan
    finally:
        solver.close()
