"""Soak test: run a multi-worker training job for a while, sampling memory and throughput, and print
how much each grew after the warm-up (a leak shows as steady RSS growth).

    python tools/soak.py --seconds 600 [--workers 2] [--solver solvers/lenet_solver.prototxt]

The job is `geeps-net train -solver S -workers N` in its own process group; every --interval seconds
the total RSS of the launcher and all its descendants is read from /proc, and throughput from the
job's `Iteration N (X iter/s ...)` lines. At the end the whole group is stopped.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ITERS = re.compile(r"Iteration \d+ \(([\d.e+-]+) iter/s")


def descendants(pid: int) -> list[int]:
    """pid and every process below it (Linux /proc)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo.extend(int(c) for c in (task / "children").read_text().split())
            except OSError:
                pass
    return out


def rss_mib(pids: list[int]) -> float:
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--warmup", type=float, default=None, help="default: a fifth of --seconds")
    parser.add_argument("--interval", type=float, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--solver", default="solvers/lenet_solver.prototxt")
    parser.add_argument("extra", nargs="*", help="more `geeps-net train` flags")
    args = parser.parse_args(argv)
    warmup = args.seconds / 5 if args.warmup is None else args.warmup
    cmd = [sys.executable, "-m", "geeps_net", "train", "-solver", args.solver,
           "-workers", str(args.workers), *args.extra]  # fmt: skip
    job = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, start_new_session=True)
    rates: list[tuple[float, float]] = []
    start = time.monotonic()

    def read_log():
        for line in job.stderr:
            if m := ITERS.search(line):
                rates.append((time.monotonic() - start, float(m.group(1))))

    reader = threading.Thread(target=read_log, name="soak-log")
    reader.start()
    samples = []
    try:
        while time.monotonic() - start < args.seconds and job.poll() is None:
            time.sleep(args.interval)
            samples.append((time.monotonic() - start, rss_mib(descendants(job.pid))))
            print(f"{samples[-1][0]:7.1f} s  RSS {samples[-1][1]:8.1f} MiB", flush=True)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGTERM)
        try:
            job.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait(timeout=30)
        reader.join(timeout=30)
    after = [rss for t, rss in samples if t >= warmup]
    speed = [r for t, r in rates if t >= warmup and r > 0]
    if len(after) < 2:
        print("soak: too few samples after the warm-up; run longer", file=sys.stderr)
        return 1
    growth = after[-1] - after[0]
    hours = (samples[-1][0] - warmup) / 3600 or 1e-9
    print(f"RSS after warm-up: {after[0]:.1f} -> {after[-1]:.1f} MiB "
          f"(growth {growth:+.1f} MiB = {100 * growth / after[0]:+.2f}%, "
          f"{growth / hours:+.1f} MiB/h)")  # fmt: skip
    if speed:
        half = len(speed) // 2 or 1
        first, last = sum(speed[:half]) / half, sum(speed[half:]) / max(len(speed) - half, 1)
        print(f"throughput after warm-up: {first:.1f} -> {last:.1f} iter/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
