"""Snapshots: stop at iteration 10 and resume to 20 gives the parameters of an uninterrupted run,
bit for bit,
with and without the PS; -weights loads a .caffemodel laid out as real Caffe writes it."""

import gzip
import struct

import numpy
import pytest
from google.protobuf import text_format
from numpy.testing import assert_allclose

from geeps_net.dataset import convert_mnist
from geeps_net.net import Net
from geeps_net.proto import caffe_pb2
from geeps_net.ps.config import Config
from geeps_net.snapshot import read_net_weights
from geeps_net.solver import Solver
from geeps_net.worker import ps_trainer_factory
from tests.conftest import REFERENCE

NET = """
name: "small"
layer { name: "data" type: "Data" top: "data" top: "label"
        transform_param { scale: 0.00390625 mirror: true crop_size: 24 }
        data_param { source: "%s" batch_size: 8 backend: LMDB } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 5 weight_filler { type: "xavier" } } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX
kernel_size: 2 stride: 2 } }
layer { name: "drop" type: "Dropout" bottom: "pool" top: "pool" }
layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip"
        inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def write_idx(tmp_path, count=40):
    rng = numpy.random.default_rng(0)
    images = tmp_path / "images.gz"
    labels = tmp_path / "labels.gz"
    with gzip.open(images, "wb") as f:
        f.write(struct.pack(">iiii", 2051, count, 28, 28))
        f.write(rng.integers(0, 256, (count, 28, 28), dtype=numpy.uint8).tobytes())
    with gzip.open(labels, "wb") as f:
        f.write(struct.pack(">ii", 2049, count))
        f.write(rng.integers(0, 10, count, dtype=numpy.uint8).tobytes())
    return images, labels


@pytest.fixture
def lmdb_source(tmp_path):
    images, labels = write_idx(tmp_path)
    out = tmp_path / "train_lmdb"
    convert_mnist(images, labels, out, progress=False)
    return out


def solver_param(source, prefix, type_="SGD"):
    sp = caffe_pb2.SolverParameter()
    text_format.Parse(NET % source, sp.net_param)
    sp.type, sp.base_lr, sp.lr_policy, sp.gamma, sp.power = type_, 0.01, "inv", 1e-4, 0.75
    if type_ != "AdaGrad":
        sp.momentum = 0.9
    sp.weight_decay, sp.max_iter, sp.snapshot, sp.display = 5e-4, 20, 10, 0
    sp.snapshot_prefix, sp.random_seed = str(prefix), 5
    return sp


def run(param, factory, resume=None, iters=20):
    solver = Solver(param, trainer_factory=factory)
    try:
        if resume:
            solver.restore(resume)
        solver.step(iters - solver.iter)
        return solver.trainer.param_arrays()
    finally:
        solver.close()


@pytest.mark.parametrize("use_ps", [False, True], ids=["resident", "ps"])
@pytest.mark.parametrize("type_", ["SGD", "Adam"])
def test_resume_is_bit_identical(tmp_path, lmdb_source, use_ps, type_):
    factory = (lambda: ps_trainer_factory(Config())) if use_ps else (lambda: None)
    whole = run(solver_param(lmdb_source, tmp_path / "a", type_), factory())
    state = tmp_path / "a_iter_10.solverstate"
    assert state.exists() and (tmp_path / "a_iter_10.caffemodel").exists()
    resumed = run(solver_param(lmdb_source, tmp_path / "b", type_), factory(), resume=state)
    for i, (want, got) in enumerate(zip(whole, resumed, strict=True)):
        assert numpy.array_equal(want, got), f"learnable {i} differs after resume"


def test_snapshot_round_trip_is_byte_stable(tmp_path, lmdb_source):
    run(solver_param(lmdb_source, tmp_path / "s"), None, iters=10)
    model = tmp_path / "s_iter_10.caffemodel"
    net = Net(NET % lmdb_source, "TRAIN", weights=model)
    try:
        weights = read_net_weights(model)
        assert {name for name, blobs in weights.items() if blobs} == {"conv", "ip"}
        assert numpy.array_equal(net.params["ip"][0].data, weights["ip"][0])
    finally:
        net.close()
    again = Solver(solver_param(lmdb_source, tmp_path / "t"))
    try:
        again.load_weights(model)
        again.iter = 10
        copy, _ = again.snapshot()
    finally:
        again.close()
    assert open(copy, "rb").read() == model.read_bytes()


LENET = REFERENCE / "oracle" / "numeric" / "lenet"


@pytest.mark.skipif(not LENET.is_dir(), reason="oracle files not laid out")
def test_weights_from_a_caffe_layout_caffemodel(tmp_path):
    """A .caffemodel built with the proto module as BVLC Caffe lays it out loads through
    -weights."""
    params = numpy.load(LENET / "params.npz")
    model = caffe_pb2.NetParameter(name="LeNet")
    for name in ("conv1", "conv2", "ip1", "ip2"):
        layer = model.layer.add(name=name, type="InnerProduct" if "ip" in name else "Convolution")
        for i in range(2):
            array = params[f"param/{name}/{i}"]
            blob = layer.blobs.add()
            blob.shape.dim.extend(array.shape)
            blob.data.extend(array.ravel().tolist())
    path = tmp_path / "lenet.caffemodel"
    path.write_bytes(model.SerializeToString())
    net = Net(LENET / "net.prototxt", "TRAIN", weights=path)
    net.forward(data=params["in/data"], label=params["in/label"])
    forward = numpy.load(LENET / "forward.npz")
    for key in forward:
        assert_allclose(net.blobs[key[4:]].data, forward[key], rtol=1e-3, atol=1e-4, err_msg=key)


@pytest.mark.parametrize(
    "prefix, where",
    [("", "solvers/my_solver"), ("out", "out/my_solver"), ("out/run1", "out/run1")],
)
def test_snapshot_prefix_as_caffe_reads_it(tmp_path, monkeypatch, prefix, where):
    """Caffe after 1.0: no prefix = the solver file without its extension; a folder = the
    solver's name in it; anything else is the prefix itself."""
    from geeps_net.solver import load_solver

    monkeypatch.chdir(tmp_path)
    (tmp_path / "solvers").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "solvers" / "net.prototxt").write_text(
        'layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 } } }'
    )
    text = 'net: "net.prototxt" base_lr: 0.1 lr_policy: "fixed"'
    text += f' snapshot_prefix: "{prefix}"' if prefix else ""
    (tmp_path / "solvers" / "my_solver.prototxt").write_text(text)
    solver = load_solver("solvers/my_solver.prototxt")
    try:
        assert solver.snapshot_prefix() == where
    finally:
        solver.close()
