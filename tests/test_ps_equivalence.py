"""The invariant DESIGN §4 pins down: for a fixed seed, training with no PS, with the PS at an
unlimited budget, at half the footprint and at the smallest budget the planner accepts (with double
buffering, and at mm_warning_level 0 without) gives bit-identical parameters.

Data layers are swapped for DummyData drawing from the layer's seeded generator, so every run sees
the same batches without a database.
"""

from pathlib import Path

import numpy
import pytest

from geeps_net.prototxt import read_net, read_solver
from geeps_net.ps.config import Config
from geeps_net.solver import Solver
from geeps_net.worker import ps_trainer_factory

ROOT = Path(__file__).resolve().parents[1]
NETS = {  # the stock batch sizes: the footprint's mix of weights and activations is the real one
    "lenet": (ROOT / "models/lenet/train_val.prototxt", (64, 1, 28, 28)),
    "cifar10_quick": (ROOT / "models/cifar10_quick/train_val.prototxt", (100, 3, 32, 32)),
}
ITERATIONS = 50


def synthetic(name):
    """The model's TRAIN net with its Data layers replaced by seeded DummyData (images, labels)."""
    path, shape = NETS[name]
    source = read_net(path)
    for layer in source.param.layer:
        if layer.type == "Data":
            layer.type = "DummyData"
            for field in ("data_param", "transform_param"):
                layer.ClearField(field)
            p = layer.dummy_data_param
            p.shape.add().dim.extend(shape)
            p.shape.add().dim.extend(shape[:1])
            p.data_filler.add(type="gaussian", std=1.0)
            p.data_filler.add(type="uniform", min=0.0, max=9.999)  # labels: cast to int
    return source.param


def solver_param(name):
    sp = read_solver(ROOT / "solvers" / f"{name}_solver.prototxt")
    sp.ClearField("net")
    sp.net_param.CopyFrom(synthetic(name))
    sp.ClearField("test_iter")
    sp.test_interval = 0
    sp.display = 0
    sp.snapshot = 0
    sp.random_seed = 7
    sp.max_iter = ITERATIONS
    return sp


def train(name, config=None):
    """Final parameters and the client's stats (None without PS) after ITERATIONS iterations."""
    factory = None if config is None else ps_trainer_factory(config)
    solver = Solver(solver_param(name), trainer_factory=factory)
    try:
        solver.step(ITERATIONS)
        stats = solver.trainer.stats() if config is not None else None
        return solver.trainer.param_arrays(), stats, solver.trainer
    finally:
        solver.close()


def footprint(trainer) -> int:
    """Bytes of everything the PS manages for this net at an unlimited budget."""
    return trainer.client.plan.arena_size


@pytest.mark.parametrize("name", [n for n, (p, _) in NETS.items() if p.exists()])
def test_bit_identical_across_budgets(name):
    reference, _, _ = train(name)
    unlimited, stats, trainer = train(name, Config())
    full = footprint(trainer)
    smallest_budget = trainer.client.plan.min_budget
    tightest = trainer.client.plan.min_budget_at(0)
    # Half the footprint: below GeePS's access pool of twice the peak for these nets (LeNet's ip1
    # dominates it), so mm_warning_level 0 (a pool between 1 and 2 x peak, no double buffering).
    middle = full // 2
    assert tightest <= middle
    level = 1 if middle >= smallest_budget else 0
    half, half_stats, _ = train(name, Config(gpu_memory_capacity=middle, mm_warning_level=level))
    smallest, small_stats, _ = train(name, Config(gpu_memory_capacity=smallest_budget))
    least, least_stats, _ = train(name, Config(gpu_memory_capacity=tightest, mm_warning_level=0))
    runs = (("unlimited", unlimited), ("half", half), ("smallest", smallest), ("level 0", least))
    for run, params in runs:
        for i, (want, got) in enumerate(zip(reference, params, strict=True)):
            assert numpy.array_equal(want, got), f"{name} {run}: learnable {i} differs"
    budgets = ((middle, half_stats), (smallest_budget, small_stats), (tightest, least_stats))
    for budget, s in budgets:
        assert s["arena_high_water"] <= budget
        assert s["bytes_to_device"] > 0  # it really swapped
