"""The model zoo: every net builds with the published parameter counts and output shapes, and
trains a step (forward + backward) at a reduced size; the files match tools/make_zoo.py."""

import io
import logging
import math
from pathlib import Path

import numpy
import pytest

from geeps_net.backend import to_host
from geeps_net.cli import GlogFormatter
from geeps_net.dataset import compute_image_mean, encode_datum, write_db
from geeps_net.logparse import parse_log_text
from geeps_net.net import Net
from geeps_net.prototxt import read_net, read_solver
from geeps_net.solver import Solver

ROOT = Path(__file__).resolve().parents[2]

# Learnable values of each deploy net, as the papers/releases count them plus what Caffe stores
# besides: BatchNorm's running mean and variance (2 x channels) and its scale factor (1 per layer).
PARAM_COUNTS = {
    "alexnet": 60_965_224, "caffenet": 60_965_224, "vgg16": 138_357_544,
    "googlenet": 6_998_552, "squeezenet1.1": 1_235_496,
    "resnet18": 11_689_512 + 2 * 4800 + 20, "resnet50": 25_557_032 + 2 * 26560 + 53,
    "mobilenet": 4_231_976 + 2 * 10944 + 27,
    "cifar10_quick": 145_578, "cifar10_full": 89_578,
}  # fmt: skip
CLASSES = {"cifar10_quick": 10, "cifar10_full": 10}
ZOO = sorted(PARAM_COUNTS)  # the nets tools/make_zoo.py writes

# Input side for the reduced-size step: as small as each architecture allows (GoogLeNet's 7x7
# final pool and 5x5/3 auxiliary pools need the full 224).
STEP_SIZE = {"cifar10_quick": 32, "cifar10_full": 32, "alexnet": 99, "caffenet": 99,
             "vgg16": 32, "googlenet": 224, "resnet18": 64, "resnet50": 64,
             "squeezenet1.1": 64, "mobilenet": 64}  # fmt: skip


def test_zoo_is_complete():
    for name in ZOO:
        assert (ROOT / "models" / name / "deploy.prototxt").is_file()
        assert (ROOT / "models" / name / "train_val.prototxt").is_file()
        assert (ROOT / "solvers" / f"{name}_solver.prototxt").is_file()


def test_zoo_files_match_generator(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    import make_zoo

    for rel, text in make_zoo.zoo_files().items():
        assert (ROOT / rel).read_text() == text, f"{rel} is stale: run python tools/make_zoo.py"


@pytest.mark.parametrize("name", ZOO)
def test_deploy_builds_with_published_shapes(name):
    net = Net(str(ROOT / "models" / name / "deploy.prototxt"), "TEST", resident=False)
    batch = net.blobs["data"].shape[0]
    prob = net.blobs["prob"].shape
    assert prob[:2] == (batch, CLASSES.get(name, 1000)) and math.prod(prob[2:]) == 1
    assert sum(p.blob.count for p in net.learnable) == PARAM_COUNTS[name]


def with_inputs(name: str, batch: int, size: int):
    """train_val with each Data layer replaced by Input layers (data, label) of the given size."""
    source = read_net(ROOT / "models" / name / "train_val.prototxt")
    for layer in source.param.layer:
        if layer.type == "Data":
            layer.type = "Input"
            layer.ClearField("data_param")
            layer.ClearField("transform_param")
            layer.input_param.shape.add().dim.extend((batch, 3, size, size))
            layer.input_param.shape.add().dim.extend((batch,))
    return source


@pytest.mark.parametrize("name", ZOO)
def test_train_val_step_at_reduced_size(name, xp):
    size, classes = STEP_SIZE[name], CLASSES.get(name, 1000)
    net = Net(with_inputs(name, 2, size), "TRAIN", seed=1, xp=xp)
    rng = numpy.random.default_rng(0)
    x = rng.standard_normal((2, 3, size, size)).astype(numpy.float32)
    net.forward(data=x, label=numpy.array([1.0, classes - 1.0], numpy.float32))
    weights = sorted(w for ws in net.loss_weights for w in ws if w)
    assert weights == pytest.approx([0.3, 0.3, 1.0] if name == "googlenet" else [1.0])
    # Near-uniform initial predictions: each loss about ln(classes).
    assert 0.5 * sum(weights) * math.log(classes) < net.loss < 3 * sum(weights) * math.log(classes)
    net.backward()
    first = to_host(net.learnable[0].blob.diff)
    assert numpy.isfinite(first).all() and numpy.abs(first).sum() > 0
    for p in net.learnable:
        assert numpy.isfinite(to_host(p.blob.diff)).all(), p.name


@pytest.mark.parametrize("name", ZOO)
def test_train_val_test_phase_reports_accuracy(name):
    size = STEP_SIZE[name]
    net = Net(with_inputs(name, 2, size), "TEST", seed=1)
    outputs = net.forward(data=numpy.zeros((2, 3, size, size), numpy.float32),
                          label=numpy.zeros(2, numpy.float32))  # fmt: skip
    accuracies = [k for k in outputs if "accuracy" in k]
    assert accuracies, f"no accuracy output in {sorted(outputs)}"
    for key in accuracies:
        assert 0.0 <= float(outputs[key]) <= 1.0


def _tiny_cifar(root: Path) -> None:
    """data/cifar10/cifar10_{train,test}_lmdb (12 random images each) and their mean, under
    `root`, where convert_cifar_data puts them."""
    rng = numpy.random.default_rng(0)
    records = [(b"%05d" % i, encode_datum(rng.integers(0, 256, (3, 32, 32), numpy.uint8), i % 10))
               for i in range(12)]  # fmt: skip
    db = root / "data" / "cifar10"
    db.mkdir(parents=True)
    write_db(db / "cifar10_train_lmdb", records)
    write_db(db / "cifar10_test_lmdb", records)
    compute_image_mean(db / "cifar10_train_lmdb", db / "mean.binaryproto", progress=False)


def test_cifar10_quick_reads_its_lmdbs(tmp_path, monkeypatch):
    """The Data layers as written (relative sources, mean file) work once the DBs exist."""
    _tiny_cifar(tmp_path)
    monkeypatch.chdir(tmp_path)
    with Net(str(ROOT / "models" / "cifar10_quick" / "train_val.prototxt"), "TRAIN") as net:
        assert net.blobs["data"].shape == (100, 3, 32, 32)
        net.forward()
        net.backward()
        assert 1.0 < net.loss < 4.0


def test_cifar10_quick_solver_trains_and_logs_parse(tmp_path, monkeypatch):
    """The zoo solver file drives a few iterations; its glog lines parse back into rows."""
    _tiny_cifar(tmp_path)
    (tmp_path / "models").symlink_to(ROOT / "models")
    monkeypatch.chdir(tmp_path)
    param = read_solver(ROOT / "solvers" / "cifar10_quick_solver.prototxt")
    param.max_iter, param.display, param.test_interval, param.test_iter[0] = 4, 2, 2, 1
    param.snapshot, param.snapshot_after_train, param.test_initialization = 0, False, False
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(GlogFormatter())
    logger = logging.getLogger("geeps_net.solver")
    logger.addHandler(handler)
    monkeypatch.setattr(logger, "level", logging.INFO)
    try:
        solver = Solver(param)
        solver.solve()
        solver.close()
    finally:
        logger.removeHandler(handler)
    parsed = parse_log_text(stream.getvalue())
    assert [r["NumIters"] for r in parsed.train] == [0, 2]
    assert [r["NumIters"] for r in parsed.test] == [2, 4]
    assert all(r["LearningRate"] == pytest.approx(0.001) for r in parsed.train)
    assert {"loss", "accuracy"} <= set(parsed.test[0])
