"""Throughput with the PS (unlimited budget) against no PS, measured side by side in one run.

    python tools/bench_ps_overhead.py [--nets lenet cifar10_quick] [--rounds 20] [--iters 10]

Both trainers of a net live in one process on the same net and data and take turns, --iters
iterations each per round, in alternating order (bench_ps_common.interleaved_seconds), so that the
shared machine's drift and other jobs hit both alike. The overhead is taken round by round (PS
time / no-PS time - 1); printed: the median with its quartiles, images/s of each, and
`overhead <net> = X.X%` (target <= 3%). A figure from separate runs moved by more than the target
itself on this machine; paired rounds are what make a 3% figure meaningful.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_ps_common import interleaved_seconds, make_solver, paired_ratio, parse_args  # noqa: E402
from bench_train import NETS  # noqa: E402

from geeps_net.ps.config import Config  # noqa: E402


def main(argv=None) -> int:
    def rounds(parser):
        parser.add_argument("--rounds", type=int, default=20, help="turns of each trainer")

    args = parse_args(argv, __doc__, iters=10, warmup=5, add=rounds)
    for name in args.nets:
        batch = NETS[name][1]
        solvers = {"no PS": make_solver(name, None), "PS": make_solver(name, Config())}
        try:
            seconds = interleaved_seconds(solvers, args.rounds, args.iters, args.warmup)
        finally:
            for solver in solvers.values():
                solver.close()
        ratio, low, high = paired_ratio(seconds["PS"], seconds["no PS"])
        rate = {k: batch / statistics.median(v) for k, v in seconds.items()}
        print(
            f"{name}: no PS {rate['no PS']:.0f} img/s, PS {rate['PS']:.0f} img/s; "
            f"{args.rounds} paired rounds of {args.iters} iterations, overhead quartiles "
            f"{100 * (low - 1):.1f}% .. {100 * (high - 1):.1f}%"
        )
        print(f"overhead {name} = {100 * (ratio - 1):.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
