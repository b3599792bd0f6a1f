"""Concat, Slice, Split, Flatten, Reshape, Silence, Crop, Tile, BatchReindex, Filter."""

import numpy
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from geeps_net.backend import to_host
from geeps_net.errors import LayerError
from geeps_net.testing import LayerRig, check_gradient, forward_once, make_layer

RNG = numpy.random.default_rng(0)


def normal(*shape):
    return RNG.standard_normal(shape)


def tops(n):
    return " ".join(f'top: "t{i}"' for i in range(n))


def bottoms(n):
    return " ".join(f'bottom: "b{i}"' for i in range(n))


# -- Concat ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "param, axis",
    [("", 1), ("concat_param { axis: 0 }", 0), ("concat_param { axis: -1 }", 2),
     ("concat_param { concat_dim: 2 }", 2)],
)  # fmt: skip
def test_concat(xp, param, axis):
    shapes = [[2, 3, 4], [2, 3, 4], [2, 3, 4]]
    for i, shape in enumerate(shapes):
        shape[axis] = i + 1
    xs = [normal(*s) for s in shapes]
    layer = make_layer(f'type: "Concat" {bottoms(3)} {param}')
    expected_shape = list(shapes[0])
    expected_shape[axis] = 6
    expected = numpy.zeros(expected_shape)
    start = 0
    for x in xs:
        index = [slice(None)] * 3
        index[axis] = slice(start, start + x.shape[axis])
        expected[tuple(index)] = x
        start += x.shape[axis]
    assert_array_equal(forward_once(xp, layer, *xs), expected)
    check_gradient(xp, make_layer(f'type: "Concat" {bottoms(3)} {param}'), xs)


def test_concat_one_bottom_copies(xp):
    x = normal(2, 3)
    assert_array_equal(forward_once(xp, make_layer('type: "Concat"'), x), x)


def test_concat_errors(xp):
    with pytest.raises(LayerError, match="not both"):
        forward_once(
            xp, make_layer('type: "Concat" concat_param { axis: 1 concat_dim: 1 }'), normal(2)
        )
    with pytest.raises(LayerError, match="bottom 1 has shape"):
        forward_once(xp, make_layer('type: "Concat"'), normal(2, 3), normal(3, 3))


# -- Slice -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "param, axis, sizes",
    [("slice_param { slice_point: 1 slice_point: 3 }", 1, [1, 2, 2]),
     ("slice_param { axis: -1 }", 2, [2, 2, 2]),
     ("slice_param { slice_dim: 0 slice_point: 1 }", 0, [1, 1]),
     ("slice_param { axis: 0 slice_point: 2 }", 0, [2, 0])],
)  # fmt: skip
def test_slice(xp, param, axis, sizes):
    x = normal(2, 5, 6)
    layer = make_layer(f'type: "Slice" {tops(len(sizes))} {param}')
    outputs = forward_once(xp, layer, x)
    start = 0
    for out, size in zip(outputs, sizes, strict=True):
        expected = numpy.take(x, range(start, start + size), axis=axis)
        assert_array_equal(out, expected)
        start += size
    check_gradient(xp, make_layer(f'type: "Slice" {tops(len(sizes))} {param}'), [x])


def test_slice_errors(xp):
    with pytest.raises(LayerError, match="evenly divide"):
        forward_once(xp, make_layer(f'type: "Slice" {tops(2)}'), normal(2, 3))
    with pytest.raises(LayerError, match="slice_point"):
        forward_once(
            xp,
            make_layer(f'type: "Slice" {tops(3)} slice_param {{ slice_point: 1 }}'),
            normal(2, 4),
        )
    with pytest.raises(LayerError, match="increase"):
        text = f'type: "Slice" {tops(3)} slice_param {{ slice_point: 2 slice_point: 2 }}'
        forward_once(xp, make_layer(text), normal(2, 4))


# -- Split, Flatten, Reshape, Silence --------------------------------------------------------------


def test_split(xp):
    x = normal(2, 3)
    outputs = forward_once(xp, make_layer(f'type: "Split" {tops(3)}'), x)
    for out in outputs:
        assert_array_equal(out, x)
    rig = LayerRig(xp, make_layer(f'type: "Split" {tops(3)}'), [x])
    diffs = [normal(2, 3) for _ in range(3)]
    assert_allclose(rig.backward(diffs)[0], diffs[0] + diffs[1] + diffs[2])
    check_gradient(xp, make_layer(f'type: "Split" {tops(2)}'), [x])


@pytest.mark.parametrize(
    "param, shape",
    [("", (2, 60)), ("flatten_param { axis: 2 }", (2, 3, 20)),
     ("flatten_param { axis: 1 end_axis: 2 }", (2, 12, 5)),
     ("flatten_param { axis: -3 end_axis: -2 }", (2, 12, 5)),
     ("flatten_param { axis: 0 end_axis: 0 }", (2, 3, 4, 5))],
)  # fmt: skip
def test_flatten(xp, param, shape):
    x = normal(2, 3, 4, 5)
    out = forward_once(xp, make_layer(f'type: "Flatten" {param}'), x)
    assert out.shape == shape
    assert_array_equal(out.ravel(), x.ravel())
    check_gradient(xp, make_layer(f'type: "Flatten" {param}'), [x])


@pytest.mark.parametrize(
    "param, shape",
    [("shape { dim: 0 dim: -1 }", (2, 12)),
     ("shape { dim: 3 dim: 0 dim: 2 }", (3, 4, 2)),
     ("shape { dim: 2 dim: 2 } axis: 1 num_axes: 1", (2, 2, 2, 3)),
     ("shape { dim: 1 } axis: 1 num_axes: 0", (2, 1, 4, 3)),
     ("shape { dim: 1 } axis: -1 num_axes: 0", (2, 4, 3, 1)),
     ("shape { dim: -1 } axis: -3", (2, 12)),
     ("shape { dim: 4 dim: -1 } axis: 0 num_axes: 2", (4, 2, 3))],
)  # fmt: skip
def test_reshape(xp, param, shape):
    x = normal(2, 4, 3)
    layer = make_layer(f'type: "Reshape" reshape_param {{ {param} }}')
    out = forward_once(xp, layer, x)
    assert out.shape == shape
    assert_array_equal(out.ravel(), x.ravel())
    check_gradient(xp, make_layer(f'type: "Reshape" reshape_param {{ {param} }}'), [x])


@pytest.mark.parametrize(
    "param, message",
    [("shape { dim: -1 dim: -1 }", "more than one -1"),
     ("shape { dim: 5 dim: -1 }", "not divisible"),
     ("shape { dim: 5 dim: 5 }", "does not hold"),
     ("shape { dim: 0 dim: 0 dim: 0 dim: 0 }", "no axis 3"),
     ("shape { dim: 1 } axis: 4", "out of range")],
)  # fmt: skip
def test_reshape_errors(xp, param, message):
    with pytest.raises(LayerError, match=message):
        forward_once(
            xp, make_layer(f'type: "Reshape" reshape_param {{ {param} }}'), normal(2, 4, 3)
        )


def test_reshape_refuses_in_place(xp):
    layer = make_layer('type: "Reshape" bottom: "x" top: "x" reshape_param { shape { dim: -1 } }')
    with pytest.raises(LayerError, match="in-place"):
        LayerRig(xp, layer, [normal(2, 3)])


def test_silence(xp):
    layer = make_layer(f'type: "Silence" {bottoms(2)}')
    rig = LayerRig(xp, layer, [normal(2, 3), normal(4)])
    assert rig.forward() == []
    for blob in rig.bottoms:
        blob.diff[...] = 1
    layer.backward(xp, [], [True, False], rig.bottoms)
    assert_array_equal(to_host(rig.bottoms[0].diff), numpy.zeros((2, 3)))
    assert_array_equal(to_host(rig.bottoms[1].diff), numpy.ones(4))


# -- Crop, Tile ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "param, index",
    [("", numpy.s_[:, :, 0:4, 0:3]),
     ("crop_param { offset: 1 }", numpy.s_[:, :, 1:5, 1:4]),
     ("crop_param { offset: 2 offset: 3 }", numpy.s_[:, :, 2:6, 3:6]),
     ("crop_param { axis: 1 offset: 1 offset: 0 offset: 2 }", numpy.s_[:, 1:3, 0:4, 2:5]),
     ("crop_param { axis: -1 offset: 4 }", numpy.s_[:, :, :, 4:7])],
)  # fmt: skip
def test_crop(xp, param, index):
    x, ref = normal(2, 3, 6, 7), normal(1, 2, 4, 3)
    out = forward_once(xp, make_layer(f'type: "Crop" {bottoms(2)} {param}'), x, ref)
    assert_array_equal(out, x[index])
    check_gradient(xp, make_layer(f'type: "Crop" {bottoms(2)} {param}'), [x, ref])


def test_crop_errors(xp):
    with pytest.raises(LayerError, match="out of bounds"):
        forward_once(
            xp,
            make_layer('type: "Crop" crop_param { offset: 3 }'),
            normal(1, 1, 6, 6),
            normal(1, 1, 4, 4),
        )
    with pytest.raises(LayerError, match="2 offsets for 3"):
        text = 'type: "Crop" crop_param { axis: 1 offset: 0 offset: 0 }'
        forward_once(xp, make_layer(text), normal(1, 2, 6, 6), normal(1, 1, 4, 4))


@pytest.mark.parametrize("axis, canonical", [(1, 1), (0, 0), (-1, 2), (2, 2)])
def test_tile(xp, axis, canonical):
    x = normal(2, 3, 2)
    text = f'type: "Tile" tile_param {{ axis: {axis} tiles: 3 }}'
    out = forward_once(xp, make_layer(text), x)
    shape = list(x.shape)
    shape[canonical] *= 3
    expected = numpy.zeros(shape)
    for index in numpy.ndindex(*shape):  # top[..., k, ...] = bottom flat from axis on, repeated
        outer = index[:canonical]
        inner = numpy.ravel_multi_index(index[canonical:], shape[canonical:])
        block = x[outer].ravel()
        expected[index] = block[inner % block.size]
    assert_array_equal(out, expected)
    check_gradient(xp, make_layer(text), [x])


def test_tile_errors(xp):
    with pytest.raises(LayerError, match="tiles"):
        forward_once(xp, make_layer('type: "Tile"'), normal(2, 3))
    with pytest.raises(LayerError, match="positive"):
        forward_once(xp, make_layer('type: "Tile" tile_param { tiles: 0 }'), normal(2, 3))


# -- BatchReindex, Filter --------------------------------------------------------------------------


def test_batch_reindex(xp):
    x, idx = normal(4, 3, 2), numpy.array([2.0, 0.0, 2.0, 3.0, 1.0, 2.0])
    out = forward_once(xp, make_layer('type: "BatchReindex"'), x, idx)
    assert_array_equal(out, numpy.stack([x[int(i)] for i in idx]))
    rig = LayerRig(xp, make_layer('type: "BatchReindex"'), [x, idx])
    rig.forward()
    dy = normal(6, 3, 2)
    expected = numpy.zeros_like(x)
    for k, i in enumerate(idx):
        expected[int(i)] += dy[k]
    assert_allclose(rig.backward([dy], [True, False])[0], expected)
    check_gradient(xp, make_layer('type: "BatchReindex"'), [x, idx])


def test_batch_reindex_errors(xp):
    with pytest.raises(LayerError, match="out of range"):
        forward_once(xp, make_layer('type: "BatchReindex"'), normal(2, 3), numpy.array([0.0, 2.0]))
    with pytest.raises(LayerError, match="1-D"):
        forward_once(xp, make_layer('type: "BatchReindex"'), normal(2, 3), numpy.zeros((2, 1)))


@pytest.mark.parametrize("selector_shape", [(5,), (5, 1, 1)])
def test_filter(xp, selector_shape):
    x, z = normal(5, 3), normal(5, 2, 2)
    selector = numpy.array([1.0, 0.0, 0.0, -2.0, 0.0]).reshape(selector_shape)
    text = f'type: "Filter" {bottoms(3)} {tops(2)}'
    y, w = forward_once(xp, make_layer(text), x, z, selector)
    assert_array_equal(y, numpy.stack([x[0], x[3]]))
    assert_array_equal(w, numpy.stack([z[0], z[3]]))
    rig = LayerRig(xp, make_layer(text), [x, z, selector])
    rig.forward()
    dy, dw = normal(2, 3), normal(2, 2, 2)
    dx, dz, _ = rig.backward([dy, dw], [True, True, False])
    assert_array_equal(dx, [dy[0], [0, 0, 0], [0, 0, 0], dy[1], [0, 0, 0]])
    assert_array_equal(dz[[1, 2, 4]], numpy.zeros((3, 2, 2)))
    assert_array_equal(dz[[0, 3]], dw)
    assert make_layer(text).allow_force_backward(2) is False
    check_gradient(xp, make_layer(text), [x, z, selector])


def test_filter_shapes(xp):
    layer = make_layer(f'type: "Filter" {bottoms(2)} {tops(1)}')
    rig = LayerRig(xp, layer, [normal(4, 2), numpy.array([0.0, 1.0, 1.0, 1.0])])
    assert rig.tops[0].shape == (3, 2)
    rig.bottoms[1].data = None  # unbound selector (net building): every item passes
    layer.reshape(rig.bottoms, rig.tops)
    assert rig.tops[0].shape == (4, 2)
    with pytest.raises(LayerError, match="first dim"):
        forward_once(
            xp, make_layer('type: "Filter" bottom: "a" bottom: "s"'), normal(4, 2), numpy.ones(3)
        )
    with pytest.raises(LayerError, match="must be 1"):
        forward_once(
            xp,
            make_layer('type: "Filter" bottom: "a" bottom: "s"'),
            normal(4, 2),
            numpy.ones((4, 2)),
        )


@pytest.mark.parametrize(
    "text, inputs, top_shape",
    [('type: "BatchReindex"', [normal(3, 2), numpy.array([0.0, 0.0])], (2, 2)),
     ('type: "Crop" crop_param { axis: 1 offset: 1 }', [normal(2, 4), normal(2, 2)], (2, 2)),
     ('type: "Filter" bottom: "x" bottom: "s"', [normal(3, 2), numpy.array([0.0, 1, 0])], (1, 2))],
)  # fmt: skip
def test_backward_overwrites_stale_diffs(xp, text, inputs, top_shape):
    """Bottom diffs are written (=), not added: rows no top element reaches become 0."""
    rig = LayerRig(xp, make_layer(text), inputs)
    rig.forward()
    rig.bottoms[0].diff[...] = numpy.nan
    rig.tops[0].diff[...] = 1.0
    rig.layer.backward(xp, rig.tops, [True, False], rig.bottoms)
    diff = to_host(rig.bottoms[0].diff)
    assert not numpy.isnan(diff).any() and diff.sum() == numpy.prod(top_shape)
