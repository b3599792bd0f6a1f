"""Layers without bottoms: Input, DummyData, Parameter, MemoryData."""

import numpy
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from geeps_net.backend import to_host
from geeps_net.errors import LayerError
from geeps_net.testing import LayerRig, check_gradient, make_layer


def test_input_shapes(xp):
    layer = make_layer('type: "Input" top: "a" top: "b" input_param { shape { dim: 2 dim: 3 } }')
    rig = LayerRig(xp, layer, [])
    assert [t.shape for t in rig.tops] == [(2, 3), (2, 3)]
    text = (
        'type: "Input" top: "a" top: "b" input_param { shape { dim: 2 } shape { dim: 1 dim: 4 } }'
    )
    rig = LayerRig(xp, make_layer(text), [])
    assert [t.shape for t in rig.tops] == [(2,), (1, 4)]
    rig.tops[0].data[...] = xp.asarray([5.0, 6.0])  # filled from outside; forward keeps it
    assert_array_equal(rig.forward()[0], [5.0, 6.0])
    assert layer.has_backward is False


def test_input_keeps_an_outside_reshape():
    layer = make_layer('type: "Input" top: "a" input_param { shape { dim: 2 } }')
    rig = LayerRig(numpy, layer, [])
    rig.tops[0].reshape((5,))
    layer.reshape([], rig.tops)
    assert rig.tops[0].shape == (5,)


def test_input_shape_count():
    text = (
        'type: "Input" top: "a" top: "b" top: "c" input_param { shape { dim: 2 } shape { dim: 1 } }'
    )
    with pytest.raises(LayerError, match="once per top"):
        LayerRig(numpy, make_layer(text), [])


def test_dummy_data_constant_per_top(xp):
    text = """type: "DummyData" top: "y" top: "z"
        dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 1 dim: 2 }
                           data_filler { type: "constant" value: 0.5 }
                           data_filler { type: "constant" value: -2 } }"""
    layer = make_layer(text)
    y, z = LayerRig(xp, layer, []).forward()
    assert_array_equal(y, numpy.full((2, 3), 0.5))
    assert_array_equal(z, numpy.full((1, 2), -2.0))
    assert layer.has_backward is False


def test_dummy_data_defaults_and_legacy_dims(xp):
    text = """type: "DummyData" top: "a" top: "b"
        dummy_data_param { num: 2 channels: 3 channels: 1 height: 4 width: 5 }"""
    a, b = LayerRig(xp, make_layer(text), []).forward()
    assert a.shape == (2, 3, 4, 5) and b.shape == (2, 1, 4, 5)
    assert not a.any() and not b.any()  # default filler: constant 0


def test_dummy_data_random_filler_uses_layer_rng(xp):
    text = """type: "DummyData" top: "a"
        dummy_data_param { shape { dim: 3 dim: 4 } data_filler { type: "gaussian" std: 2 } }"""
    layer = make_layer(text)
    rig = LayerRig(xp, layer, [])
    layer.rng = numpy.random.default_rng(7)
    first, second = rig.forward()[0], rig.forward()[0]
    expected = numpy.random.default_rng(7).normal(0.0, 2.0, size=(2, 3, 4))
    assert_allclose(first, expected[0])
    assert_allclose(second, expected[1])  # refilled every forward


@pytest.mark.parametrize(
    "param, message",
    [("shape { dim: 2 } num: 2", "both shape and legacy"),
     ("shape { dim: 2 } shape { dim: 2 } shape { dim: 2 }", "once per top"),
     ("shape { dim: 2 } data_filler { type: 'nope' }", "unknown filler"),
     ("", "needs shape")],
)  # fmt: skip
def test_dummy_data_errors(param, message):
    with pytest.raises(LayerError, match=message):
        LayerRig(
            numpy,
            make_layer(f'type: "DummyData" top: "a" top: "b" dummy_data_param {{ {param} }}'),
            [],
        )


def test_parameter(xp):
    layer = make_layer('type: "Parameter" parameter_param { shape { dim: 2 dim: 3 } }')
    value = numpy.arange(6.0).reshape(2, 3)
    rig = LayerRig(xp, layer, [], params=[value])
    assert [b.shape for b in layer.blobs] == [(2, 3)] and layer.fillers == [None]
    assert_array_equal(rig.forward()[0], value)
    dy = numpy.full((2, 3), 0.25)
    layer.blobs[0].diff[...] = 1.0
    rig.tops[0].diff[...] = xp.asarray(dy)
    layer.backward(xp, rig.tops, [], [])
    assert_array_equal(to_host(layer.blobs[0].diff), 1.0 + dy)  # accumulated
    check_gradient(xp, make_layer('type: "Parameter" parameter_param { shape { dim: 3 } }'), [])


def memory_layer():
    text = """type: "MemoryData" top: "data" top: "label"
        memory_data_param { batch_size: 2 channels: 1 height: 2 width: 3 }"""
    return make_layer(text)


def test_memory_data_cycles(xp):
    layer = memory_layer()
    rig = LayerRig(xp, layer, [], dtype="float32")
    assert [t.shape for t in rig.tops] == [(2, 1, 2, 3), (2,)]
    data = numpy.arange(4 * 6, dtype=numpy.float32).reshape(4, 1, 2, 3)
    layer.set_input_arrays(data, numpy.array([0.0, 1.0, 2.0, 3.0])[:, None, None, None])
    for start in (0, 2, 0):
        x, labels = rig.forward()
        assert_array_equal(x, data[start : start + 2])
        assert_array_equal(labels, [start, start + 1])


def test_memory_data_errors():
    layer = memory_layer()
    rig = LayerRig(numpy, layer, [])
    with pytest.raises(LayerError, match="set_input_arrays"):
        rig.forward()
    with pytest.raises(LayerError, match="multiple of batch_size"):
        layer.set_input_arrays(numpy.zeros((3, 1, 2, 3)), numpy.zeros(3))
    with pytest.raises(LayerError, match="data array shape"):
        layer.set_input_arrays(numpy.zeros((2, 2, 2, 3)), numpy.zeros(2))
    with pytest.raises(LayerError, match="labels shape"):
        layer.set_input_arrays(numpy.zeros((2, 1, 2, 3)), numpy.zeros(4))
    with pytest.raises(LayerError, match="positive"):
        LayerRig(numpy, make_layer('type: "MemoryData" top: "a" top: "b"'), [])
