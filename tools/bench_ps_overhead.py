"""Throughput with the PS (unlimited budget) against no PS, measured side by side in one run.

    python tools/bench_ps_overhead.py [--nets lenet cifar10_quick] [--iters 30] [--repeats 3]

Each repeat times both trainers on the same net and data, alternating, so machine noise hits both;
prints images/s of each and `overhead <net> = X.X%` (target <= 3%).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_ps_common import make_solver, parse_args, time_iterations  # noqa: E402
from bench_train import NETS  # noqa: E402

from geeps_net.ps.config import Config  # noqa: E402


def main(argv=None) -> int:
    args = parse_args(argv, __doc__, iters=30, warmup=5)
    for name in args.nets:
        batch = NETS[name][1]
        seconds = {"no PS": [], "PS": []}
        for _ in range(args.repeats):
            for label, config in (("no PS", None), ("PS", Config())):
                solver = make_solver(name, config)
                try:
                    seconds[label].append(time_iterations(solver, args.iters, args.warmup))
                finally:
                    solver.close()
        rate = {k: batch / statistics.median(v) for k, v in seconds.items()}
        print(f"{name}: no PS {rate['no PS']:.0f} img/s, PS {rate['PS']:.0f} img/s")
        print(f"overhead {name} = {100 * (1 - rate['PS'] / rate['no PS']):.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
