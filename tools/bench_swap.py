"""Throughput under tight device budgets relative to an unlimited one, with swap traffic.

    python tools/bench_swap.py [--nets lenet cifar10_quick alexnet] [--fractions 1 0.5 0.35]

For each net: the unlimited footprint (every table and all local data resident), the smallest budget
the planner accepts (as a fraction of the footprint), then for each fraction the images/s relative
to the unlimited run and the bytes moved per iteration, measured against the plan's prediction. A
fraction below GeePS's double-buffered minimum (2 x peak) runs at mm_warning_level 0 (one peak, no
prefetch of the next op's data); one below even that minimum is raised to it (and says so).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_ps_common import make_solver, parse_args, time_iterations, unlimited_plan  # noqa: E402

from geeps_net.ps.config import Config  # noqa: E402

MIB = 2**20


def measure(name, budget, args, level=1):
    """(median s/iteration, stats) at `budget` bytes (0 = unlimited), `level` mm_warning_level."""
    solver = make_solver(name, Config(gpu_memory_capacity=budget, mm_warning_level=level))
    try:
        runs = [time_iterations(solver, args.iters, args.warmup) for _ in range(args.repeats)]
        return statistics.median(runs), solver.trainer.stats()
    finally:
        solver.close()


def main(argv=None) -> int:
    def fractions(parser):
        parser.add_argument("--fractions", nargs="+", type=float, default=[1.0, 0.5, 0.35])

    args = parse_args(argv, __doc__, iters=10, warmup=3, add=fractions)
    for name in args.nets:
        plan = unlimited_plan(name)
        full, smallest, least = plan.total_bytes, plan.min_budget, plan.min_budget_at(0)
        print(
            f"{name}: footprint {full / MIB:.1f} MiB, smallest budget {smallest / MIB:.1f} MiB "
            f"= {smallest / full:.2f} of it ({least / full:.2f} at mm_warning_level 0)"
        )
        base, _ = measure(name, 0, args)
        for fraction in args.fractions:
            budget = 0 if fraction >= 1 else max(int(fraction * full), least)
            level = 1 if not budget or budget >= smallest else 0
            raised = budget and budget != int(fraction * full)
            note = " (raised to the smallest)" if raised else ""
            note += " (mm_warning_level 0)" if level == 0 else ""
            seconds, s = measure(name, budget, args, level) if budget else (base, None)
            line = f"  budget {fraction:.0%}{note}: throughput ratio {base / seconds:.2f}"
            if s is not None:
                n = max(s["iterations"], 1)
                moved = (s["bytes_to_device"] + s["bytes_to_host"]) / n
                predicted = s["predicted_to_device"] + s["predicted_to_host"]
                error = abs(moved - predicted) / predicted if predicted else 0.0
                line += f", moved {moved / MIB:.2f} MiB/iter vs plan {predicted / MIB:.2f} "
                line += f"({100 * error:.1f}% off), stall {100 * s['stall_fraction']:.1f}%"
            print(line)
            print(f"ratio {name} {fraction:.0%} = {base / seconds:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
