"""Net: pycaffe-like API, need_backward, shared params, loss weights, and LeNet against real
Caffe."""

import numpy
import pytest
from numpy.testing import assert_allclose

from geeps_net.errors import NetError, PrototxtError
from geeps_net.net import Net
from tests.conftest import REFERENCE

LENET = REFERENCE / "oracle" / "numeric" / "lenet"

TINY = """
name: "tiny"
layer { name: "in" type: "Input" top: "x" top: "label"
        input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" %s }
"""


def unsample(arrays, key):
    """numeric/ stores big arrays sampled: full.reshape(-1)[::stride]."""
    if f"stride/{key}" in arrays:
        return arrays[key], int(arrays[f"stride/{key}"])
    return arrays[key].reshape(-1), 1


@pytest.mark.skipif(not LENET.is_dir(), reason="oracle files not laid out")
def test_lenet_matches_real_caffe():
    params = numpy.load(LENET / "params.npz")
    forward = numpy.load(LENET / "forward.npz")
    backward = numpy.load(LENET / "backward.npz")
    net = Net(LENET / "net.prototxt", "TRAIN")
    for key in params:
        if key.startswith("param/"):
            _, layer, i = key.split("/")
            net.params[layer][int(i)].data[...] = params[key]
    net.forward(data=params["in/data"], label=params["in/label"])
    for key in forward:
        assert_allclose(net.blobs[key[4:]].data, forward[key], rtol=1e-3, atol=1e-4, err_msg=key)
    net.clear_param_diffs()
    net.backward()
    for key in backward:
        kind, _, rest = key.partition("/")
        if kind == "diff" and rest in net.blobs and rest != "label":
            assert_allclose(net.blobs[rest].diff, backward[key], rtol=1e-3, atol=1e-4, err_msg=key)
        elif kind == "pgrad":
            want, stride = unsample(backward, key)
            layer, i = rest.split("/")
            got = net.params[layer][int(i)].diff.reshape(-1)[::stride]
            assert_allclose(got, want, rtol=1e-3, atol=1e-4, err_msg=key)


def test_pycaffe_api_and_need_backward():
    net = Net(TINY % "", "TRAIN", seed=3)
    assert net.inputs == ["x", "label"] and net.outputs == ["loss"]
    assert [p.blob.shape for p in net.learnable] == [(5, 3), (5,)]
    x = numpy.random.default_rng(0).standard_normal((4, 3))
    out = net.forward(x=x, label=numpy.array([0, 1, 2, 4]))
    assert out["loss"].shape == () and net.loss == pytest.approx(float(out["loss"]))
    assert net.layer_need_backward == [False, True, True]
    assert net.bottom_need_backward[2] == [True, False]
    diffs = net.backward()
    assert set(diffs) == {"x", "label"}
    assert numpy.abs(net.params["ip"][0].diff).sum() > 0


@pytest.mark.parametrize("suffix", [".caffemodel", ".caffemodel.h5"])
def test_save_and_copy_from_a_path_round_trip(tmp_path, suffix):
    if suffix.endswith(".h5"):
        pytest.importorskip("h5py")
    trained = Net(TINY % "", "TRAIN", seed=3)
    trained.params["ip"][1].data[...] = [1, 2, 3, 4, 5]
    path = tmp_path / f"tiny{suffix}"
    trained.save(path)
    fresh = Net(TINY % "", "TEST", seed=9)
    assert not numpy.array_equal(fresh.params["ip"][0].data, trained.params["ip"][0].data)
    fresh.copy_from(path)  # pycaffe's Net.copy_from(filename)
    for a, b in zip(fresh.params["ip"], trained.params["ip"]):
        numpy.testing.assert_array_equal(a.data, b.data)
    loaded = Net(TINY % "", "TEST", weights=path)
    numpy.testing.assert_array_equal(loaded.params["ip"][1].data, [1, 2, 3, 4, 5])


def test_reshape_to_another_batch_as_pycaffe():
    net = Net(TINY % "", "TRAIN", seed=3)
    x = numpy.random.default_rng(0).standard_normal((6, 3))
    labels = numpy.array([0, 1, 2, 4, 3, 0])
    loss6 = float(net.forward(x=x, label=labels)["loss"])
    net.backward()
    grad6 = net.params["ip"][0].diff.copy()
    loss2 = float(net.forward(x=x[:2], label=labels[:2])["loss"])  # a new batch size reshapes
    assert net.blobs["ip"].shape == (2, 5) and loss2 != pytest.approx(loss6)
    net.blobs["x"].reshape((6, 3))  # pycaffe's way: reshape the input, then the net
    net.blobs["label"].reshape((6,))
    net.reshape()
    net.clear_param_diffs()
    assert float(net.forward(x=x, label=labels)["loss"]) == pytest.approx(loss6)
    net.backward()  # the loss diff preset (loss_weight) survived the reshapes
    numpy.testing.assert_allclose(net.params["ip"][0].diff, grad6)
    with pytest.raises(NetError, match='no blob "y" to feed'):
        net.forward(y=x)


def test_forward_only_gives_the_same_outputs_and_no_backward():
    text = TINY.replace(
        'layer { name: "ip"',
        'layer { name: "pool" type: "Pooling" bottom: "x" top: "xp" pooling_param { pool: MAX '
        'kernel_h: 1 kernel_w: 2 stride_h: 1 stride_w: 1 } }\nlayer { name: "ip"',
    )
    text = text.replace('bottom: "x" top: "ip"', 'bottom: "xp" top: "ip"')
    text = text.replace("shape { dim: 4 dim: 3 }", "shape { dim: 4 dim: 1 dim: 1 dim: 3 }")
    x = numpy.random.default_rng(1).standard_normal((4, 1, 1, 3))
    full, fast = Net(text % "", "TRAIN", seed=2), Net(text % "", "TRAIN", seed=2).forward_only()
    labels = numpy.array([0, 1, 2, 4])
    assert full.forward(x=x, label=labels)["loss"] == fast.forward(x=x, label=labels)["loss"]
    numpy.testing.assert_array_equal(full.blobs["xp"].data, fast.blobs["xp"].data)
    assert fast.layer_need_backward == [False] * 4 and full.layer_need_backward[2]
    fast.backward()
    assert not numpy.any(fast.params["ip"][0].diff)  # nothing ran


def test_loss_weight_scales_gradient_not_loss():
    a, b = Net(TINY % "", "TRAIN", seed=1), Net(TINY % "loss_weight: 3", "TRAIN", seed=1)
    x, label = numpy.ones((4, 3)), numpy.array([0, 1, 2, 3])
    for net in (a, b):
        net.forward(x=x, label=label)
        net.clear_param_diffs()
        net.backward()
    assert b.loss == pytest.approx(3 * a.loss)  # reported loss is weighted
    assert_allclose(b.params["ip"][0].diff, 3 * a.params["ip"][0].diff, rtol=1e-5)


def test_force_backward_reaches_inputs():
    net = Net(TINY.replace('name: "tiny"', 'name: "tiny" force_backward: true') % "", "TRAIN")
    assert net.bottom_need_backward[1] == [True]
    assert net.bottom_need_backward[2] == [True, False]  # labels never take a gradient


def test_propagate_down_false():
    net = Net(TINY % "propagate_down: false propagate_down: false", "TRAIN")
    assert net.bottom_need_backward[2] == [False, False]
    assert net.layer_need_backward[1] is False  # nothing below the loss needs its gradient


def test_shared_params_by_name():
    text = """
    layer { name: "in" type: "Input" top: "a" top: "b" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "p" type: "InnerProduct" bottom: "a" top: "pa" param { name: "w" } param { name:
    "bias" }
            inner_product_param { num_output: 2 weight_filler { type: "gaussian" } } }
    layer { name: "q" type: "InnerProduct" bottom: "b" top: "qb" param { name: "w" } param { name:
    "bias" }
            inner_product_param { num_output: 2 } }
    layer { name: "loss" type: "EuclideanLoss" bottom: "pa" bottom: "qb" top: "loss" }
    """
    net = Net(text, "TRAIN")
    assert len(net.learnable) == 2
    assert net.params["p"][0] is net.params["q"][0]
    x = numpy.random.default_rng(1).standard_normal((2, 3))
    net.forward(a=x, b=x)
    assert net.loss == pytest.approx(0.0)


def test_shared_param_shape_mismatch_names_layer():
    text = """
    layer { name: "in" type: "Input" top: "a" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "p" type: "InnerProduct" bottom: "a" top: "pa" param { name: "w" }
            inner_product_param { num_output: 2 } }
    layer { name: "q" type: "InnerProduct" bottom: "a" top: "qa" param { name: "w" }
            inner_product_param { num_output: 4 } }
    """
    with pytest.raises(NetError, match=r'layer "q".*shared param "w"'):
        Net(text, "TRAIN")


@pytest.mark.parametrize(
    "body, message",
    [
        (
            'layer { name: "x" type: "Pooling2D" top: "y" }',
            r':2: layer "x": unknown type "Pooling2D"',
        ),
        ('layer { name: "x" type: "ReLU" bottom: "nope" top: "y" }', r':2: layer "x".*"nope"'),
        (
            'layer { name: "i" type: "Input" top: "y" input_param { shape { dim: 1 } } }\n'
            'layer { name: "j" type: "Input" top: "y" input_param { shape { dim: 1 } } }',
            r':3: layer "j".*already produced',
        ),
        (
            'layer { name: "i" type: "Input" top: "a" top: "b"\n'
            "  input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 4 } } }\n"
            'layer { name: "e" type: "Eltwise" bottom: "a" bottom: "b" top: "c" }',
            r':4: layer "e"',
        ),
    ],
)
def test_bad_nets_name_file_line_and_layer(tmp_path, body, message):
    path = tmp_path / "bad.prototxt"
    path.write_text('name: "bad"\n' + body + "\n")
    with pytest.raises(NetError, match=message):
        Net(path, "TRAIN")


def test_bad_enum_and_malformed_text_name_line_and_column(tmp_path):
    path = tmp_path / "bad.prototxt"
    path.write_text('name: "bad"\nlayer {\n  name: "p"\n  pooling_param { pool: MAXX }\n}\n')
    with pytest.raises(PrototxtError, match=r"bad.prototxt:4:\d+: .*MAXX"):
        Net(path, "TRAIN")
    path.write_text('name: "bad"\nlayer {\n  name: "p"\n')
    with pytest.raises(PrototxtError, match=r"bad.prototxt:3:\d+:"):
        Net(path, "TRAIN")


def test_resident_false_leaves_blobs_unbound():
    net = Net(TINY % "", "TRAIN", resident=False)
    assert all(b.data is None for b in net.blobs.values())
    with pytest.raises(NetError, match="parameter server"):
        net.forward()
