""".caffemodel / .solverstate I/O (binary and HDF5, current and legacy layouts), atomic writes."""

import os
import sys

import numpy
import pytest
from google.protobuf import text_format
from numpy.testing import assert_array_equal

from geeps_net import fileio, snapshot
from geeps_net.errors import SnapshotError
from geeps_net.proto import caffe_pb2

RNG = numpy.random.default_rng(0)
W1, B1 = RNG.standard_normal((4, 3, 2, 2)).astype(numpy.float32), numpy.arange(4, dtype="f4")
W2, B2 = RNG.standard_normal((10, 5)).astype(numpy.float32), numpy.ones(10, numpy.float32)
LAYERS = [
    ("data", "Input", [], ["data"], []),
    ("conv1", "Convolution", ["data"], ["conv1"], [W1, B1]),
    ("relu1", "ReLU", ["conv1"], ["conv1"], []),
    ("ip2", "InnerProduct", ["conv1"], ["ip2"], [W2, B2]),
]


def assert_weights(weights, expected: dict):
    assert {k: len(v) for k, v in weights.items() if v} == {k: len(v) for k, v in expected.items()}
    for name, arrays in expected.items():
        for ours, want in zip(weights[name], arrays, strict=True):
            assert ours.dtype == want.dtype
            assert_array_equal(ours, want)


# -- .caffemodel -----------------------------------------------------------------------------------


def test_caffemodel_round_trip_and_byte_stability(tmp_path):
    path = tmp_path / "net_iter_10.caffemodel"
    snapshot.write_caffemodel(path, "tiny", LAYERS)
    first = path.read_bytes()
    weights = snapshot.read_net_weights(path)
    assert (
        list(weights) == ["data", "conv1", "relu1", "ip2"]
        and weights.types["ip2"] == "InnerProduct"
    )
    assert_weights(weights, {"conv1": [W1, B1], "ip2": [W2, B2]})
    again = [(n, t, b, top, weights[n]) for n, t, b, top, _ in LAYERS]
    snapshot.write_caffemodel(path, "tiny", again)  # load -> save: the same bytes
    assert path.read_bytes() == first == snapshot.caffemodel_bytes("tiny", LAYERS)
    net = caffe_pb2.NetParameter.FromString(first)  # laid out as Caffe's Net::ToProto
    assert net.name == "tiny" and [lay.name for lay in net.layer] == [n for n, *_ in LAYERS]
    assert list(net.layer[3].bottom) == ["conv1"] and list(net.layer[3].blobs[0].shape.dim) == [
        10,
        5,
    ]
    assert not net.layer[3].blobs[0].diff and not net.layer[3].blobs[0].HasField("num")
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left


def test_caffemodel_full_layer_params_and_diffs(tmp_path):
    layer = text_format.Parse(
        'name: "ip2" type: "InnerProduct" bottom: "x" top: "ip2" phase: TRAIN '
        "param { lr_mult: 1 } inner_product_param { num_output: 10 }",
        caffe_pb2.LayerParameter(),
    )
    path = tmp_path / "m.caffemodel"
    snapshot.write_caffemodel(path, "n", [(layer, [W2, B2])], diffs={"ip2": [W2 * 2, B2 * 3]})
    saved = caffe_pb2.NetParameter.FromString(path.read_bytes()).layer[0]
    assert saved.inner_product_param.num_output == 10 and saved.param[0].lr_mult == 1
    assert_array_equal(numpy.array(saved.blobs[1].diff, "f4"), B2 * 3)
    assert_weights(snapshot.read_net_weights(path), {"ip2": [W2, B2]})


def test_caffemodel_written_by_caffe_layout(reference, tmp_path):
    """A .caffemodel built with caffe_pb2 the way real Caffe lays it out reads back equal."""
    root = reference / "oracle" / "numeric" / "lenet"
    params = numpy.load(root / "params.npz")
    net = text_format.Parse((root / "net.prototxt").read_text(), caffe_pb2.NetParameter())
    expected = {}
    for layer in net.layer:
        layer.phase = caffe_pb2.TRAIN  # Caffe records the net's phase in every layer
        arrays = [params[k] for k in sorted(params.files) if k.startswith(f"param/{layer.name}/")]
        for array in arrays:
            blob = layer.blobs.add()
            blob.shape.dim.extend(array.shape)
            blob.data.extend(array.ravel().tolist())
        if arrays:
            expected[layer.name] = arrays
    path = tmp_path / "lenet_iter_0.caffemodel"
    path.write_bytes(net.SerializeToString())
    weights = snapshot.read_net_weights(path)
    assert_weights(weights, expected)
    wanted = {name: [a.shape for a in arrays] for name, arrays in expected.items()}
    matched = snapshot.match_weights(weights, wanted)
    assert list(matched) == list(wanted)


def legacy_blob(shape4, values, double=False):
    blob = caffe_pb2.BlobProto(num=shape4[0], channels=shape4[1], height=shape4[2], width=shape4[3])
    (blob.double_data if double else blob.data).extend(values.ravel().tolist())
    return blob


def test_legacy_v1_and_v0_files(tmp_path):
    net = caffe_pb2.NetParameter(name="old")
    v1 = net.layers.add(name="ip2", type=caffe_pb2.V1LayerParameter.INNER_PRODUCT)
    v1.blobs.extend([legacy_blob((1, 1, 10, 5), W2), legacy_blob((1, 1, 1, 10), B2, double=True)])
    v0 = net.layers.add().layer
    v0.name, v0.type = "conv1", "conv"
    v0.blobs.extend([legacy_blob(W1.shape, W1), legacy_blob((1, 1, 1, 4), B1)])
    path = tmp_path / "old.caffemodel"
    path.write_bytes(net.SerializeToString())
    weights = snapshot.read_net_weights(path)
    assert weights["ip2"][0].shape == (1, 1, 10, 5) and weights["ip2"][1].dtype == numpy.float64
    assert weights.types["ip2"] == "INNER_PRODUCT"
    matched = snapshot.match_weights(
        weights, {"ip2": [(10, 5), (10,)], "conv1": [W1.shape, (4,)], "fc9": [(3,)]}
    )
    assert set(matched) == {"ip2", "conv1"}  # fc9 is not in the file: it keeps its filler
    assert_array_equal(matched["ip2"][0], W2)
    assert_array_equal(matched["ip2"][1], B2)
    assert_array_equal(matched["conv1"][1], B1)
    with pytest.raises(SnapshotError, match=r"has blob 1 \(1, 1, 1, 10\); the net wants \(5, 2\)"):
        snapshot.match_weights(weights, {"ip2": [(10, 5), (5, 2)]})  # same count, other shape


def test_shape_and_count_mismatch_messages(tmp_path):
    path = tmp_path / "lenet_iter_500.caffemodel"
    snapshot.write_caffemodel(path, "n", [("ip2", "InnerProduct", [], [], [W2.T.copy(), B2])])
    weights = snapshot.read_net_weights(path)
    message = f'layer "ip2" (InnerProduct): {path} has weights (5, 10); the net wants (10, 5)'
    with pytest.raises(SnapshotError) as err:
        snapshot.match_weights(weights, {"ip2": [(10, 5), (10,)]})
    assert str(err.value) == message
    with pytest.raises(
        SnapshotError, match="lenet_iter_500.caffemodel has 2 blobs; the net wants 1"
    ):
        snapshot.match_weights(weights, {"ip2": [(5, 10)]}, source="lenet_iter_500.caffemodel")
    matched = snapshot.match_weights(weights, {"ip2": [(5, 10), (10,)], "ip3": [(1,)]})
    assert list(matched) == ["ip2"]  # extra file layers ignored, missing ones left out


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "no layer with weights"),
        (b"name: 'LeNet'\nlayer { name: 'x' }\n", "not a binary NetParameter"),
        (bytes(range(256)) * 4, "not a binary NetParameter"),
    ],
)
def test_foreign_caffemodel(tmp_path, content, message):
    path = tmp_path / "foreign.caffemodel"
    path.write_bytes(content)
    with pytest.raises(SnapshotError, match=f"{path}: {message}"):
        snapshot.read_net_weights(path)


def test_truncated_caffemodel(tmp_path):
    path = tmp_path / "cut.caffemodel"
    snapshot.write_caffemodel(path, "tiny", LAYERS)
    path.write_bytes(path.read_bytes()[:-17])
    with pytest.raises(SnapshotError, match=str(path)):
        snapshot.read_net_weights(path)
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend([2, 3])
    blob.data.extend([1.0] * 5)
    net = caffe_pb2.NetParameter()
    net.layer.add(name="ip", type="InnerProduct").blobs.append(blob)
    path.write_bytes(net.SerializeToString())
    with pytest.raises(SnapshotError, match=r'layer "ip" blob 0: 5 values for shape \(2, 3\)'):
        snapshot.read_net_weights(path)
    with pytest.raises(SnapshotError, match="cannot read"):
        snapshot.read_net_weights(tmp_path / "missing.caffemodel")


def test_caffemodel_hdf5(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "net_iter_10.caffemodel.h5"
    layers = [*LAYERS, ("inception/1x1", "Convolution", [], [], [B1])]
    snapshot.write_caffemodel(path, "tiny", layers, diffs={"ip2": [W2, B2]})
    with h5py.File(path, "r") as f:  # Caffe's Net::ToHDF5 layout
        assert sorted(f["data/conv1"]) == ["0", "1"] and len(f["data/relu1"]) == 0
        assert f["data/ip2/0"].dtype == numpy.float32 and f["diff/ip2/1"].shape == (10,)
    weights = snapshot.read_net_weights(path)
    assert_weights(weights, {"conv1": [W1, B1], "ip2": [W2, B2], "inception/1x1": [B1]})
    matched = snapshot.match_weights(weights, {"conv1": [W1.shape, B1.shape]})
    assert_array_equal(matched["conv1"][0], W1)


def test_hdf5_shared_param_absent(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "shared.caffemodel.h5"
    with h5py.File(path, "w") as f:  # Caffe stores only the owner of a shared param
        f.create_dataset("data/ip_b/0", data=W2)
    matched = snapshot.match_weights(snapshot.read_net_weights(path), {"ip_b": [(10, 5), (10,)]})
    assert matched["ip_b"][1] is None
    assert_array_equal(matched["ip_b"][0], W2)


def test_hdf5_without_h5py(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(SnapshotError, match="need h5py"):
        snapshot.write_caffemodel(tmp_path / "x.caffemodel.h5", "n", LAYERS)


# -- .solverstate ----------------------------------------------------------------------------------


def test_solverstate_round_trip(tmp_path):
    path = tmp_path / "net_iter_10.solverstate"
    history = [W1 * 0.5, B1, numpy.zeros((), numpy.float32)]
    snapshot.write_solverstate(path, 10, "net_iter_10.caffemodel", history, 2)
    first = path.read_bytes()
    it, learned, read_history, step = snapshot.read_solverstate(path)
    assert (it, learned, step) == (10, "net_iter_10.caffemodel", 2)
    for ours, want in zip(read_history, history, strict=True):
        assert ours.shape == want.shape
        assert_array_equal(ours, want)
    snapshot.write_solverstate(path, it, learned, read_history, step)
    assert path.read_bytes() == first
    state = caffe_pb2.SolverState.FromString(first)  # Caffe's SolverState message
    assert state.iter == 10 and list(state.history[0].shape.dim) == [4, 3, 2, 2]


def test_solverstate_at_iteration_zero_and_legacy_history(tmp_path):
    path = tmp_path / "s.solverstate"
    state = caffe_pb2.SolverState(iter=0, learned_net="m.caffemodel")
    state.history.append(legacy_blob((1, 1, 10, 5), W2))
    path.write_bytes(state.SerializeToString())
    it, learned, history, step = snapshot.read_solverstate(path)
    assert (it, learned, step) == (0, "m.caffemodel", 0) and history[0].shape == (1, 1, 10, 5)


@pytest.mark.parametrize("content", [b"", b"\x0a\x05hello", b"\xff" * 40])
def test_foreign_solverstate(tmp_path, content):
    path = tmp_path / "bad.solverstate"
    path.write_bytes(content)
    with pytest.raises(SnapshotError, match=str(path)):
        snapshot.read_solverstate(path)


def test_solverstate_hdf5(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "net_iter_7.solverstate.h5"
    snapshot.write_solverstate(path, 7, "net_iter_7.caffemodel.h5", [W2, B2], 1)
    with h5py.File(path, "r") as f:  # SnapshotSolverStateToHDF5 layout
        assert f["iter"][()] == 7 and f["iter"].shape == () and f["current_step"][()] == 1
        assert f["learned_net"][()].rstrip(b"\0") == b"net_iter_7.caffemodel.h5"
        assert sorted(f["history"]) == ["0", "1"]
    it, learned, history, step = snapshot.read_solverstate(path)
    assert (it, learned, step) == (7, "net_iter_7.caffemodel.h5", 1)
    assert_array_equal(history[0], W2)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_dataset("x", data=W2)
    with pytest.raises(SnapshotError, match='without "iter"'):
        snapshot.read_solverstate(tmp_path / "other.h5")
    with pytest.raises(SnapshotError, match='without a "data" group'):
        snapshot.read_net_weights(tmp_path / "other.h5")


# -- atomic files ----------------------------------------------------------------------------------


def test_write_atomic_failure_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "model.caffemodel"
    path.write_bytes(b"old")

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(SnapshotError, match=f"{path}: cannot write: No space left"):
        snapshot.write_caffemodel(path, "tiny", LAYERS)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == [path.name]
    with pytest.raises(SnapshotError, match="cannot write"):
        snapshot.write_solverstate(tmp_path / "no" / "dir.solverstate", 1, "", [], 0)


def test_atomic_directory(tmp_path):
    out = tmp_path / "train_lmdb"
    with pytest.raises(RuntimeError), fileio.atomic_directory(out) as tmp:
        (tmp / "data.mdb").write_bytes(b"half")
        raise RuntimeError("converter failed")
    assert os.listdir(tmp_path) == []  # nothing left behind
    with fileio.atomic_directory(out) as tmp:
        (tmp / "data.mdb").write_bytes(b"one")
    assert (out / "data.mdb").read_bytes() == b"one"
    with pytest.raises(FileExistsError, match="already exists"), fileio.atomic_directory(out):
        pass
    with fileio.atomic_directory(out, overwrite=True) as tmp:
        (tmp / "data.mdb").write_bytes(b"two")
    assert (out / "data.mdb").read_bytes() == b"two" and os.listdir(tmp_path) == [out.name]
