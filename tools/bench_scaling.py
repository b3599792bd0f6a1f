"""Training throughput (images/s) with 1 and N worker processes over the PS, and the scaling.

    python tools/bench_scaling.py                               # lenet, cifar10_quick; 1 vs 2
    python tools/bench_scaling.py --nets lenet --workers 1 2 4 --iters 40 --repeats 3

Each worker is a process with one BLAS/OpenMP thread (OMP/OPENBLAS/MKL_NUM_THREADS=1 and
threadpoolctl), training the net's TRAIN phase with its Data layer replaced by an Input of random
images (tools/bench_train.py's nets and batches, per worker) through the PS: one worker on an
in-process shard, N workers each hosting a shard (geeps_net/distributed.py's layout: its own
shard over inproc://, the others' over TCP loopback), BSP, update rule AVERAGE. Throughput = all
images of the timed iterations / the slowest worker's time; the median of --repeats runs is
printed with the CPU time per iteration of a worker's main thread and of its other threads (PS
communication, shard server, reclaimer, ZeroMQ I/O: what the PS costs a core, a figure that other
load on the machine hardly moves), then `scaling <net> <N> workers = X.XXx` against 1 worker.
On a machine with fewer cores than workers the workers share cores: the figure says so.

What the machine itself allows is measured in the same run: N lone workers at once (each on its
own in-process shard, no traffic between them) share its cores, caches and memory bandwidth as
the N workers of one job do, so `ceiling <net> <N> workers = X.XXx` (their images/s against one
worker's) bounds the scaling any PS could reach here; `efficiency` is scaling / ceiling, the
part the PS's own work and waits leave of it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

ONE_THREAD = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def worker(args) -> dict:
    """One worker process: build, warm up, time --iters iterations; images and seconds."""
    from bench_train import bench_net_param, random_batch, solver_param

    from geeps_net.backend import set_threads
    from geeps_net.ps.config import Config
    from geeps_net.solver import Solver
    from geeps_net.worker import ps_trainer_factory

    set_threads(1)
    i, n = args.worker, args.of
    config = Config(update_rule="AVERAGE", num_servers=n, base_port=args.base, deadline_s=120.0)
    shards, servers = None, []
    if n > 1:  # as run_worker: our own shard over inproc://, the others' over TCP
        import zmq

        from geeps_net.distributed import start_servers
        from geeps_net.ps import cluster
        from geeps_net.ps.remote import RemoteShards

        ctx = zmq.Context()
        role = cluster.Role(i, n, ("127.0.0.1",) * n)
        servers = start_servers(role, config, None, ctx)
        shards = RemoteShards(config, i, n, role.server_urls(config, inproc=True), ctx=ctx)
    factory = ps_trainer_factory(config, worker_id=i, num_workers=n, shards=shards)
    solver = Solver(
        solver_param(bench_net_param(args.child)),
        trainer_factory=factory,
        data_shard=(i, n),
        is_root=i == 0,
    )
    images, labels = random_batch(args.child)
    solver.trainer.feed("data", images)
    solver.trainer.feed("label", labels)
    solver.step(args.warmup)
    start, cpu, main_cpu = time.perf_counter(), time.process_time(), time.thread_time()
    solver.step(args.iters)
    seconds = time.perf_counter() - start
    main_ms = (time.thread_time() - main_cpu) * 1e3 / args.iters
    other_ms = (time.process_time() - cpu) * 1e3 / args.iters - main_ms  # PS threads, zmq I/O
    solver.close()
    if shards is not None:
        shards.close()  # then every worker's SHUTDOWN ends the shards
    for server in servers:
        server.join()
    if n > 1:
        ctx.term()
    images = args.iters * len(labels)
    return {"worker": i, "images": images, "seconds": seconds, "cpu_ms": [main_ms, other_ms]}


def measure(net: str, n: int, args, base: int, alone: bool = False) -> tuple[float, list[float]]:
    """Images/s of one run with `n` worker processes, and the CPU ms per iteration of a worker's
    main thread and of its other threads (the mean over the workers). `alone`: n independent
    lone workers at once instead of one job of n."""
    env = {**os.environ, **ONE_THREAD, "PYTHONPATH": str(ROOT)}
    of = 1 if alone else n
    cmd = [sys.executable, __file__, "--child", net, "--of", str(of), "--base", str(base)]
    cmd += ["--iters", str(args.iters), "--warmup", str(args.warmup)]
    procs = [
        subprocess.Popen(
            [*cmd, "--worker", str(0 if alone else i)], env=env, stdout=subprocess.PIPE, text=True
        )
        for i in range(n)
    ]
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=1800)
        if proc.returncode != 0:
            raise SystemExit(f"bench_scaling: a {net} worker failed ({proc.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    rate = sum(r["images"] for r in results) / max(r["seconds"] for r in results)
    return rate, [statistics.mean(r["cpu_ms"][k] for r in results) for k in (0, 1)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nets", nargs="+", default=["lenet", "cifar10_quick"])
    p.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    p.add_argument("--iters", type=int, default=0, help="timed iterations (0: per-net default)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--base", type=int, default=0, help="first port (0: a free range)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--of", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(worker(args)), flush=True)
        return
    print(f"{os.cpu_count()} CPU cores; one BLAS thread per worker")
    for net in args.nets:
        iters = args.iters or {"lenet": 60, "cifar10_quick": 15}.get(net, 10)
        rates, lone, run_args = {}, {}, argparse.Namespace(**{**vars(args), "iters": iters})
        for n in args.workers:
            modes = [False, True] if n > 1 else [False]
            results = _alternating(net, n, run_args, modes)
            rates[n] = _report(net, f"{n} worker{'s' if n > 1 else ''}", results[False])
            if n > 1:
                lone[n] = _report(net, f"{n} lone workers at once", results[True])
        for n in args.workers:
            if n > 1 and 1 in rates:
                scaling, ceiling = rates[n] / rates[1], lone[n] / rates[1]
                print(f"scaling {net} {n} workers = {scaling:.2f}x", flush=True)
                print(f"ceiling {net} {n} workers = {ceiling:.2f}x", flush=True)
                print(f"efficiency {net} {n} workers = {scaling / ceiling:.2f}", flush=True)


def _alternating(net: str, n: int, args, modes: list[bool]) -> dict[bool, list]:
    """--repeats measurements of each mode (alone or not), taking turns in reversed order every
    other repeat so that drift on a shared machine hits each alike: mode -> [(rate, cpu ms)]."""
    from geeps_net.ps.cluster import free_base_port

    results = {alone: [] for alone in modes}
    for r in range(args.repeats):
        for alone in modes if r % 2 == 0 else modes[::-1]:
            base = args.base or free_base_port("127.0.0.1", n, 21000)
            results[alone].append(measure(net, n, args, base, alone))
    return results


def _report(net: str, label: str, runs: list) -> float:
    """Print the median images/s of `runs` (measure's results) with each run and the CPU
    figures; returns the median."""
    rate = statistics.median(r for r, _ in runs)
    main_ms, other_ms = (statistics.median(ms[k] for _, ms in runs) for k in (0, 1))
    print(
        f"{net} {label}: {rate:.1f} images/s (runs {', '.join(f'{r:.1f}' for r, _ in runs)}); "
        f"CPU per iteration: main thread {main_ms:.1f} ms, other threads {other_ms:.1f} ms",
        flush=True,
    )
    return rate


if __name__ == "__main__":
    main()
