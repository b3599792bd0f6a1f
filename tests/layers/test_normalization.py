"""BatchNorm (TRAIN, TEST, statistics update), Scale and Bias (axis/num_axes/2-bottom/bias), MVN."""

import numpy
import pytest
from numpy.testing import assert_allclose

from geeps_net.backend import to_host
from geeps_net.errors import LayerError
from geeps_net.layer import TEST, TRAIN
from geeps_net.testing import LayerRig, check_gradient, forward_once, make_layer

RNG = numpy.random.default_rng(11)


def normal(*shape):
    return RNG.standard_normal(shape)


# -- BatchNorm -------------------------------------------------------------------------------------


def batch_norm_reference(x, eps):
    """Per channel (axis 1) over the other axes: (x - mean) / sqrt(biased var + eps), by loops."""
    x2 = x.reshape(x.shape[0], x.shape[1] if x.ndim > 1 else 1, -1)
    y, means, variances = numpy.empty_like(x2), [], []
    for c in range(x2.shape[1]):
        values = x2[:, c, :].ravel()
        mean = sum(values) / values.size
        var = sum((v - mean) ** 2 for v in values) / values.size
        y[:, c, :] = (x2[:, c, :] - mean) / numpy.sqrt(var + eps)
        means.append(mean)
        variances.append(var)
    return y.reshape(x.shape), numpy.array(means), numpy.array(variances)


def test_batch_norm_train_updates_statistics(xp):
    x = normal(4, 3, 2, 2)
    layer = make_layer(
        "type: 'BatchNorm' batch_norm_param { moving_average_fraction: 0.9 eps: 1e-3 }"
    )
    start = [normal(3), numpy.abs(normal(3)), numpy.array([2.0])]
    rig = LayerRig(xp, layer, [x], params=[p.copy() for p in start])
    maf, eps = float(numpy.float32(0.9)), float(numpy.float32(1e-3))  # proto floats
    expected, mean, var = batch_norm_reference(x, eps)
    assert_allclose(rig.forward()[0], expected, rtol=1e-10, atol=1e-12)
    m = 4 * 2 * 2
    want = [maf * start[0] + mean, maf * start[1] + m / (m - 1) * var, maf * start[2] + 1]
    for blob, w in zip(layer.blobs, want, strict=True):
        assert_allclose(to_host(blob.data), w, rtol=1e-12)
    rig.forward()  # a second batch folds in again
    assert_allclose(to_host(layer.blobs[2].data), [maf * want[2][0] + 1], rtol=1e-12)
    assert_allclose(to_host(layer.blobs[0].data), maf * want[0] + mean, rtol=1e-12)


def test_batch_norm_train_gradient(xp):
    check_gradient(xp, make_layer('type: "BatchNorm"'), [(3, 2, 2, 3)])
    check_gradient(xp, make_layer('type: "BatchNorm"'), [(6, 4)])  # 2-D: channels = axis 1


@pytest.mark.parametrize(
    "text, phase",
    [('type: "BatchNorm"', TEST),
     ('type: "BatchNorm" batch_norm_param { use_global_stats: true }', TRAIN)],
)  # fmt: skip
def test_batch_norm_global_stats(xp, text, phase):
    x = normal(4, 3, 2, 2)
    params = [normal(3), numpy.abs(normal(3)) + 0.5, numpy.array([2.0])]
    layer = make_layer(text, phase)
    out = forward_once(xp, layer, x, params=params)
    mean, var = params[0] / 2.0, params[1] / 2.0
    expected = numpy.empty_like(x)
    for c in range(3):
        expected[:, c] = (x[:, c] - mean[c]) / numpy.sqrt(var[c] + 1e-5)
    assert_allclose(out, expected, rtol=1e-10)
    for blob, p in zip(layer.blobs, params, strict=True):  # the statistics stay as they are
        assert_allclose(to_host(blob.data), p)
    # Caffe treats the global statistics as constants: no gradient reaches the blobs.
    check_gradient(xp, make_layer(text, phase), [x], params=params, check_params=False)


def test_batch_norm_global_stats_unset(xp):
    x = normal(2, 3)
    layer = make_layer('type: "BatchNorm"', TEST)  # blob 2 = 0: mean = var = 0
    assert_allclose(
        forward_once(xp, layer, x), x / numpy.sqrt(float(numpy.float32(1e-5))), rtol=1e-12
    )


def test_batch_norm_params_are_frozen():
    layer = make_layer('type: "BatchNorm"')
    LayerRig(numpy, layer, [normal(2, 3)])
    assert [p.lr_mult for p in layer.layer_param.param] == [0, 0, 0]
    assert [b.shape for b in layer.blobs] == [(3,), (3,), (1,)]
    assert layer.fillers == [None, None, None]
    with pytest.raises(LayerError, match="statistics"):
        LayerRig(numpy, make_layer('type: "BatchNorm" param { lr_mult: 1 }'), [normal(2, 3)])


def test_batch_norm_in_place(xp):
    x, dy = normal(3, 2, 4), normal(3, 2, 4)
    rig = LayerRig(xp, make_layer('type: "BatchNorm"'), [x])
    y, dx = rig.forward()[0], rig.backward([dy])[0]
    rig = LayerRig(xp, make_layer('type: "BatchNorm" bottom: "x" top: "x"'), [x])
    assert_allclose(rig.forward()[0], y)
    rig.tops[0].diff[...] = xp.asarray(dy)
    rig.layer.backward(xp, rig.tops, [True], rig.bottoms)
    assert_allclose(to_host(rig.bottoms[0].diff), dx, rtol=1e-12)


# -- Scale and Bias --------------------------------------------------------------------------------

# (param text, shape of the learned blob, axis it is laid on) for a (2, 3, 4, 2) bottom
AFFINE_VARIANTS = [
    ("", (3,), 1),
    ("axis: 0 num_axes: 2", (2, 3), 0),
    ("num_axes: -1", (3, 4, 2), 1),
    ("axis: -2 num_axes: 2", (4, 2), 2),
    ("num_axes: 0", (), 0),
    ("axis: 2 num_axes: 0", (), 0),
]


def broadcast(p, axis, ndim=4):
    """p laid on bottom axes axis.. of an ndim-D blob."""
    return p.reshape((1,) * axis + p.shape + (1,) * (ndim - axis - p.ndim))


@pytest.mark.parametrize("param, shape, axis", AFFINE_VARIANTS)
def test_scale(xp, param, shape, axis):
    x, s, b = normal(2, 3, 4, 2), normal(*shape), normal(*shape)
    text = f'type: "Scale" scale_param {{ {param} }}'
    layer = make_layer(text)
    assert_allclose(forward_once(xp, layer, x, params=[s]), x * broadcast(s, axis))
    assert [blob.shape for blob in layer.blobs] == [shape]
    check_gradient(xp, make_layer(text), [x], params=[s])
    text = f'type: "Scale" scale_param {{ {param} bias_term: true }}'
    layer = make_layer(text)
    out = forward_once(xp, layer, x, params=[s, b])
    assert_allclose(out, x * broadcast(s, axis) + broadcast(b, axis))
    check_gradient(xp, make_layer(text), [x], params=[s, b])


@pytest.mark.parametrize("param, shape, axis", AFFINE_VARIANTS)
def test_bias(xp, param, shape, axis):
    x, b = normal(2, 3, 4, 2), normal(*shape)
    text = f'type: "Bias" bias_param {{ {param} }}'
    assert_allclose(forward_once(xp, make_layer(text), x, params=[b]), x + broadcast(b, axis))
    check_gradient(xp, make_layer(text), [x], params=[b])


@pytest.mark.parametrize("kind", ["Scale", "Bias"])
@pytest.mark.parametrize(
    "param, shape, axis", [("", (3, 4), 1), ("axis: 0", (2,), 0), ("axis: -1", (2,), 3)]
)
def test_two_bottoms(xp, kind, param, shape, axis):
    x, p = normal(2, 3, 4, 2), normal(*shape)
    text = f'type: "{kind}" bottom: "x" bottom: "p" {kind.lower()}_param {{ {param} }}'
    layer = make_layer(text)
    out = forward_once(xp, layer, x, p)
    assert layer.blobs == []
    expected = x * broadcast(p, axis) if kind == "Scale" else x + broadcast(p, axis)
    assert_allclose(out, expected)
    check_gradient(xp, make_layer(text), [x, p])


def test_scale_two_bottoms_with_bias(xp):
    x, s, b = normal(2, 3, 4), normal(3, 4), normal(3, 4)
    text = 'type: "Scale" bottom: "x" bottom: "s" scale_param { bias_term: true }'
    layer = make_layer(text)
    out = forward_once(xp, layer, x, s, params=[b])
    assert [blob.shape for blob in layer.blobs] == [(3, 4)]
    assert_allclose(out, x * s + b)
    check_gradient(xp, make_layer(text), [x, s], params=[b])


def test_affine_default_fillers(xp):
    layer = make_layer('type: "Scale" scale_param { bias_term: true }')
    rig = LayerRig(xp, layer, [normal(2, 3)])
    assert_allclose(to_host(layer.blobs[0].data), numpy.ones(3))
    assert_allclose(to_host(layer.blobs[1].data), numpy.zeros(3))
    layer = make_layer('type: "Bias"')
    rig = LayerRig(xp, layer, [normal(2, 3)])
    assert_allclose(to_host(rig.layer.blobs[0].data), numpy.zeros(3))
    text = (
        'type: "Scale" scale_param { filler { value: 2 } bias_term: true bias_filler { value: 3 } }'
    )
    layer = make_layer(text)
    LayerRig(xp, layer, [normal(2, 3)])
    assert_allclose(to_host(layer.blobs[0].data), [2, 2, 2])
    assert_allclose(to_host(layer.blobs[1].data), [3, 3, 3])


@pytest.mark.parametrize("kind", ["Scale", "Bias"])
def test_affine_in_place(xp, kind):
    x, dy = normal(2, 3, 4), normal(2, 3, 4)
    param = " scale_param { bias_term: true }" if kind == "Scale" else ""
    params = [normal(3), normal(3)]
    rig = LayerRig(xp, make_layer(f'type: "{kind}"{param}'), [x], params=params)
    y, dx = rig.forward()[0], rig.backward([dy])[0]
    pdiffs = rig.param_diffs()
    layer = make_layer(f'type: "{kind}" bottom: "x" top: "x"{param}')
    rig = LayerRig(xp, layer, [x], params=params)
    assert_allclose(rig.forward()[0], y)
    rig.tops[0].diff[...] = xp.asarray(dy)
    layer.backward(xp, rig.tops, [True], rig.bottoms)
    assert_allclose(to_host(rig.bottoms[0].diff), dx)
    for got, want in zip(rig.param_diffs(), pdiffs, strict=True):
        assert_allclose(got, want, rtol=1e-12)


def test_param_diffs_accumulate(xp):
    rig = LayerRig(xp, make_layer('type: "Scale" scale_param { bias_term: true }'), [normal(2, 3)])
    rig.forward()
    for blob in rig.layer.blobs:
        blob.diff[...] = 1.0
    dy = normal(2, 3)
    rig.layer.backward(xp, [type("T", (), {"diff": xp.asarray(dy)})()], [False], rig.bottoms)
    assert_allclose(to_host(rig.layer.blobs[1].diff), 1.0 + dy.sum(axis=0))


@pytest.mark.parametrize(
    "text, shapes, message",
    [('type: "Scale" scale_param { axis: 1 num_axes: 3 }', [(2, 3)], "extends past"),
     ('type: "Bias" bias_param { num_axes: -2 }', [(2, 3)], "num_axes"),
     ('type: "Scale" bottom: "x" bottom: "s"', [(2, 3), (2,)], "does not match"),
     ('type: "Bias" bias_param { axis: 2 }', [(2, 3)], "out of range")],
)  # fmt: skip
def test_affine_errors(xp, text, shapes, message):
    with pytest.raises(LayerError, match=message):
        forward_once(xp, make_layer(text), *[normal(*s) for s in shapes])


# -- MVN -------------------------------------------------------------------------------------------


def mvn_reference(x, normalize, across, eps=1e-9):
    rows = x.reshape(x.shape[0] if across else x.shape[0] * x.shape[1], -1)
    out = numpy.empty_like(rows)
    for i, row in enumerate(rows):
        centred = row - sum(row) / row.size
        if normalize:
            centred = centred / (numpy.sqrt(sum(centred**2) / row.size) + eps)
        out[i] = centred
    return out.reshape(x.shape)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("across", [False, True])
def test_mvn(xp, normalize, across):
    x = normal(2, 3, 2, 3)
    param = f"normalize_variance: {str(normalize).lower()} across_channels: {str(across).lower()}"
    text = f'type: "MVN" mvn_param {{ {param} }}'
    assert_allclose(forward_once(xp, make_layer(text), x), mvn_reference(x, normalize, across))
    check_gradient(xp, make_layer(text), [x])


def test_mvn_eps_after_root(xp):
    x = numpy.array([[[1.0, 3.0]]])  # std 1
    out = forward_once(xp, make_layer('type: "MVN" mvn_param { eps: 0.5 }'), x)
    assert_allclose(out, [[[-1 / 1.5, 1 / 1.5]]])
