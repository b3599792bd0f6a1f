"""Every real Caffe prototxt in shared/reference/models builds in TRAIN and TEST with Caffe's blob
shapes.

Data layers are swapped for Input layers of the shape their LMDB would give (the databases are not
here);
everything else is the file unchanged.
"""

import pytest

from geeps_net.net import Net
from geeps_net.prototxt import read_net
from tests.conftest import REFERENCE

MODELS = REFERENCE / "models"
NETS = (
    sorted(p for p in MODELS.glob("*/*.prototxt") if "solver" not in p.name)
    if MODELS.is_dir()
    else []
)

# (channels, height, width) each data layer yields after its transform (crop), by model folder.
DATA_SHAPES = {"mnist": (1, 28, 28), "siamese": (2, 28, 28), "cifar10": (3, 32, 32),
               "bvlc_alexnet": (3, 227, 227), "bvlc_reference_caffenet": (3, 227, 227)}  # fmt: skip

# Shapes BVLC Caffe gives these blobs (caffe_format.md; the conv/pool arithmetic of each file).
EXPECTED = {
    "lenet_train_test.prototxt": {
        "conv1": (64, 20, 24, 24), "pool1": (64, 20, 12, 12), "conv2": (64, 50, 8, 8),
        "pool2": (64, 50, 4, 4), "ip1": (64, 500), "ip2": (64, 10), "loss": (),
    },
    "lenet.prototxt": {"conv2": (64, 50, 8, 8), "prob": (64, 10)},
    "train_val.prototxt": {
        "conv1": (256, 96, 55, 55), "pool1": (256, 96, 27, 27), "conv2": (256, 256, 27, 27),
        "pool2": (256, 256, 13, 13), "conv3": (256, 384, 13, 13), "conv5": (256, 256, 13, 13),
        "pool5": (256, 256, 6, 6), "fc6": (256, 4096), "fc8": (256, 1000),
    },
    "deploy.prototxt": {"pool5": (10, 256, 6, 6), "prob": (10, 1000)},
    "cifar10_quick_train_test.prototxt": {
        "conv1": (100, 32, 32, 32), "pool1": (100, 32, 16, 16), "pool2": (100, 32, 8, 8),
        "pool3": (100, 64, 4, 4), "ip1": (100, 64), "ip2": (100, 10),
    },
    "cifar10_full_train_test.prototxt": {"norm1": (100, 32, 16, 16), "pool3": (100, 64, 4, 4)},
    "mnist_siamese_train_test.prototxt": {
        "data": (64, 1, 28, 28), "feat": (64, 2), "feat_p": (64, 2),
    },
    "mnist_autoencoder.prototxt": {
        "flatdata": (100, 784), "encode4": (100, 30), "decode1": (100, 784),
    },
}  # fmt: skip


def with_inputs(path, phase):
    """The file's NetSource with each Data layer of this phase replaced by an Input layer."""
    source = read_net(path)
    shape = DATA_SHAPES[path.parent.name]
    for layer in source.param.layer:
        if layer.type != "Data":
            continue
        batch = layer.data_param.batch_size
        layer.type = "Input"
        layer.ClearField("data_param")
        layer.ClearField("transform_param")
        layer.input_param.ClearField("shape")
        layer.input_param.shape.add().dim.extend((batch, *shape))
        if len(layer.top) > 1:
            layer.input_param.shape.add().dim.extend((batch,))
    return source


@pytest.mark.skipif(not NETS, reason="shared/reference/models not laid out beside the checkout")
@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
@pytest.mark.parametrize("path", NETS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_reference_net_builds(path, phase):
    stages = ["test-on-test"] if phase == "TEST" and "autoencoder" in path.name else []
    net = Net(with_inputs(path, phase), phase, stages=stages, resident=False)
    assert net.layers, "no layers kept"
    expected = EXPECTED.get(path.name, {})
    if path.parent.name == "bvlc_reference_caffenet" and path.name == "train_val.prototxt":
        expected = {k: v for k, v in expected.items() if k in ("conv1", "fc6", "fc8", "pool5")}
    for blob, shape in expected.items():
        if phase == "TEST" and shape and shape[0] in (64, 256) and path.name != "lenet.prototxt":
            shape = (_test_batch(path),) + shape[1:]
        if blob in net.blobs:
            assert net.blobs[blob].shape == shape, f"{blob}: {net.blobs[blob].shape} != {shape}"


def _test_batch(path):
    source = read_net(path)
    for layer in source.param.layer:
        if layer.type == "Data" and any(r.phase == 1 for r in layer.include):
            return layer.data_param.batch_size
    return None


@pytest.mark.skipif(not NETS, reason="shared/reference/models not laid out beside the checkout")
def test_reference_siamese_example_trains_unchanged(tmp_path, monkeypatch):
    """Caffe's siamese net and solver, copied unchanged, train through the PS on the LevelDB
    pairs convert_mnist_siamese writes (its Data layers leave the backend at LEVELDB); only the
    solver's iteration counts are cut down."""
    pytest.importorskip("plyvel", reason="plyvel (extra 'leveldb') is not installed")
    import gzip
    import shutil
    import struct

    import numpy

    from geeps_net.dataset import convert_mnist_siamese
    from geeps_net.ps.config import Config
    from geeps_net.solver import load_solver
    from geeps_net.worker import ps_trainer_factory

    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "examples" / "siamese"
    folder.mkdir(parents=True)
    for name in ("mnist_siamese_train_test.prototxt", "mnist_siamese_solver.prototxt"):
        shutil.copy(MODELS / "siamese" / name, folder / name)
    rng = numpy.random.default_rng(0)
    labels = rng.integers(0, 10, 300).astype(numpy.uint8)
    images = numpy.clip(labels[:, None, None] * 25.0 + rng.normal(0, 20, (300, 28, 28)), 0, 255)
    for name, array, magic in (("img", images.astype(numpy.uint8), 2051), ("lbl", labels, 2049)):
        header = struct.pack(">i", magic) + struct.pack(f">{array.ndim}i", *array.shape)
        (tmp_path / f"{name}.gz").write_bytes(gzip.compress(header + array.tobytes()))
    for split in ("train", "test"):
        db = folder / f"mnist_siamese_{split}_leveldb"
        convert_mnist_siamese(tmp_path / "img.gz", tmp_path / "lbl.gz", db, seed=1, progress=False)

    def shorter(param):
        param.max_iter, param.test_iter[:], param.test_interval, param.snapshot = 60, [2], 30, 0
        param.snapshot_after_train = False

    solver = load_solver(folder / "mnist_siamese_solver.prototxt", edit=shorter,
                         trainer_factory=ps_trainer_factory(Config()))  # fmt: skip
    try:
        losses = []
        for _ in range(60):
            solver.step(1)
            losses.append(solver.smoothed_loss)
        tested = solver.test_all()[0]["loss"]
    finally:
        solver.close()
    assert numpy.mean(losses[-10:]) < 0.8 * numpy.mean(losses[:10])
    assert 0 < float(tested) < losses[0]
