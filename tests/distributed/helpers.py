"""What the distributed tests share: a tiny LMDB and net, solvers, in-process clusters, ports."""

from __future__ import annotations

import random
import struct
import threading
from pathlib import Path

import numpy
import zmq

from geeps_net.dataset import convert_mnist
from geeps_net.prototxt import parse_solver
from geeps_net.ps import cluster
from geeps_net.ps.config import Config
from geeps_net.ps.remote import RemoteShards, ShardServer
from geeps_net.ps.server import LocalShards
from geeps_net.ps.transport import shard_inproc_urls, tcp_urls
from geeps_net.solver import Solver
from geeps_net.worker import ps_trainer_factory

SIDE, RECORDS, CLASSES = 6, 64, 4  # 6x6 images: the net stays tiny


def write_idx(path: Path, array: numpy.ndarray, magic: int) -> None:
    """An uncompressed IDX file of uint8 `array` (MNIST's layout)."""
    head = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(head + array.astype("uint8").tobytes())


def make_lmdb(folder: Path, records: int = RECORDS, seed: int = 0) -> Path:
    """An LMDB of `records` 1 x SIDE x SIDE images whose label shows in their brightness."""
    rng = numpy.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, records)
    images = rng.integers(0, 120, (records, SIDE, SIDE)) + 40 * labels[:, None, None]
    write_idx(folder / "images.idx", images, 2051)
    write_idx(folder / "labels.idx", labels, 2049)
    out = folder / "lmdb"
    convert_mnist(folder / "images.idx", folder / "labels.idx", out, progress=False)
    return out


DATA = """layer {{ name: "data" type: "Data" top: "data" top: "label"
  include {{ phase: {phase} }} transform_param {{ scale: 0.00390625 }}
  data_param {{ source: "{source}" batch_size: {batch} backend: LMDB }} }}
"""
LAYERS = f"""layer {{ name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  inner_product_param {{ num_output: 8 weight_filler {{ type: "xavier" }}
    bias_filler {{ type: "constant" value: 0.1 }} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }}
layer {{ name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param {{ num_output: {CLASSES} weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }}
"""
ACCURACY = """layer { name: "accuracy" type: "Accuracy" bottom: "ip2" bottom: "label"
  top: "accuracy" include { phase: TEST } }
"""


def net_text(source: Path, batch: int, test: bool = False) -> str:
    """Data -> InnerProduct(8) -> ReLU -> InnerProduct(CLASSES) -> SoftmaxWithLoss (+ Accuracy)."""
    text = 'name: "tiny"\n' + DATA.format(phase="TRAIN", source=source, batch=batch)
    if test:
        text += DATA.format(phase="TEST", source=source, batch=8)
    return text + LAYERS + (ACCURACY if test else "")


SOLVERS = {
    "SGD": 'type: "SGD" base_lr: 0.1 momentum: 0.9 weight_decay: 0.01',
    "Nesterov": 'type: "Nesterov" base_lr: 0.1 momentum: 0.9 weight_decay: 0.01',
    "Adam": 'type: "Adam" base_lr: 0.01 momentum: 0.9 momentum2: 0.999 weight_decay: 0.001',
}


def solver_text(kind: str, iters: int, **fields) -> str:
    """Solver fields (no net) for `kind` in SOLVERS; `fields` add or replace plain fields."""
    values = dict(
        lr_policy='"step"',
        gamma=0.5,
        stepsize=7,
        max_iter=iters,
        random_seed=3,
        display=0,
        test_interval=0,
        snapshot=0,
    )
    values.update(fields)
    return SOLVERS[kind] + " " + " ".join(f"{k}: {v}" for k, v in values.items())


def solver_param(source: Path, batch: int, kind: str, iters: int):
    """A SolverParameter with the tiny net inline."""
    return parse_solver(solver_text(kind, iters) + " net_param { " + net_text(source, batch) + "}")


def config(**kw) -> Config:
    """A PS config for tests: short deadlines, small rows (tables span several ranges)."""
    kw.setdefault("deadline_s", 10.0)
    kw.setdefault("heartbeat_s", 0.5)
    kw.setdefault("row_size", 16)
    return Config(**kw)


def run_threads(functions, timeout: float = 60.0) -> list:
    """Run each function on its own thread; their results; re-raise the first exception."""
    results, errors = [None] * len(functions), []

    def call(i, fn):
        try:
            results[i] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)

    threads = [threading.Thread(target=call, args=(i, fn)) for i, fn in enumerate(functions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(t.is_alive() for t in threads), "a worker thread hung"
    if errors:
        raise errors[0]
    return results


class InProcessCluster:
    """`num_servers` ShardServers on threads (TCP loopback) and a RemoteShards per worker.

    colocated: laid out as run_worker does, worker w hosting shards w, w + N, ... on its own
    zmq.Context and reaching them over inproc://, the other shards over TCP.
    """

    def __init__(
        self, cfg: Config, num_workers: int, server_rule=None, colocated: bool = False
    ) -> None:
        self.contexts = [zmq.Context() for _ in range(num_workers)] if colocated else []
        self.servers = [
            ShardServer(
                cfg,
                s,
                num_workers,
                tcp_urls("127.0.0.1", 0, cfg.num_channels),
                server_rule=server_rule,
                ctx=self._ctx(s % num_workers),
                inproc=colocated,
            ).start()
            for s in range(cfg.num_servers)
        ]

        def urls(w: int) -> list[list[str]]:
            mine = {s for s in range(cfg.num_servers) if colocated and s % num_workers == w}
            return [
                shard_inproc_urls(s, cfg.num_channels) if s in mine else server.urls
                for s, server in enumerate(self.servers)
            ]

        self.shards = run_threads(
            [
                lambda w=w: RemoteShards(cfg, w, num_workers, urls(w), ctx=self._ctx(w))
                for w in range(num_workers)
            ]
        )

    def _ctx(self, worker: int):
        return self.contexts[worker] if self.contexts else None

    def close(self) -> None:
        """Shut down cleanly (each worker's client must be closed first)."""
        for shards in self.shards:
            shards.close()
        for server in self.servers:
            server.join()
        for ctx in self.contexts:
            ctx.term()
        self.contexts = []


def local_shards(cfg: Config, num_workers: int, server_rule=None):
    """One LocalShards object shared by every worker."""
    shared = LocalShards(cfg, num_workers=num_workers, server_rule=server_rule)
    return [shared] * num_workers


def train_workers(param, cfg: Config, shards, iters: int, rule=None):
    """Solvers for every worker (worker 0 built last: LocalShards pushes initial values only to
    workers already subscribed), `iters` steps each on its own thread; worker 0's settled params.
    A ServerSideRule `rule` is bound to worker 0's table layout."""
    n = len(shards)
    solvers = [None] * n
    for w in reversed(range(n)):
        factory = ps_trainer_factory(cfg, worker_id=w, num_workers=n, shards=shards[w])
        solvers[w] = Solver(param, trainer_factory=factory, data_shard=(w, n), is_root=w == 0)
    if rule is not None:
        rule.bind(param, solvers[0].trainer.layout())
    try:
        run_threads([lambda s=s: s.step(iters) for s in solvers])
        return solvers[0].trainer.param_arrays(), solvers
    finally:
        for solver in solvers:
            solver.close()


def train_alone(param, iters: int):
    """One worker, no PS: the reference."""
    solver = Solver(param)
    try:
        solver.step(iters)
        return solver.trainer.param_arrays()
    finally:
        solver.close()


def free_base(count: int) -> int:
    """A base port with `count` free ports after it (random start: parallel runs differ)."""
    return cluster.free_base_port("127.0.0.1", count, random.randrange(20000, 40000, 100))
