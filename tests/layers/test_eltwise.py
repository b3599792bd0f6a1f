"""Eltwise: SUM (with coeffs), PROD (stable and unstable gradient), MAX (Caffe's tie rule)."""

import numpy
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from geeps_net.backend import to_host
from geeps_net.errors import LayerError
from geeps_net.testing import LayerRig, check_gradient, forward_once, make_layer

RNG = numpy.random.default_rng(3)
BOTTOMS = 'bottom: "a" bottom: "b" bottom: "c"'


def inputs(n=3, shape=(2, 3, 4)):
    return [RNG.standard_normal(shape) for _ in range(n)]


@pytest.mark.parametrize(
    "param, coeffs",
    [("", (1, 1, 1)), ("eltwise_param { coeff: 1 coeff: -0.5 coeff: 2 }", (1, -0.5, 2))],
)
def test_sum(xp, param, coeffs):
    xs = inputs()
    text = f'type: "Eltwise" {BOTTOMS} {param}'
    expected = sum(c * x for c, x in zip(coeffs, xs, strict=True))
    assert_allclose(forward_once(xp, make_layer(text), *xs), expected, rtol=1e-12)
    rig = LayerRig(xp, make_layer(text), xs)
    rig.forward()
    dy = RNG.standard_normal(xs[0].shape)
    for c, dx in zip(coeffs, rig.backward([dy]), strict=True):
        assert_allclose(dx, c * dy)
    check_gradient(xp, make_layer(text), xs)


@pytest.mark.parametrize("stable", ["true", "false"])
@pytest.mark.parametrize("n", [2, 3])
def test_prod(xp, stable, n):
    xs = inputs(n)
    names = " ".join(f'bottom: "{name}"' for name in "abc"[:n])
    text = f'type: "Eltwise" {names} '
    text += f"eltwise_param {{ operation: PROD stable_prod_grad: {stable} }}"
    expected = numpy.ones_like(xs[0])
    for index in numpy.ndindex(*expected.shape):
        for x in xs:
            expected[index] *= x[index]
    assert_allclose(forward_once(xp, make_layer(text), *xs), expected, rtol=1e-12)
    check_gradient(xp, make_layer(text), xs)


def test_prod_unstable_uses_top_over_bottom(xp):
    # Caffe's unstable gradient divides the top by the bottom: 0 / 0 at a zero input.
    xs = [numpy.array([0.0, 2.0]), numpy.array([3.0, 4.0])]
    text = 'type: "Eltwise" bottom: "a" bottom: "b" eltwise_param { operation: PROD '
    rig = LayerRig(xp, make_layer(text + "stable_prod_grad: false }"), xs)
    rig.forward()
    with numpy.errstate(invalid="ignore"):
        da, db = rig.backward([numpy.ones(2)])
    assert numpy.isnan(da[0]) and da[1] == 4.0
    assert_array_equal(db, [0.0, 2.0])
    stable = LayerRig(xp, make_layer(text + "}"), xs)
    stable.forward()
    assert_array_equal(stable.backward([numpy.ones(2)])[0], [3.0, 4.0])


def test_max(xp):
    xs = inputs()
    text = f'type: "Eltwise" {BOTTOMS} eltwise_param {{ operation: MAX }}'
    expected = numpy.maximum(numpy.maximum(xs[0], xs[1]), xs[2])
    assert_array_equal(forward_once(xp, make_layer(text), *xs), expected)
    check_gradient(xp, make_layer(text), xs)


def test_max_ties_follow_caffe(xp):
    # Bottoms 0 and 1 tied: bottom 1 wins; a later bottom tied with the max does not take it.
    xs = [numpy.array([1.0, 1.0, 0.0]), numpy.array([1.0, 0.0, 2.0]), numpy.array([1.0, 1.0, 2.0])]
    text = f'type: "Eltwise" {BOTTOMS} eltwise_param {{ operation: MAX }}'
    rig = LayerRig(xp, make_layer(text), xs)
    assert_array_equal(rig.forward()[0], [1.0, 1.0, 2.0])
    assert_array_equal(to_host(rig.layer.internals["mask"].data), [1, 0, 1])
    dy = numpy.array([5.0, 6.0, 7.0])
    da, db, dc = rig.backward([dy])
    assert_array_equal(da, [0, 6, 0])
    assert_array_equal(db, [5, 0, 7])
    assert_array_equal(dc, [0, 0, 0])


def test_backward_reads():
    def reads(op):
        layer = make_layer(f'type: "Eltwise" bottom: "a" bottom: "b" eltwise_param {{ {op} }}')
        LayerRig(numpy, layer, inputs(2))
        return layer.backward_reads

    assert reads("operation: SUM") == {"top_diff"}
    assert reads("operation: MAX") == {"top_diff"}
    assert reads("operation: PROD") == {"bottom_data", "top_diff"}
    assert reads("operation: PROD stable_prod_grad: false") == {
        "bottom_data",
        "top_data",
        "top_diff",
    }


@pytest.mark.parametrize(
    "param, shapes, message",
    [("eltwise_param { coeff: 1 }", [(2,), (2,)], "one coeff per bottom"),
     ("eltwise_param { operation: PROD coeff: 1 coeff: 2 }", [(2,), (2,)], "only for SUM"),
     ("", [(2,), (3,)], "bottom 1 has shape")],
)  # fmt: skip
def test_errors(xp, param, shapes, message):
    with pytest.raises(LayerError, match=message):
        text = f'type: "Eltwise" bottom: "a" bottom: "b" {param}'
        forward_once(xp, make_layer(text), *[numpy.ones(s) for s in shapes])
