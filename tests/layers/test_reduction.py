"""Reduction: SUM, ASUM, SUMSQ, MEAN over the tail axes from `axis`, times coeff."""

import numpy
import pytest
from numpy.testing import assert_allclose

from geeps_net.errors import LayerError
from geeps_net.testing import check_gradient, forward_once, make_layer

REFERENCES = {  # one flattened row of the reduced axes -> its value
    "SUM": lambda row: sum(row),
    "ASUM": lambda row: sum(abs(v) for v in row),
    "SUMSQ": lambda row: sum(v * v for v in row),
    "MEAN": lambda row: sum(row) / len(row),
}


def reference(x, operation, axis, coeff):
    axis = axis % x.ndim
    leading = x.shape[:axis]
    out = numpy.zeros(leading)
    for index in numpy.ndindex(*leading):
        out[index] = coeff * REFERENCES[operation](list(x[index].ravel()))
    return out


@pytest.mark.parametrize("operation", list(REFERENCES))
@pytest.mark.parametrize("axis, coeff", [(0, 1.0), (1, -2.5), (-1, 0.5), (2, 1.0)])
def test_reduction(xp, operation, axis, coeff):
    x = numpy.random.default_rng(5).standard_normal((2, 3, 4))
    param = f"operation: {operation} axis: {axis} coeff: {coeff}"
    text = f'type: "Reduction" reduction_param {{ {param} }}'
    out = forward_once(xp, make_layer(text), x)
    expected = reference(x, operation, axis, coeff)
    assert out.shape == expected.shape
    assert_allclose(out, expected, rtol=1e-12)
    check_gradient(xp, make_layer(text), [x], kink=0.0)


def test_default_is_sum_to_scalar(xp):
    x = numpy.arange(6.0).reshape(2, 3)
    out = forward_once(xp, make_layer('type: "Reduction"'), x)
    assert out.shape == () and out == 15.0


def test_axis_out_of_range(xp):
    with pytest.raises(LayerError, match="axis 3 out of range"):
        forward_once(
            xp, make_layer('type: "Reduction" reduction_param { axis: 3 }'), numpy.ones((2, 3))
        )


def test_backward_reads():
    assert make_layer('type: "Reduction"').backward_reads >= {"bottom_data"}  # before setup
    for operation, reads_data in [("SUM", False), ("MEAN", False), ("ASUM", True), ("SUMSQ", True)]:
        layer = make_layer(f'type: "Reduction" reduction_param {{ operation: {operation} }}')
        forward_once(numpy, layer, numpy.ones(3))
        assert ("bottom_data" in layer.backward_reads) is reads_data
