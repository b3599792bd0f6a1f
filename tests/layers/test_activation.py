import numpy
from numpy.testing import assert_allclose

from geeps_net.testing import check_gradient, forward_once, make_layer


def test_relu(xp):
    layer = make_layer('type: "ReLU" relu_param { negative_slope: 0.25 }')
    x = numpy.random.default_rng(0).standard_normal((2, 3, 4, 5))
    assert_allclose(forward_once(xp, layer, x), numpy.where(x > 0, x, 0.25 * x))
    check_gradient(xp, make_layer('type: "ReLU"'), [(2, 3, 4, 5)], kink=0.0)
