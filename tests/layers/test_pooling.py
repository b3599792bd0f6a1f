import math

import numpy
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import geeps_net.backend as backend
import geeps_net.layers.pool_kernels as pool_kernels
from geeps_net.errors import LayerError
from geeps_net.layers.pool_kernels import (
    ave_pool_backward,
    mask_dtype,
    max_pool_backward,
    max_pool_forward,
    pool_geometry,
)
from geeps_net.testing import (
    LayerRig,
    check_backward_reads,
    check_gradient,
    forward_once,
    make_layer,
)

FLT_MAX = float(numpy.finfo(numpy.float32).max)


def pooled_size(size, kernel, pad, stride, ceil_mode=True, any_pad=None):
    rounding = math.ceil if ceil_mode else math.floor
    out = int(rounding((size + 2 * pad - kernel) / stride)) + 1
    if (pad if any_pad is None else any_pad) and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def pool_reference(x, method, kernel, pad, stride, ceil_mode=True):
    """Caffe's pooling_layer.cpp, one window at a time: (top, mask as flat h·W + w)."""
    num, channels, height, width = x.shape
    any_pad = pad[0] or pad[1]
    oh = pooled_size(height, kernel[0], pad[0], stride[0], ceil_mode, any_pad)
    ow = pooled_size(width, kernel[1], pad[1], stride[1], ceil_mode, any_pad)
    top = numpy.zeros((num, channels, oh, ow))
    mask = numpy.full((num, channels, oh, ow), -1.0)
    for ph in range(oh):
        for pw in range(ow):
            h0, w0 = ph * stride[0] - pad[0], pw * stride[1] - pad[1]
            h1, w1 = min(h0 + kernel[0], height + pad[0]), min(w0 + kernel[1], width + pad[1])
            pool_size = (h1 - h0) * (w1 - w0)
            h0, w0, h1, w1 = max(h0, 0), max(w0, 0), min(h1, height), min(w1, width)
            for n in range(num):
                for c in range(channels):
                    window = x[n, c, h0:h1, w0:w1]
                    if method == "AVE":
                        top[n, c, ph, pw] = window.sum() / pool_size
                        continue
                    best, where = -FLT_MAX, -1
                    for h in range(h0, h1):
                        for w in range(w0, w1):
                            if x[n, c, h, w] > best:
                                best, where = x[n, c, h, w], h * width + w
                    top[n, c, ph, pw], mask[n, c, ph, pw] = best, where
    return top, mask


def separated(shape, seed=0):
    """Distinct values at least 0.05 apart: a finite-difference step cannot change an argmax."""
    rng = numpy.random.default_rng(seed)
    return (rng.permutation(math.prod(shape)).reshape(shape) - math.prod(shape) / 2) * 0.05


def case(text, shape, kernel, pad=(0, 0), stride=(1, 1), ceil_mode=True):
    """A pooling_param text, the bottom shape, and the geometry the reference applies."""
    return text, shape, kernel, pad, stride, ceil_mode


CASES = {
    "k3s2_ceil_clip": case("kernel_size: 3 stride: 2", (2, 2, 6, 6), (3, 3), stride=(2, 2)),
    "k2s2p1_drop_last": case(
        "kernel_size: 2 stride: 2 pad: 1", (1, 2, 5, 5), (2, 2), (1, 1), (2, 2)
    ),
    "k3s2p1": case("kernel_size: 3 stride: 2 pad: 1", (1, 2, 7, 7), (3, 3), (1, 1), (2, 2)),
    "k5s3p2": case("kernel_size: 5 stride: 3 pad: 2", (1, 1, 8, 8), (5, 5), (2, 2), (3, 3)),
    "floor": case(
        "kernel_size: 3 stride: 2 round_mode: FLOOR",
        (1, 2, 6, 6),
        (3, 3),
        stride=(2, 2),
        ceil_mode=False,
    ),  # fmt: skip
    "rect_hw": case(
        "kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0",
        (1, 2, 5, 6),
        (3, 2),
        (1, 0),
        (2, 1),
    ),  # fmt: skip
    "stride1": case("kernel_size: 2", (1, 2, 4, 5), (2, 2)),
    "whole_plane": case("kernel_h: 3 kernel_w: 4", (2, 2, 3, 4), (3, 4)),
    "global": case("global_pooling: true", (2, 3, 5, 4), (5, 4)),
}


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_pooling(xp, name, method):
    text, shape, kernel, pad, stride, ceil_mode = CASES[name]
    layer_text = f'type: "Pooling" pooling_param {{ pool: {method} {text} }}'
    x = separated(shape)
    want, _ = pool_reference(x, method, kernel, pad, stride, ceil_mode)
    assert_allclose(forward_once(xp, make_layer(layer_text), x), want, atol=1e-12)
    check_gradient(xp, make_layer(layer_text), [x])
    check_backward_reads(xp, make_layer(layer_text), [x])


@pytest.mark.parametrize("name", sorted(CASES))
def test_max_pooling_without_backward_skips_the_mask(xp, name):
    """A layer no backward follows (propagate_down all False: a test net) takes the mask-free
    kernel: the same maxima, NaN, ties and empty windows included, and the mask left alone."""
    text, shape, kernel, pad, stride, ceil_mode = CASES[name]
    x = separated(shape)
    x[0, 0, 0, 0] = numpy.nan
    x[..., -1, :] = x[..., -1, :1]  # ties along the last row
    layer_text = f'type: "Pooling" pooling_param {{ pool: MAX {text} }}'
    want = forward_once(xp, make_layer(layer_text), x)
    layer = make_layer(layer_text)
    layer.propagate_down = (False,)
    rig = LayerRig(xp, layer, [x])
    rig.layer.internals["mask"].data[...] = 7
    (got,) = rig.forward()
    assert_array_equal(got, want)
    assert (backend.to_host(rig.layer.internals["mask"].data) == 7).all()  # not computed


@pytest.mark.parametrize("name", ["k3s2_ceil_clip", "k2s2p1_drop_last", "rect_hw", "global"])
def test_max_pooling_mask_top(xp, name):
    text, shape, kernel, pad, stride, ceil_mode = CASES[name]
    layer_text = f'type: "Pooling" top: "y" top: "mask" pooling_param {{ pool: MAX {text} }}'
    x = numpy.random.default_rng(1).standard_normal(shape)
    y, mask = forward_once(xp, make_layer(layer_text), x)
    want_y, want_mask = pool_reference(x, "MAX", kernel, pad, stride, ceil_mode)
    assert_allclose(y, want_y)
    assert_array_equal(mask, want_mask)
    check_gradient(xp, make_layer(layer_text), [separated(shape)])


def test_max_pooling_ties_and_empty_windows(xp):
    """Ties go to the first element in row-major order; a window past the input (stride > kernel,
    no pad, ceil mode) stays at -FLT_MAX with mask -1 and passes no gradient."""
    text = 'type: "Pooling" top: "y" top: "m" pooling_param { kernel_size: 2 stride: 3 }'
    x = numpy.zeros((1, 1, 4, 4))
    x[0, 0, 3, 3] = 1.0
    y, mask = forward_once(xp, make_layer(text), x)
    assert y.shape == (1, 1, 2, 2)
    assert_array_equal(mask[0, 0], [[0, 3], [12, 15]])
    assert_array_equal(y[0, 0], [[0, 0], [0, 1]])
    x = numpy.arange(30.0).reshape(1, 1, 5, 6)
    text = 'type: "Pooling" top: "y" top: "m" pooling_param { kernel_size: 1 stride: 3 }'
    y, mask = forward_once(xp, make_layer(text), x)
    want_y, want_mask = pool_reference(x, "MAX", (1, 1), (0, 0), (3, 3))
    assert y.shape == (1, 1, 3, 3) and want_mask[0, 0, 2, 0] == -1
    assert_array_equal(mask, want_mask)
    assert_array_equal(y, want_y)
    rig = LayerRig(xp, make_layer(text), [x])
    rig.forward()
    (dx,) = rig.backward([numpy.ones(y.shape), numpy.zeros(y.shape)])
    assert_array_equal(dx[0, 0, ::3, ::3], numpy.ones((2, 2)))
    assert dx.sum() == 4


def test_max_pooling_overlapping_empty_windows(xp):
    """Overlapping windows (3x3, stride 2) of -inf only keep mask -1 and pass no gradient; the
    others still route theirs, adding where windows share their argmax."""
    text = 'type: "Pooling" top: "y" top: "m" pooling_param { kernel_size: 3 stride: 2 }'
    x = numpy.full((1, 1, 5, 5), -numpy.inf)
    x[0, 0, 2, 2] = 1.0  # the shared corner of all four windows
    x[0, 0, 4, 4] = -numpy.inf
    rig = LayerRig(xp, make_layer(text), [x])
    y, mask = rig.forward()
    assert_array_equal(mask, numpy.full((1, 1, 2, 2), 12))  # Caffe's mask top: h·W + w
    (dx,) = rig.backward([numpy.array([[[[1.0, 2.0], [4.0, 8.0]]]]), numpy.zeros(y.shape)])
    assert dx[0, 0, 2, 2] == 15.0 and dx.sum() == 15.0
    x[0, 0, 2, 2] = -numpy.inf  # now no window has a winner
    rig = LayerRig(xp, make_layer(text), [x])
    y, mask = rig.forward()
    assert (mask == -1).all() and (y == -FLT_MAX).all()
    (dx,) = rig.backward([numpy.ones(y.shape), numpy.zeros(y.shape)])
    assert not dx.any()


def test_ave_pooling_counts_padding(xp):
    """AVE divides by the window clipped to the padded input, so padding counts as zeros."""
    text = 'type: "Pooling" pooling_param { pool: AVE kernel_size: 3 stride: 1 pad: 1 }'
    y = forward_once(xp, make_layer(text), numpy.ones((1, 1, 3, 3)))
    assert_allclose(y[0, 0], [[4 / 9, 6 / 9, 4 / 9], [6 / 9, 1, 6 / 9], [4 / 9, 6 / 9, 4 / 9]])


@pytest.mark.parametrize(
    "in_size, kernel, pad, stride, tiles",
    [
        ((24, 24), (2, 2), (0, 0), (2, 2), True),  # LeNet's pool1
        ((5, 5), (2, 2), (0, 0), (2, 2), True),  # the last windows clipped to the input
        ((5, 5), (2, 2), (1, 1), (2, 2), True),
        ((5, 5), (2, 2), (0, 0), (3, 3), False),  # gaps between the windows
        ((5, 5), (3, 3), (0, 0), (2, 2), False),  # overlapping
    ],
)
def test_pool_geometry_tiles(in_size, kernel, pad, stride, tiles):
    """`tiles`: every input in exactly one window, so MAX's backward writes dx without zeroing."""
    assert pool_geometry(in_size, kernel, pad, stride).tiles is tiles


# 1st: tiling windows, 2nd: overlapping, 3rd: gaps, 4th: whole
@pytest.mark.parametrize("kernel, stride", [((2, 2), (2, 2)), ((2, 3), (2, 2)), ((1, 2), (2, 3)),
                                            ((3, 4), (1, 1))])  # fmt: skip
def test_pool_backward_accumulates(kernel, stride):
    """With accumulate=True (SPP's levels), the kernels add into dx instead of overwriting it."""
    x = separated((1, 2, 3, 4))
    geom = pool_geometry((3, 4), kernel, (0, 0), stride)
    y = numpy.empty((1, 2) + geom.out_size)
    mask = numpy.empty(y.shape, mask_dtype(geom))
    max_pool_forward(numpy, x, geom, y, mask)
    dy = numpy.random.default_rng(4).standard_normal(y.shape)
    for backward in (
        lambda dx, acc: max_pool_backward(numpy, dy, mask, geom, dx, acc),
        lambda dx, acc: ave_pool_backward(numpy, dy, geom, dx, acc),
    ):
        alone, added = numpy.full(x.shape, 7.0), numpy.full(x.shape, 7.0)
        backward(alone, False)
        backward(added, True)
        assert_allclose(added, alone + 7.0)


@pytest.mark.parametrize("block", [250, 60])  # 2 images per block; 2 channels of one image
@pytest.mark.parametrize(
    "text",
    [
        'type: "Pooling" pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 }',
        'type: "Pooling" pooling_param { pool: AVE kernel_size: 2 stride: 1 }',
        'type: "Pooling" pooling_param { pool: MAX global_pooling: true }',
        'type: "SPP" spp_param { pyramid_height: 2 }',
    ],
)
@pytest.mark.parametrize("threads", [1, 2])
def test_pooling_in_blocks(xp, monkeypatch, text, block, threads):
    """On the CPU, large inputs are pooled block by block over images and channels, the blocks
    split over the CPU threads (backend.split_work), and inputs that fit one block are still
    shared out to the threads: same numbers as whole."""
    x = separated((3, 5, 5, 5), seed=5)
    rng = numpy.random.default_rng(6)
    results = []
    monkeypatch.setattr(backend, "_chunk_threads", lambda: backend._ChunkThreads(threads))
    for split, size in ((1 << 18, 1 << 18), (block, block), (block, 1 << 18)):
        monkeypatch.setattr(pool_kernels, "CPU_POOL_SPLIT", split)
        monkeypatch.setattr(pool_kernels, "CPU_POOL_BLOCK", size)
        rig = LayerRig(xp, make_layer(text), [x])
        top = rig.forward()[0]
        results.append((top, rig.backward([rng.standard_normal(top.shape)])[0]))
        rng = numpy.random.default_rng(6)
    for blocked in results[1:]:
        for whole, part in zip(results[0], blocked, strict=True):
            assert_array_equal(part, whole)


@pytest.mark.parametrize(
    "text, shape, message",
    [
        ("pool: STOCHASTIC kernel_size: 2", (1, 1, 4, 4), "STOCHASTIC is not supported"),
        ("global_pooling: true kernel_size: 2", (1, 1, 4, 4), "cannot be specified"),
        ("global_pooling: true stride: 2", (1, 1, 4, 4), "stride = 1"),
        ("kernel_size: 2 kernel_h: 2 kernel_w: 2", (1, 1, 4, 4), "kernel_size OR"),
        ("kernel_h: 2", (1, 1, 4, 4), "kernel_size OR"),
        ("stride: 1", (1, 1, 4, 4), "kernel_size OR"),
        ("kernel_size: 2 pad_h: 1", (1, 1, 4, 4), "pad_h and pad_w"),
        ("kernel_size: 2 pad: 1 pad_h: 1 pad_w: 1", (1, 1, 4, 4), "pad is pad OR"),
        ("kernel_size: 2 stride_w: 1", (1, 1, 4, 4), "stride_h and stride_w"),
        ("kernel_size: 2 pad: 2", (1, 1, 4, 4), "smaller than the kernel"),
        ("kernel_size: 2 stride: 0", (1, 1, 4, 4), "stride must be positive"),
        ("kernel_size: 2", (1, 4, 4), "4 axes"),
    ],
)
def test_pooling_errors(xp, text, shape, message):
    layer = make_layer(f'type: "Pooling" pooling_param {{ {text} }}')
    with pytest.raises(LayerError, match=message):
        LayerRig(xp, layer, [numpy.zeros(shape)])


def test_pooling_mask_top_needs_max(xp):
    layer = make_layer(
        'type: "Pooling" top: "y" top: "m" pooling_param { pool: AVE kernel_size: 2 }'
    )
    with pytest.raises(LayerError, match="needs pool: MAX"):
        LayerRig(xp, layer, [numpy.zeros((1, 1, 4, 4))])


def spp_reference(x, height, method):
    """Caffe's SPP: per level, pooling with kernel = stride = ceil(H / 2^l) and centring pad."""
    num, _, h, w = x.shape
    parts = []
    for level in range(height):
        bins = 2**level
        kernel = (math.ceil(h / bins), math.ceil(w / bins))
        pad = ((kernel[0] * bins - h + 1) // 2, (kernel[1] * bins - w + 1) // 2)
        top, _ = pool_reference(x, method, kernel, pad, kernel)
        parts.append(top.reshape(num, -1))
    return numpy.concatenate(parts, axis=1)


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("shape", [(2, 2, 9, 8), (1, 2, 6, 7)])
def test_spp(xp, method, shape):
    text = f'type: "SPP" spp_param {{ pyramid_height: 3 pool: {method} }}'
    x = separated(shape, seed=2)
    assert_allclose(forward_once(xp, make_layer(text), x), spp_reference(x, 3, method), atol=1e-12)
    check_gradient(xp, make_layer(text), [x])
    check_backward_reads(xp, make_layer(text), [x])


def test_spp_single_level_and_errors(xp):
    x = separated((2, 3, 4, 5), seed=3)
    y = forward_once(xp, make_layer('type: "SPP" spp_param { pyramid_height: 1 }'), x)
    assert y.shape == (2, 3, 1, 1)
    assert_allclose(y[:, :, 0, 0], x.max(axis=(2, 3)))
    with pytest.raises(LayerError, match="too small"):
        LayerRig(xp, make_layer('type: "SPP" spp_param { pyramid_height: 3 }'), [x[:, :, :3]])
    with pytest.raises(LayerError, match="STOCHASTIC"):
        make_layer('type: "SPP" spp_param { pyramid_height: 2 pool: STOCHASTIC }').setup([], [])
