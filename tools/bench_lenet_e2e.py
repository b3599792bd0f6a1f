"""LeNet on Fashion-MNIST end to end: geeps-net against PyTorch CPU on the same machine, one after
the other in one run.

    .venv-bench/bin/python tools/bench_lenet_e2e.py                  # 10,000 iterations each
    .venv-bench/bin/python tools/bench_lenet_e2e.py --max_iter 2000 --repeats 3 --threads 2

geeps-net: `geeps-net train -solver solvers/lenet_solver.prototxt` in a child process, through the
PS, reading the LMDBs that tools/train_lenet.sh converts (run it once first). PyTorch (the optional
extra `bench`): the same net (bench_train's PyTorch twin of models/lenet/train_val.prototxt) and
schedule in a child process from the same IDX files held in
memory: Caffe's SGD (momentum 0.9, weight decay 5e-4, biases at twice the rate, the "inv" rate
policy), Caffe's xavier fillers, batches of 64 in file order, a pass over the 10,000 test images
at every multiple of 500 iterations from 0 to max_iter, as Caffe tests. Each side's time is its
child process's wall time, start-up and data loading included, as a user would see it. Prints
each run's seconds and last test accuracy, and `ratio e2e = torch s / geeps s` of the medians
(at least 1: geeps-net is as fast or faster).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_train import have_torch, torch_model

ROOT = Path(__file__).resolve().parent.parent
SOLVER = ROOT / "solvers" / "lenet_solver.prototxt"
RAW = Path("/usr/share/datasets/fashion-mnist")
ACCURACY = re.compile(r"Test net output #\d+: accuracy = ([0-9.]+)")


def parse_args(argv):
    """Flags; `--child torch` is how the parent runs the PyTorch side in its own process."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max_iter", type=int, default=None, help="default: the solver's (10,000)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1, help="runs of each, alternating (medians)")
    p.add_argument("--child", choices=["torch"], help=argparse.SUPPRESS)
    return p.parse_args(argv)


def solver_settings(max_iter: int | None) -> dict:
    """The solver file's schedule and rule, as the PyTorch side follows them."""
    from geeps_net.prototxt import read_solver

    s = read_solver(SOLVER)
    return {
        "max_iter": max_iter or s.max_iter, "test_interval": s.test_interval,
        "test_iter": s.test_iter[0], "base_lr": s.base_lr, "momentum": s.momentum,
        "weight_decay": s.weight_decay, "gamma": s.gamma, "power": s.power,
    }  # fmt: skip


def run_geeps(args) -> dict:
    """Wall seconds and last test accuracy of `geeps-net train` on the solver (its max_iter
    replaced by --max_iter in a temporary copy)."""
    solver = SOLVER
    with tempfile.TemporaryDirectory() as tmp:
        if args.max_iter:
            text = re.sub(r"(?m)^max_iter:.*$", f"max_iter: {args.max_iter}", SOLVER.read_text())
            solver = Path(tmp) / SOLVER.name
            solver.write_text(text)
        command = [sys.executable, "-m", "geeps_net", "train", "-solver", str(solver)]
        start = time.perf_counter()
        done = subprocess.run(
            command + ["-threads", str(args.threads)], cwd=ROOT, capture_output=True, text=True
        )
        seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"geeps-net train failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    found = ACCURACY.findall(done.stderr + done.stdout)
    return {"seconds": seconds, "accuracy": float(found[-1]) if found else math.nan}


def run_torch_child(args) -> dict:
    """The PyTorch side, in this (child) process."""
    import numpy
    import torch
    import torch.nn as nn

    from geeps_net.dataset import read_idx

    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    cfg = solver_settings(args.max_iter)

    def images(name):
        x = read_idx(RAW / f"{name}-images-idx3-ubyte.gz").astype(numpy.float32) * 0.00390625
        return torch.from_numpy(x[:, None])

    train_x, test_x = images("train"), images("t10k")
    train_y = torch.from_numpy(read_idx(RAW / "train-labels-idx1-ubyte.gz").astype(numpy.int64))
    test_y = torch.from_numpy(read_idx(RAW / "t10k-labels-idx1-ubyte.gz").astype(numpy.int64))
    net, _ = torch_model("lenet")  # bench_train's twin
    for m in net:
        if isinstance(m, nn.Conv2d | nn.Linear):  # Caffe's xavier: U(+-sqrt(3 / fan_in)); bias 0
            bound = math.sqrt(3.0 / (m.weight[0].numel()))
            nn.init.uniform_(m.weight, -bound, bound)
            nn.init.zeros_(m.bias)
    params = [(p, 2.0 if name.endswith("bias") else 1.0) for name, p in net.named_parameters()]
    history = [torch.zeros_like(p) for p, _ in params]
    loss_fn = nn.CrossEntropyLoss()

    def test() -> float:
        net.eval()
        correct, batch = 0, len(test_x) // cfg["test_iter"]
        with torch.no_grad():
            for i in range(cfg["test_iter"]):
                x, y = test_x[i * batch : (i + 1) * batch], test_y[i * batch : (i + 1) * batch]
                correct += int((net(x).argmax(1) == y).sum())
        net.train()
        return correct / (batch * cfg["test_iter"])

    accuracy = test()
    order = torch.arange(64)
    for it in range(cfg["max_iter"]):
        index = (order + it * 64) % len(train_x)  # file order, wrapping like a database cursor
        net.zero_grad(set_to_none=False)
        loss_fn(net(train_x[index]), train_y[index]).backward()
        rate = cfg["base_lr"] * (1 + cfg["gamma"] * it) ** -cfg["power"]
        with torch.no_grad():  # Caffe's SGD: v = m v + rate * mult * (g + decay w); w -= v
            for (p, mult), v in zip(params, history, strict=True):
                v.mul_(cfg["momentum"]).add_(p.grad + cfg["weight_decay"] * p, alpha=rate * mult)
                p.sub_(v)
        if (it + 1) % cfg["test_interval"] == 0:
            accuracy = test()
    return {"accuracy": accuracy, "torch": torch.__version__}


def run_torch(args) -> dict | None:
    """The PyTorch side in a child process; None (with a note) where torch is not installed."""
    if not have_torch():
        print("torch is not installed here: install the `bench` extra to compare", file=sys.stderr)
        return None
    command = [sys.executable, __file__, "--child", "torch", "--threads", str(args.threads)]
    if args.max_iter:
        command += ["--max_iter", str(args.max_iter)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"the PyTorch run failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return {"seconds": seconds, **json.loads(done.stdout.strip().splitlines()[-1])}


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.child == "torch":
        print(json.dumps(run_torch_child(args)))
        return 0
    runs = {"geeps-net": [], "PyTorch": []}
    for r in range(args.repeats):  # geeps, torch, torch, geeps, ...: drift hits both alike
        for side in ("geeps-net", "PyTorch") if r % 2 == 0 else ("PyTorch", "geeps-net"):
            result = run_geeps(args) if side == "geeps-net" else run_torch(args)
            if result is None:
                continue
            runs[side].append(result)
            label = side + (f" {result['torch']}" if side == "PyTorch" else "")
            print(f"{label}: {result['seconds']:.1f} s, test accuracy {result['accuracy']:.4f}")
    if not runs["PyTorch"]:
        return 0
    seconds = {side: statistics.median(r["seconds"] for r in rs) for side, rs in runs.items()}
    print(f"ratio e2e = {seconds['PyTorch'] / seconds['geeps-net']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
