import numpy
import pytest
from numpy.testing import assert_allclose

from geeps_net.errors import LayerError
from geeps_net.proto import caffe_pb2
from geeps_net.testing import LayerRig, check_gradient, forward_once, make_layer

FLT_MIN = numpy.finfo(numpy.float32).tiny


def softmax_ref(x, axis):
    """Softmax by explicit loops over every line along `axis`."""
    x = numpy.moveaxis(x, axis, -1)
    out = numpy.empty_like(x)
    for idx in numpy.ndindex(x.shape[:-1]):
        e = numpy.exp(x[idx] - x[idx].max())
        out[idx] = e / e.sum()
    return numpy.moveaxis(out, -1, axis)


def rng(seed=0):
    return numpy.random.default_rng(seed)


# -- Softmax ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "axis, shape", [(None, (2, 4, 2, 3)), (0, (3, 2, 2)), (-1, (2, 3, 5)), (2, (2, 2, 3, 2))]
)
def test_softmax(xp, axis, shape):
    text = 'type: "Softmax"' + ("" if axis is None else f" softmax_param {{ axis: {axis} }}")
    x = rng().standard_normal(shape) * 3
    assert_allclose(
        forward_once(xp, make_layer(text), x), softmax_ref(x, 1 if axis is None else axis)
    )
    check_gradient(xp, make_layer(text), [x])


def test_softmax_large_inputs_and_in_place(xp):
    x = numpy.array([[1000.0, 1001.0, 999.0], [-1000.0, -1000.0, -1000.0]])
    assert_allclose(forward_once(xp, make_layer('type: "Softmax"'), x), softmax_ref(x, 1))
    x = rng().standard_normal((2, 3, 4))
    dy = rng(1).standard_normal(x.shape)
    dxs = []
    for blobs in ('bottom: "x" top: "y"', 'bottom: "x" top: "x"'):
        rig = LayerRig(xp, make_layer(f'type: "Softmax" {blobs}'), [x])
        rig.forward()
        dxs.append(rig.backward([dy])[0])
    assert_allclose(dxs[1], dxs[0], rtol=1e-12)


def test_softmax_bad_axis(xp):
    with pytest.raises(LayerError, match="axis"):
        LayerRig(xp, make_layer('type: "Softmax" softmax_param { axis: 3 }'), [numpy.ones((2, 3))])


# -- SoftmaxWithLoss -------------------------------------------------------------------------------


def softmax_loss_ref(x, labels, axis=1, ignore=None, mode="VALID"):
    """Caffe's loop: -sum log(max(p, FLT_MIN)) over counted positions / clamped normalizer."""
    p = softmax_ref(x, axis)
    outer, c = int(numpy.prod(x.shape[:axis])), x.shape[axis]
    p = p.reshape(outer, c, -1)
    inner = p.shape[2]
    labels = labels.reshape(outer, inner)
    loss, count = 0.0, 0
    for i in range(outer):
        for j in range(inner):
            k = int(labels[i, j])
            if ignore is not None and k == ignore:
                continue
            loss -= numpy.log(max(p[i, k, j], FLT_MIN))
            count += 1
    norm = {"FULL": outer * inner, "VALID": count, "BATCH_SIZE": outer, "NONE": 1}[mode]
    return loss / max(norm, 1)


def loss_text(loss_param="", extra=""):
    text = f'type: "SoftmaxWithLoss" {extra}'
    return text + (f" loss_param {{ {loss_param} }}" if loss_param else "")


SPATIAL_X = rng(3).standard_normal((2, 4, 2, 3))
SPATIAL_LABELS = numpy.array([[0, 1, 2], [3, 1, 1], [2, 2, 0], [1, 3, 1]], float).reshape(
    2, 1, 2, 3
)

MODES = [
    ("", "VALID", None),
    ("normalization: FULL", "FULL", None),
    ("normalization: BATCH_SIZE", "BATCH_SIZE", None),
    ("normalization: NONE", "NONE", None),
    ("ignore_label: 1", "VALID", 1),
    ("ignore_label: 1 normalization: FULL", "FULL", 1),
    ("ignore_label: 1 normalization: BATCH_SIZE", "BATCH_SIZE", 1),
    ("ignore_label: 1 normalization: NONE", "NONE", 1),
    ("normalize: true ignore_label: 3", "VALID", 3),
    ("normalize: false", "BATCH_SIZE", None),
    ("normalize: false normalization: FULL", "FULL", None),  # normalization wins over normalize
]


@pytest.mark.parametrize("loss_param, mode, ignore", MODES)
def test_softmax_loss_modes(xp, loss_param, mode, ignore):
    text = loss_text(loss_param)
    got = forward_once(xp, make_layer(text), SPATIAL_X, SPATIAL_LABELS)
    assert got.shape == ()
    assert_allclose(got, softmax_loss_ref(SPATIAL_X, SPATIAL_LABELS, 1, ignore, mode))
    check_gradient(xp, make_layer(text), [SPATIAL_X, SPATIAL_LABELS])


def test_softmax_loss_gradient_formula(xp):
    """dx = (p - onehot) * loss_weight / count, 0 at ignored positions."""
    x, labels = rng(1).standard_normal((5, 4)), numpy.array([0.0, 3, 2, 2, 1])
    rig = LayerRig(xp, make_layer(loss_text("ignore_label: 2")), [x, labels])
    rig.forward()
    dx = rig.backward([numpy.array(2.0)], [True, False])[0]
    want = softmax_ref(x, 1) - numpy.eye(4)[labels.astype(int)]
    want[labels == 2] = 0
    assert_allclose(dx, want * 2.0 / 3)


@pytest.mark.parametrize(
    "axis, shape, label_shape",
    [(0, (3, 3, 2), (3, 2)), (-1, (2, 3, 5), (2, 3)), (2, (2, 3, 4), (2, 3))],
)
def test_softmax_loss_axis(xp, axis, shape, label_shape):
    x = rng().standard_normal(shape)
    labels = rng(1).integers(0, shape[axis], label_shape).astype(float)
    text = loss_text("ignore_label: 1", f"softmax_param {{ axis: {axis} }}")
    assert_allclose(
        forward_once(xp, make_layer(text), x, labels), softmax_loss_ref(x, labels, axis, ignore=1)
    )
    check_gradient(xp, make_layer(text), [x, labels])


def test_softmax_loss_prob_top_and_flt_min(xp):
    x = numpy.array([[0.0, 200.0, -200.0], [1.0, 2.0, 3.0]])
    labels = numpy.array([2.0, 0.0])
    layer = make_layer(loss_text(extra='top: "loss" top: "prob"'))
    loss, prob = forward_once(xp, layer, x, labels, dtype="float32")
    assert_allclose(prob, softmax_ref(x, 1), rtol=1e-6, atol=1e-30)
    # p[0, 2] underflows to 0 in float32: the log is floored at FLT_MIN, as in Caffe.
    want = (-numpy.log(FLT_MIN) - numpy.log(softmax_ref(x, 1)[1, 0])) / 2
    assert_allclose(loss, want, rtol=1e-5)
    assert layer.internals["prob"].shape == (2, 3)


def test_softmax_loss_loss_weight_scales_gradient(xp):
    x, labels = rng().standard_normal((3, 4)), numpy.array([1.0, 0, 3])
    rig = LayerRig(xp, make_layer(loss_text()), [x, labels])
    rig.forward()
    one = rig.backward([numpy.array(1.0)], [True, False])[0]
    three = rig.backward([numpy.array(3.0)], [True, False])[0]
    assert_allclose(three, 3 * one)


def test_softmax_loss_all_ignored(xp):
    """VALID with nothing counted: the normalizer is clamped to 1, so loss and gradient are 0."""
    x, labels = rng().standard_normal((3, 4)), numpy.array([1.0, 1, 1])
    rig = LayerRig(xp, make_layer(loss_text("ignore_label: 1")), [x, labels])
    assert_allclose(rig.forward()[0], 0.0)
    assert_allclose(rig.backward([numpy.array(1.0)], [True, False])[0], 0.0)


def test_softmax_loss_errors(xp):
    x = rng().standard_normal((3, 4))
    rig = LayerRig(xp, make_layer(loss_text()), [x, numpy.array([0.0, 1, 2])])
    rig.forward()
    with pytest.raises(LayerError, match="backpropagate to bottom 1"):
        rig.backward([numpy.array(1.0)], [True, True])
    with pytest.raises(LayerError, match="labels expected"):
        LayerRig(xp, make_layer(loss_text()), [rng().standard_normal((3, 4, 2)), numpy.zeros(3)])
    with pytest.raises(LayerError, match="same first dimension"):
        LayerRig(xp, make_layer(loss_text()), [x, numpy.zeros((1, 3))])
    with pytest.raises(LayerError, match="outside"):
        forward_once(xp, make_layer(loss_text()), x, numpy.array([0.0, 4, 1]))
    # An ignored label may be anything, e.g. 255 or -1.
    forward_once(xp, make_layer(loss_text("ignore_label: 255")), x, numpy.array([0.0, 255, 1]))


# -- InfogainLoss ----------------------------------------------------------------------------------


def infogain_ref(x, labels, h, axis=1, ignore=None, mode="VALID"):
    p = softmax_ref(x, axis)
    outer, c = int(numpy.prod(x.shape[:axis])), x.shape[axis]
    p = p.reshape(outer, c, -1)
    inner = p.shape[2]
    labels = labels.reshape(outer, inner)
    loss, count = 0.0, 0
    for i in range(outer):
        for j in range(inner):
            k = int(labels[i, j])
            if ignore is not None and k == ignore:
                continue
            for m in range(c):
                loss -= h[k, m] * numpy.log(max(p[i, m, j], 1e-20))
            count += 1
    norm = {"FULL": outer * inner, "VALID": count, "BATCH_SIZE": outer, "NONE": 1}[mode]
    return loss / max(norm, 1)


H = rng(9).uniform(0, 1, (4, 4))


@pytest.mark.parametrize(
    "loss_param, mode, ignore",
    [
        ("", "VALID", None),
        ("ignore_label: 2", "VALID", 2),
        ("ignore_label: 0 normalization: FULL", "FULL", 0),
        ("normalization: BATCH_SIZE", "BATCH_SIZE", None),
        ("normalization: NONE", "NONE", None),
    ],
)
def test_infogain_third_bottom(xp, loss_param, mode, ignore):
    text = 'type: "InfogainLoss"' + (f" loss_param {{ {loss_param} }}" if loss_param else "")
    got = forward_once(xp, make_layer(text), SPATIAL_X, SPATIAL_LABELS, H)
    assert_allclose(got, infogain_ref(SPATIAL_X, SPATIAL_LABELS, H, 1, ignore, mode))
    check_gradient(xp, make_layer(text), [SPATIAL_X, SPATIAL_LABELS, H])


def test_infogain_identity_is_softmax_loss(xp):
    x, labels = rng().standard_normal((5, 3)), numpy.array([0.0, 2, 1, 1, 0])
    got = forward_once(xp, make_layer('type: "InfogainLoss"'), x, labels, numpy.eye(3))
    assert_allclose(got, softmax_loss_ref(x, labels))


def write_blob_proto(path, array, legacy=False):
    proto = caffe_pb2.BlobProto()
    if legacy:
        proto.num, proto.channels, proto.height, proto.width = 1, 1, *array.shape
    else:
        proto.shape.dim.extend(array.shape)
    proto.data.extend(array.ravel().tolist())
    path.write_bytes(proto.SerializeToString())
    return str(path)


@pytest.mark.parametrize("legacy", [False, True])
def test_infogain_source_file(xp, tmp_path, legacy):
    source = write_blob_proto(tmp_path / "H.binaryproto", H, legacy)
    x = rng().standard_normal((3, 2, 4))
    labels = rng(2).integers(0, 4, (3, 2)).astype(float)
    text = f'type: "InfogainLoss" infogain_loss_param {{ source: "{source}" axis: -1 }}'
    want = infogain_ref(x, labels, H.astype(numpy.float32), axis=2)
    assert_allclose(forward_once(xp, make_layer(text), x, labels), want, rtol=1e-6)
    check_gradient(xp, make_layer(text), [x, labels])
    layer = make_layer(f'{text} top: "loss" top: "prob"')
    _, prob = forward_once(xp, layer, x, labels)
    assert_allclose(prob, softmax_ref(x, 2))


def test_infogain_errors(xp, tmp_path):
    x, labels = rng().standard_normal((3, 4)), numpy.array([0.0, 1, 2])
    with pytest.raises(LayerError, match="source"):
        LayerRig(xp, make_layer('type: "InfogainLoss"'), [x, labels])
    with pytest.raises(LayerError, match="cannot read"):
        LayerRig(
            xp,
            make_layer('type: "InfogainLoss" infogain_loss_param { source: "/no/H" }'),
            [x, labels],
        )
    with pytest.raises(LayerError, match="16"):
        LayerRig(xp, make_layer('type: "InfogainLoss"'), [x, labels, numpy.eye(3)])
    with pytest.raises(LayerError, match="normalize"):
        LayerRig(
            xp, make_layer('type: "InfogainLoss" loss_param { normalize: true }'), [x, labels, H]
        )
    bad = tmp_path / "bad.binaryproto"
    bad.write_bytes(b"\xff\xff\xff")
    with pytest.raises(LayerError, match="BlobProto"):
        LayerRig(
            xp,
            make_layer(f'type: "InfogainLoss" infogain_loss_param {{ source: "{bad}" }}'),
            [x, labels],
        )
    rig = LayerRig(xp, make_layer('type: "InfogainLoss"'), [x, labels, H])
    rig.forward()
    with pytest.raises(LayerError, match="bottom 2"):
        rig.backward([numpy.array(1.0)], [True, False, True])
