"""Training speed (images/s) of geeps-net against PyTorch CPU on the same nets, side by side.

    python tools/bench_train.py                          # lenet, cifar10_quick, alexnet; PS on
    python tools/bench_train.py --nets lenet --iters 50 --threads 2 --repeats 5
    python tools/bench_train.py --trainer resident       # no PS: every blob resident
    python tools/bench_train.py --layers --nets alexnet  # per-layer forward/backward ms, both

PyTorch comes from the optional extra `bench` (torch==2.13.0), installed in a separate venv, e.g.
    python -m venv --system-site-packages .venv-bench && .venv-bench/bin/pip install torch==2.13.0
    .venv-bench/bin/python tools/bench_train.py
Without torch the geeps-net numbers are printed alone.

Each net is models/<net>/train_val.prototxt in its TRAIN phase with the Data layer replaced by an
Input layer of random images and labels (fed once, as a Data layer's batch would be). One
iteration is forward + backward + SGD update (momentum 0.9, weight decay 5e-4): geeps-net through
Solver.step with the chosen trainer, PyTorch a torch.nn.Sequential built from the same layers and
shapes with torch.optim.SGD. Each measurement runs in its own process (an idle OpenMP pool of one
library must not spin against the other), geeps-net and PyTorch alternating; the median of
--repeats runs of --iters timed iterations after --warmup is reported, and
`ratio <net> = geeps / torch` on its own line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# name -> (model, batch, image shape (C, H, W), classes); batches are the issue's.
NETS = {
    "lenet": ("models/lenet/train_val.prototxt", 64, (1, 28, 28), 10),
    "cifar10_quick": ("models/cifar10_quick/train_val.prototxt", 100, (3, 32, 32), 10),
    "alexnet": ("models/alexnet/train_val.prototxt", 16, (3, 227, 227), 1000),
}
DEFAULT_ITERS = {"lenet": 50, "cifar10_quick": 20, "alexnet": 5}
DATA_TYPES = ("Data", "ImageData", "HDF5Data", "DummyData", "Input", "MemoryData")


# -- the net, as both frameworks see it ------------------------------------------------------------


def bench_net_param(name: str, batch: int | None = None):
    """The net's NetParameter with its data layers replaced by one Input of (batch, C, H, W) images
    and (batch,) labels."""
    from geeps_net.proto import caffe_pb2
    from geeps_net.prototxt import read_net

    path, default_batch, shape, _ = NETS[name]
    batch = batch or default_batch
    source = read_net(ROOT / path).param
    param = caffe_pb2.NetParameter(name=source.name)
    data = param.layer.add(name="data", type="Input", top=["data", "label"])
    data.input_param.shape.add(dim=(batch, *shape))
    data.input_param.shape.add(dim=(batch,))
    for layer in source.layer:
        if layer.type not in DATA_TYPES:
            param.layer.add().CopyFrom(layer)
    return param


def random_batch(name: str, batch: int | None = None):
    """(images float32 (N, C, H, W), labels float32 (N,)) drawn with a fixed seed."""
    _, default_batch, shape, classes = NETS[name]
    batch = batch or default_batch
    rng = numpy.random.default_rng(0)
    images = rng.standard_normal((batch, *shape), dtype=numpy.float32)
    labels = rng.integers(0, classes, batch).astype(numpy.float32)
    return images, labels


def solver_param(net_param):
    from geeps_net.proto import caffe_pb2

    return caffe_pb2.SolverParameter(
        net_param=net_param, base_lr=0.01, lr_policy="fixed", momentum=0.9,
        weight_decay=5e-4, max_iter=1 << 30, display=0, random_seed=1, type="SGD",
    )  # fmt: skip


# -- one measurement, in a child process ---------------------------------------------------------


def run_geeps(name: str, args) -> dict:
    """Timed Solver.step iterations; falls back to the resident trainer if the PS one fails."""
    from geeps_net.backend import set_threads
    from geeps_net.solver import Solver

    set_threads(args.threads)
    trainer, factory = args.trainer, None
    if trainer == "ps":
        from geeps_net.ps.config import Config
        from geeps_net.worker import ps_trainer_factory

        factory = ps_trainer_factory(Config())
    images, labels = random_batch(name, args.batch)
    try:
        solver = Solver(solver_param(bench_net_param(name, args.batch)), trainer_factory=factory)
    except Exception as e:  # the PS may be unfinished: say so and measure without it
        if factory is None:
            raise
        print(f"PS trainer failed ({type(e).__name__}: {e}); resident instead", file=sys.stderr)
        trainer = "resident (PS failed)"
        solver = Solver(solver_param(bench_net_param(name, args.batch)))
    try:
        solver.trainer.feed("data", images)
        solver.trainer.feed("label", labels)
        solver.step(args.warmup)
        times = []
        for _ in range(args.iters):
            t = time.perf_counter()
            solver.step(1)
            times.append(time.perf_counter() - t)
        loss = solver.smoothed_loss
    finally:
        solver.close()
    return {"times": times, "trainer": trainer, "loss": float(loss)}


def torch_model(name: str, batch: int | None = None):
    """torch.nn.Sequential of the net's TRAIN layers, every weight the shape geeps-net gives it."""
    import torch.nn as nn

    from geeps_net.net import Net

    net = Net(bench_net_param(name, batch), "TRAIN", resident=False)
    modules, loss_layer = [], None
    for layer, bottoms, tops in zip(net.layers, net.bottoms, net.tops):
        make = TORCH_LAYERS.get(layer.type)
        if layer.type in ("Input", "Split", "Accuracy"):
            continue
        if layer.type == "SoftmaxWithLoss":
            loss_layer = layer
            continue
        if make is None:
            raise SystemExit(f"bench: no PyTorch twin for layer type {layer.type!r}")
        module = make(layer, bottoms[0].shape, tops[0].shape)
        modules.extend(module if isinstance(module, list) else [module])
    if loss_layer is None:
        raise SystemExit(f"bench: {name} has no SoftmaxWithLoss")
    return nn.Sequential(*modules), net


def _conv(layer, in_shape, out_shape):
    import torch.nn as nn

    return nn.Conv2d(
        in_shape[1], layer.num_output, layer.kernel, stride=layer.stride, padding=layer.pad,
        dilation=layer.dilation, groups=layer.group, bias=layer.bias_term,
    )  # fmt: skip


def _pool(layer, in_shape, out_shape):
    import torch.nn as nn

    g = layer.geom  # ceil_mode: Caffe's rounding (both drop a window starting in the padding)
    if layer.method == "MAX":
        return nn.MaxPool2d(g.kernel, g.stride, g.pad, ceil_mode=layer.ceil_mode)
    return nn.AvgPool2d(g.kernel, g.stride, g.pad, ceil_mode=layer.ceil_mode)


def _inner_product(layer, in_shape, out_shape):
    import torch.nn as nn

    linear = nn.Linear(layer.k, layer.num_output, bias=layer.bias_term)
    return [nn.Flatten(), linear] if len(in_shape) > 2 else linear


def _lrn(layer, in_shape, out_shape):
    import torch.nn as nn

    if layer.within:
        raise SystemExit("bench: LRN WITHIN_CHANNEL has no PyTorch twin")
    return nn.LocalResponseNorm(layer.size, layer.alpha, layer.beta, layer.k)


def _relu(layer, in_shape, out_shape):
    import torch.nn as nn

    return nn.LeakyReLU(layer.slope, inplace=True) if layer.slope else nn.ReLU(inplace=True)


def _dropout(layer, in_shape, out_shape):
    import torch.nn as nn

    return nn.Dropout(layer.ratio)  # in place would break ReLU's saved output


TORCH_LAYERS = {
    "Convolution": _conv,
    "Pooling": _pool,
    "InnerProduct": _inner_product,
    "LRN": _lrn,
    "ReLU": _relu,
    "Dropout": _dropout,
}


def run_torch(name: str, args) -> dict:
    """Timed iterations of zero_grad, forward, cross-entropy, backward, SGD step."""
    import torch

    torch.set_num_threads(args.threads or torch.get_num_threads())
    torch.manual_seed(0)
    model, net = torch_model(name, args.batch)
    net.close()
    images, labels = random_batch(name, args.batch)
    x, y = torch.from_numpy(images), torch.from_numpy(labels).long()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()

    def step():
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.iters):
        t = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t)
    return {"times": times, "trainer": f"torch {torch.__version__}", "loss": float(loss.detach())}


# -- per-layer timings ---------------------------------------------------------------------------


def layers_geeps(name: str, args) -> list:
    """(layer, type, forward ms, backward ms) per layer of a resident net, medians of --iters."""
    from geeps_net.backend import set_threads
    from geeps_net.net import Net

    set_threads(args.threads)
    images, labels = random_batch(name, args.batch)
    with Net(bench_net_param(name, args.batch), "TRAIN") as net:
        net.blobs["data"].data[...] = images
        net.blobs["label"].data[...] = labels
        n = len(net.layers)
        fwd, bwd = [[] for _ in range(n)], [[] for _ in range(n)]
        for _ in range(args.warmup + args.iters):
            net.clear_param_diffs()
            for i in range(n):
                t = time.perf_counter()
                net.forward_layer(i)
                fwd[i].append(time.perf_counter() - t)
            for i in reversed(range(n)):
                t = time.perf_counter()
                if net.layer_need_backward[i]:
                    net.backward_layer(i)
                bwd[i].append(time.perf_counter() - t)
        scratch = scratch_bytes(net)
        w = args.warmup
        return [
            (layer.name, layer.type, 1e3 * statistics.median(fwd[i][w:]),
             1e3 * statistics.median(bwd[i][w:]), scratch[i], held_bytes(layer))
            for i, layer in enumerate(net.layers)
        ]  # fmt: skip


def held_bytes(layer) -> int:
    """What oneDNN keeps for a convolution between calls (its layouts' copies, scratchpad):
    made once, so scratch_bytes' per-iteration allocations do not see it."""
    conv = getattr(layer, "onednn_conv", None)
    return conv.buffer_bytes() if conv is not None else 0


def scratch_bytes(net) -> list[int]:
    """Peak temporary bytes allocated (tracemalloc, which sees NumPy's buffers) while each
    layer's forward and backward run, one untimed iteration: the per-iteration allocations."""
    import tracemalloc

    tracemalloc.start()
    peaks = []
    try:
        net.clear_param_diffs()
        for i in range(len(net.layers)):
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            net.forward_layer(i)
            peaks.append(tracemalloc.get_traced_memory()[1] - base)
        for i in reversed(range(len(net.layers))):
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            if net.layer_need_backward[i]:
                net.backward_layer(i)
            peaks[i] = max(peaks[i], tracemalloc.get_traced_memory()[1] - base)
    finally:
        tracemalloc.stop()
    return peaks


def layers_torch(name: str, args) -> list:
    """(module, forward ms, backward ms) per module, each timed alone on its real input."""
    import torch

    torch.set_num_threads(args.threads or torch.get_num_threads())
    model, net = torch_model(name, args.batch)
    net.close()
    x = torch.from_numpy(random_batch(name, args.batch)[0])
    rows = []
    for module in model:
        if hasattr(module, "inplace"):
            module.inplace = False  # timed alone, its input is a leaf
        inp = x.detach().requires_grad_()
        fwd, bwd = [], []
        for _ in range(args.warmup + args.iters):
            t = time.perf_counter()
            out = module(inp)
            fwd.append(time.perf_counter() - t)
            grad = torch.ones_like(out)
            t = time.perf_counter()
            out.backward(grad)
            bwd.append(time.perf_counter() - t)
        rows.append((repr(module)[:40], 1e3 * statistics.median(fwd[args.warmup :]),
                     1e3 * statistics.median(bwd[args.warmup :])))  # fmt: skip
        x = out.detach()
    return rows


# -- the parent: alternate child runs, print medians and ratios ----------------------------------

WORKERS = {"geeps": run_geeps, "torch": run_torch, "layers-geeps": layers_geeps,
           "layers-torch": layers_torch}  # fmt: skip


def child(args, kind: str, name: str) -> dict | list | None:
    """Run one measurement in a fresh interpreter; its last stdout line is JSON."""
    cmd = [sys.executable, __file__, "--child", kind, "--nets", name, "--iters", str(args.iters)]
    cmd += ["--warmup", str(args.warmup), "--threads", str(args.threads)]
    cmd += ["--trainer", args.trainer]
    if args.batch:
        cmd += ["--batch", str(args.batch)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(f"  {kind} {name} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    if done.stderr.strip():
        print(done.stderr.strip()[-500:], file=sys.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def have_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def throughput(name: str, args, results: list) -> float:
    batch = args.batch or NETS[name][1]
    return statistics.median(batch / statistics.median(r["times"]) for r in results)


def compare(name: str, args, torch_ok: bool) -> None:
    runs = {"geeps": [], "torch": []}
    for _ in range(args.repeats):
        for kind in ("geeps", "torch") if torch_ok else ("geeps",):
            result = child(args, kind, name)
            if result is not None:
                runs[kind].append(result)
    rates = {k: throughput(name, args, v) for k, v in runs.items() if v}
    for kind, rate in rates.items():
        each = ", ".join(f"{(args.batch or NETS[name][1]) / statistics.median(r['times']):.0f}"
                         for r in runs[kind])  # fmt: skip
        print(f"{name:14s} {kind:5s} {rate:9.1f} img/s  (runs: {each}; {runs[kind][0]['trainer']})")
    if "geeps" in rates and "torch" in rates:
        print(f"ratio {name} = {rates['geeps'] / rates['torch']:.2f}")
    sys.stdout.flush()


def compare_layers(name: str, args, torch_ok: bool) -> None:
    ours = child(args, "layers-geeps", name) or []
    print(f"{name}: geeps-net per layer (median ms, forward / backward; peak scratch MiB per"
          " iteration; MiB oneDNN holds)")  # fmt: skip
    for layer, kind, f, b, scratch, held in ours:
        print(f"  {layer:12s} {kind:16s} {f:8.2f} {b:8.2f} {scratch / 2**20:8.1f} "
              f"{held / 2**20:8.1f}")  # fmt: skip
    print(f"  {'total':29s} {sum(r[2] for r in ours):8.2f} {sum(r[3] for r in ours):8.2f}")
    if torch_ok:
        theirs = child(args, "layers-torch", name) or []
        print(f"{name}: PyTorch per module, each alone (median ms, forward / backward)")
        for module, f, b in theirs:
            print(f"  {module:29s} {f:8.2f} {b:8.2f}")
        print(f"  {'total':29s} {sum(r[1] for r in theirs):8.2f} {sum(r[2] for r in theirs):8.2f}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nets", default=",".join(NETS), help=f"comma list of {', '.join(NETS)}")
    p.add_argument("--iters", type=int, default=0, help="timed iterations (default: per net)")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    p.add_argument("--repeats", type=int, default=3, help="runs of each framework; medians")
    p.add_argument("--threads", type=int, default=2, help="BLAS/OpenMP threads, both frameworks")
    p.add_argument("--batch", type=int, default=0, help="override the nets' batch sizes")
    p.add_argument("--trainer", choices=("ps", "resident"), default="ps")
    p.add_argument("--layers", action="store_true", help="per-layer timings instead")
    p.add_argument("--child", choices=tuple(WORKERS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    nets = args.nets.split(",")
    unknown = [n for n in nets if n not in NETS]
    if unknown:
        p.error(f"unknown net(s) {', '.join(unknown)} (known: {', '.join(NETS)})")
    return args, nets


def main(argv=None) -> int:
    args, nets = parse_args(argv)
    if args.child:
        args.iters = args.iters or DEFAULT_ITERS[nets[0]]
        result = WORKERS[args.child](nets[0], args)
        print(json.dumps(result))
        return 0
    torch_ok = have_torch()
    if not torch_ok:
        print("PyTorch not importable here: geeps-net alone (see the docstring)", file=sys.stderr)
    print(f"threads {args.threads}, warm-up {args.warmup}, repeats {args.repeats}, "
          f"trainer {args.trainer}")  # fmt: skip
    for name in nets:
        saved, args.iters = args.iters, args.iters or DEFAULT_ITERS[name]
        (compare_layers if args.layers else compare)(name, args, torch_ok)
        args.iters = saved
    return 0


if __name__ == "__main__":
    sys.exit(main())
