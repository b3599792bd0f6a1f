import numpy
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from geeps_net.backend import to_host
from geeps_net.errors import LayerError
from geeps_net.layer import TEST, TRAIN
from geeps_net.testing import LayerRig, check_gradient, forward_once, make_layer

SHAPE = (2, 3, 2, 2)


def normal(shape=SHAPE, seed=0):
    return numpy.random.default_rng(seed).standard_normal(shape)


def positive(shape=SHAPE, seed=0):
    return numpy.random.default_rng(seed).uniform(0.5, 2.0, shape)


def backward_both_ways(xp, text, x, params=None, phase=TRAIN):
    """(dx, param diffs) of `text` run out of place, and the same run in place (top = bottom)."""
    results = []
    for blobs in ('bottom: "x" top: "y"', 'bottom: "x" top: "x"'):
        rig = LayerRig(xp, make_layer(f"{text} {blobs}", phase), [x], params=params)
        rig.forward()
        dy = numpy.random.default_rng(5).standard_normal(x.shape)
        results.append((rig.backward([dy])[0], rig.param_diffs()))
    return results


def assert_in_place_matches(xp, text, x, params=None, phase=TRAIN):
    (dx, dp), (dx_in, dp_in) = backward_both_ways(xp, text, x, params, phase)
    assert_allclose(dx_in, dx, rtol=1e-12)
    for a, b in zip(dp_in, dp, strict=True):
        assert_allclose(a, b, rtol=1e-12)


def test_relu(xp):
    layer = make_layer('type: "ReLU" relu_param { negative_slope: 0.25 }')
    x = numpy.random.default_rng(0).standard_normal((2, 3, 4, 5))
    assert_allclose(forward_once(xp, layer, x), numpy.where(x > 0, x, 0.25 * x))
    check_gradient(xp, make_layer('type: "ReLU"'), [(2, 3, 4, 5)], kink=0.0)
    check_gradient(
        xp, make_layer('type: "ReLU" relu_param { negative_slope: 0.25 }'), [SHAPE], kink=0
    )
    assert_in_place_matches(xp, 'type: "ReLU" relu_param { negative_slope: 0.25 }', normal())
    assert_in_place_matches(xp, 'type: "ReLU"', normal())  # dx is dy: no mask written first


def test_sigmoid(xp):
    x = normal()
    assert_allclose(forward_once(xp, make_layer('type: "Sigmoid"'), x), 1 / (1 + numpy.exp(-x)))
    assert make_layer('type: "Sigmoid"').backward_reads == {"top_data", "top_diff"}
    check_gradient(xp, make_layer('type: "Sigmoid"'), [SHAPE])
    assert_in_place_matches(xp, 'type: "Sigmoid"', x)
    big = numpy.array([[-800.0, 800.0]])
    with numpy.errstate(all="raise"):  # no overflow warning on huge inputs
        assert_allclose(forward_once(xp, make_layer('type: "Sigmoid"'), big), [[0.0, 1.0]])


def test_tanh(xp):
    x = normal()
    assert_allclose(forward_once(xp, make_layer('type: "TanH"'), x), numpy.tanh(x))
    assert make_layer('type: "TanH"').backward_reads == {"top_data", "top_diff"}
    check_gradient(xp, make_layer('type: "TanH"'), [SHAPE])
    assert_in_place_matches(xp, 'type: "TanH"', x)


def test_absval(xp):
    x = normal()
    assert_allclose(forward_once(xp, make_layer('type: "AbsVal"'), x), numpy.abs(x))
    check_gradient(xp, make_layer('type: "AbsVal"'), [SHAPE], kink=0.0)
    with pytest.raises(LayerError, match="in-place"):
        LayerRig(xp, make_layer('type: "AbsVal" bottom: "x" top: "x"'), [x])


@pytest.mark.parametrize(
    "power, scale, shift",
    [(2.0, 1.5, 0.5), (3.0, 1.0, 0.0), (0.5, 2.0, 1.0), (1.0, -2.0, 0.5), (-1.5, 0.5, 2.0)],
)
def test_power(xp, power, scale, shift):
    text = f'type: "Power" power_param {{ power: {power} scale: {scale} shift: {shift} }}'
    x = positive()  # keeps shift + scale * x > 0 for the fractional and negative powers
    assert_allclose(forward_once(xp, make_layer(text), x), (shift + scale * x) ** power)
    check_gradient(xp, make_layer(text), [x])
    assert_in_place_matches(xp, text, x)


@pytest.mark.parametrize(
    "param, value", [("power: 0 scale: 2 shift: 1", 1.0), ("power: 2 scale: 0 shift: 3", 9.0)]
)
def test_power_constant(xp, param, value):
    """power * scale == 0: a constant top and a zero gradient, as in Caffe."""
    text = f'type: "Power" power_param {{ {param} }}'
    x = normal()
    assert_allclose(forward_once(xp, make_layer(text), x), numpy.full(SHAPE, value))
    rig = LayerRig(xp, make_layer(text), [x])
    rig.forward()
    assert_array_equal(rig.backward([numpy.ones(SHAPE)])[0], 0.0)
    check_gradient(xp, make_layer(text), [x])


def test_bnll(xp):
    x = normal() * 3
    assert_allclose(forward_once(xp, make_layer('type: "BNLL"'), x), numpy.log1p(numpy.exp(x)))
    check_gradient(xp, make_layer('type: "BNLL"'), [x])
    assert_in_place_matches(xp, 'type: "BNLL"', x)
    big = numpy.array([[-1000.0, 1000.0]])
    with numpy.errstate(over="raise"):
        assert_allclose(forward_once(xp, make_layer('type: "BNLL"'), big), [[0.0, 1000.0]])


@pytest.mark.parametrize("alpha", [None, 0.5, -0.3])
def test_elu(xp, alpha):
    text = 'type: "ELU"' + ("" if alpha is None else f" elu_param {{ alpha: {alpha} }}")
    a = 1.0 if alpha is None else alpha
    x = normal()
    assert_allclose(
        forward_once(xp, make_layer(text), x), numpy.where(x > 0, x, a * (numpy.exp(x) - 1))
    )
    check_gradient(xp, make_layer(text), [SHAPE], kink=0.0)
    assert_in_place_matches(xp, text, x)  # alpha < 0 keeps a copy of x


PRELU_CASES = [
    ("", (2, 3, 2, 2)),
    ("prelu_param { channel_shared: true }", (2, 3, 2, 2)),
    ("", (4, 3)),
    ("prelu_param { filler { type: 'uniform' min: -1 max: 1 } }", (2, 3, 4)),
]


@pytest.mark.parametrize("param, shape", PRELU_CASES)
def test_prelu(xp, param, shape):
    text = f'type: "PReLU" {param}'
    shared = "channel_shared" in param
    x = normal(shape)
    slope = numpy.array(-0.4) if shared else numpy.linspace(-0.5, 0.7, shape[1])
    a = slope if shared else slope.reshape((-1,) + (1,) * (len(shape) - 2))
    assert_allclose(
        forward_once(xp, make_layer(text), x, params=[slope]), numpy.where(x > 0, x, a * x)
    )
    check_gradient(xp, make_layer(text), [x], params=[slope], kink=0.0)
    assert_in_place_matches(xp, text, x, params=[slope])
    # Backward reads the copy of x: in place, x itself is overwritten by y.
    assert (
        "bottom_copy"
        in LayerRig(xp, make_layer(f'{text} bottom: "x" top: "x"'), [x]).layer.internals
    )


def test_prelu_blob_shape_and_default_filler(xp):
    rig = LayerRig(xp, make_layer('type: "PReLU"'), [normal()])
    assert rig.layer.blobs[0].shape == (3,)
    assert_allclose(rig.layer.blobs[0].data, 0.25)
    rig = LayerRig(xp, make_layer('type: "PReLU" prelu_param { channel_shared: true }'), [normal()])
    assert rig.layer.blobs[0].shape == ()  # Caffe stores the shared slope as a 0-axis blob
    assert_allclose(rig.layer.blobs[0].data, 0.25)
    with pytest.raises(LayerError, match="at least 2 axes"):
        LayerRig(xp, make_layer('type: "PReLU"'), [numpy.ones(4)])


def test_prelu_accumulates_param_diff(xp):
    rig = LayerRig(xp, make_layer('type: "PReLU"'), [normal()])
    rig.forward()
    dy = normal(seed=3)
    rig.backward([dy])
    once = rig.param_diffs()[0]
    rig.layer.backward(xp, rig.tops, [True], rig.bottoms)  # param diff not zeroed: adds up
    assert_allclose(rig.param_diffs()[0], 2 * once)


@pytest.mark.parametrize(
    "param, fn",
    [
        ("", numpy.exp),
        ("exp_param { base: 2 scale: 0.5 shift: 1 }", lambda x: 2.0 ** (1 + 0.5 * x)),
        ("exp_param { scale: -1 shift: 0.3 }", lambda x: numpy.exp(0.3 - x)),
    ],
)
def test_exp(xp, param, fn):
    text = f'type: "Exp" {param}'
    x = normal()
    assert_allclose(forward_once(xp, make_layer(text), x), fn(x))
    check_gradient(xp, make_layer(text), [x])
    assert_in_place_matches(xp, text, x)


@pytest.mark.parametrize(
    "param, fn",
    [
        ("", numpy.log),
        ("log_param { base: 10 scale: 2 shift: 0.5 }", lambda x: numpy.log10(0.5 + 2 * x)),
        ("log_param { scale: 3 shift: 1 }", lambda x: numpy.log(1 + 3 * x)),
    ],
)
def test_log(xp, param, fn):
    text = f'type: "Log" {param}'
    x = positive()
    assert_allclose(forward_once(xp, make_layer(text), x), fn(x))
    check_gradient(xp, make_layer(text), [x])
    assert_in_place_matches(xp, text, x)


def test_exp_log_refuse_bad_base(xp):
    for text in ('type: "Exp" exp_param { base: 0 }', 'type: "Log" log_param { base: -2 }'):
        with pytest.raises(LayerError, match="strictly positive"):
            LayerRig(xp, make_layer(text), [normal()])


@pytest.mark.parametrize("threshold", [None, 0.3])
def test_threshold(xp, threshold):
    text = 'type: "Threshold"' + (
        "" if threshold is None else f" threshold_param {{ threshold: {threshold} }}"
    )
    t = 0.0 if threshold is None else numpy.float32(threshold)
    x = numpy.concatenate([normal().ravel(), [float(t)]])  # x == threshold gives 0: strict >
    assert_array_equal(forward_once(xp, make_layer(text), x), (x > t).astype(float))
    assert not make_layer(text).has_backward


def test_clip(xp):
    text = 'type: "Clip" clip_param { min: -0.5 max: 0.5 }'
    x = normal()
    assert_allclose(
        forward_once(xp, make_layer(text), x), numpy.minimum(numpy.maximum(x, -0.5), 0.5)
    )
    check_gradient(xp, make_layer(text), [x], kink=0.5)
    assert_in_place_matches(xp, text, x)
    text = 'type: "Clip" clip_param { min: -0.2 max: 1.1 }'
    assert_allclose(forward_once(xp, make_layer(text), x), numpy.clip(x, -0.2, 1.1), rtol=1e-6)
    with pytest.raises(LayerError, match="clip_param"):
        LayerRig(xp, make_layer('type: "Clip"'), [x])


@pytest.mark.parametrize("beta", [None, 2.0, -0.5])
def test_swish(xp, beta):
    text = 'type: "Swish"' + ("" if beta is None else f" swish_param {{ beta: {beta} }}")
    b = 1.0 if beta is None else beta
    x = normal()
    assert_allclose(forward_once(xp, make_layer(text), x), x / (1 + numpy.exp(-b * x)))
    check_gradient(xp, make_layer(text), [x])
    assert_in_place_matches(xp, text, x)


def test_dropout_train(xp):
    text = 'type: "Dropout" dropout_param { dropout_ratio: 0.3 }'
    x = normal((4, 5, 6, 7)) + 5  # no zeros in x: y == 0 exactly where dropped
    rig = LayerRig(xp, make_layer(text), [x])
    rig.layer.rng = numpy.random.default_rng(7)
    y = rig.forward()[0]
    mask = to_host(rig.layer.internals["mask"].data)
    assert_allclose(y, x * mask / 0.7)
    assert abs(mask.mean() - 0.7) < 0.05
    keep = numpy.random.default_rng(7).random(x.shape, dtype=numpy.float32) >= numpy.float32(0.3)
    assert_array_equal(mask, keep)  # drawn from the layer's own generator: reproducible
    dy = normal(x.shape, seed=2)
    assert_allclose(rig.backward([dy])[0], dy * mask / 0.7)
    check_gradient(xp, make_layer(text), [SHAPE])
    assert_in_place_matches(xp, text, normal())
    assert make_layer(text).backward_reads == {"top_diff"}


def test_dropout_test_phase(xp):
    text = 'type: "Dropout"'
    x = normal()
    assert_array_equal(forward_once(xp, make_layer(text, TEST), x), x)
    rig = LayerRig(xp, make_layer(text, TEST), [x])
    rig.forward()
    assert "mask" not in rig.layer.internals
    assert_array_equal(rig.backward([2 * x])[0], 2 * x)
    assert_in_place_matches(xp, text, x, phase=TEST)
    with pytest.raises(LayerError, match="dropout_ratio"):
        LayerRig(xp, make_layer('type: "Dropout" dropout_param { dropout_ratio: 1 }'), [x])
