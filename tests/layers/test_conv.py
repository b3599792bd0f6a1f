import itertools

import numpy
import pytest
from numpy.testing import assert_allclose

import geeps_net.backend as backend
import geeps_net.layers.conv as conv_module
import geeps_net.layers.im2col as im2col_module
from geeps_net.backend import to_host
from geeps_net.errors import LayerError
from geeps_net.testing import (
    LayerRig,
    check_backward_reads,
    check_gradient,
    forward_once,
    make_layer,
)


def conv_reference(x, w, b, pad, stride, dilation, group):
    """Direct N-d convolution by loops over images, outputs, positions, channels and taps."""
    num, channels, spatial = x.shape[0], x.shape[1], x.shape[2:]
    num_output, kernel = w.shape[0], w.shape[2:]
    xpad = numpy.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in pad])
    out = [
        (n + 2 * p - (d * (k - 1) + 1)) // s + 1
        for n, p, d, k, s in zip(spatial, pad, dilation, kernel, stride, strict=True)
    ]
    c_g, o_g = channels // group, num_output // group
    y = numpy.zeros((num, num_output, *out))
    for n, o in itertools.product(range(num), range(num_output)):
        g = o // o_g
        for pos in itertools.product(*map(range, out)):
            total = 0.0 if b is None else b[o]
            for c, tap in itertools.product(range(c_g), itertools.product(*map(range, kernel))):
                at = tuple(q * s + t * d for q, s, t, d in zip(pos, stride, tap, dilation))
                total += w[(o, c) + tap] * xpad[(n, g * c_g + c) + at]
            y[(n, o) + pos] = total
    return y


def deconv_reference(x, w, b, pad, stride, dilation, group):
    """Direct transposed convolution: each input element adds itself times W into the output."""
    num, channels, spatial = x.shape[0], x.shape[1], x.shape[2:]
    kernel, o_g = w.shape[2:], w.shape[1]
    c_g = channels // group
    full = [s * (n - 1) + d * (k - 1) + 1 for n, s, d, k in zip(spatial, stride, dilation, kernel)]
    y = numpy.zeros((num, o_g * group, *full))
    for n, c in itertools.product(range(num), range(channels)):
        g = c // c_g
        for pos, tap in itertools.product(
            itertools.product(*map(range, spatial)), itertools.product(*map(range, kernel))
        ):
            at = tuple(q * s + t * d for q, s, t, d in zip(pos, stride, tap, dilation))
            for o in range(o_g):
                y[(n, g * o_g + o) + at] += x[(n, c) + pos] * w[(c, o) + tap]
    y = y[(slice(None), slice(None)) + tuple(slice(p, f - p) for p, f in zip(pad, full))]
    return y if b is None else y + b.reshape((1, -1) + (1,) * len(spatial))


def im2col_reference(x, kernel, pad, stride, dilation):
    """Caffe's patch matrix (N, C·kh·kw, oh, ow): row c·K + i·kw + j; padding reads zeros."""
    y = conv_reference_patches(x, kernel, pad, stride, dilation)
    return y.reshape(y.shape[0], -1, *y.shape[-2:])


def conv_reference_patches(x, kernel, pad, stride, dilation):
    num, channels, h, w = x.shape
    xpad = numpy.pad(x, [(0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])])
    oh = (h + 2 * pad[0] - (dilation[0] * (kernel[0] - 1) + 1)) // stride[0] + 1
    ow = (w + 2 * pad[1] - (dilation[1] * (kernel[1] - 1) + 1)) // stride[1] + 1
    y = numpy.zeros((num, channels, *kernel, oh, ow))
    for i, j, p, q in itertools.product(range(kernel[0]), range(kernel[1]), range(oh), range(ow)):
        y[:, :, i, j, p, q] = xpad[
            :, :, p * stride[0] + i * dilation[0], q * stride[1] + j * dilation[1]
        ]
    return y


def case(text, shape, kernel, pad=(0, 0), stride=(1, 1), dilation=(1, 1), group=1, bias=True):
    """A convolution_param text, the bottom shape, and the geometry the reference applies."""
    return text, shape, dict(kernel=kernel, pad=pad, stride=stride, dilation=dilation), group, bias


CONV_CASES = {
    "basic": case("kernel_size: 3", (2, 3, 5, 5), (3, 3)),
    "stride_pad": case("kernel_size: 3 pad: 1 stride: 2", (2, 2, 5, 6), (3, 3), (1, 1), (2, 2)),
    "hw_fields": case(
        "kernel_h: 3 kernel_w: 2 pad_h: 1 pad_w: 0 stride_h: 1 stride_w: 2",
        (1, 2, 5, 6),
        (3, 2),
        pad=(1, 0),
        stride=(1, 2),
    ),
    "per_axis_repeated": case(
        "kernel_size: 2 kernel_size: 3 pad: 0 pad: 1 stride: 2 stride: 1 dilation: 2 dilation: 1",
        (1, 2, 6, 5),
        (2, 3),
        pad=(0, 1),
        stride=(2, 1),
        dilation=(2, 1),
    ),
    "dilation": case(
        "kernel_size: 3 dilation: 2 pad: 2", (1, 2, 7, 7), (3, 3), (2, 2), dilation=(2, 2)
    ),
    "group": case("kernel_size: 3 pad: 1 group: 2", (2, 4, 4, 5), (3, 3), (1, 1), group=2),
    "depthwise": case(
        "kernel_size: 3 stride: 2 group: 4", (1, 4, 5, 5), (3, 3), stride=(2, 2), group=4
    ),
    "no_bias_1x1": case("kernel_size: 1 bias_term: false", (2, 3, 3, 4), (1, 1), bias=False),
    "wide_pad": case("kernel_size: 2 pad: 2", (1, 2, 3, 3), (2, 2), (2, 2)),
}


@pytest.fixture(params=["channels_first", "per_image", "channels_last"])
def layout(request, monkeypatch):
    """Run a test with both column layouts of Convolution, channels-first columns both with one
    GEMM per chunk and with one per image."""
    minimum = 0 if request.param == "channels_last" else 1 << 30
    monkeypatch.setattr(conv_module, "CHANNELS_LAST_MIN", minimum)
    monkeypatch.setattr(conv_module, "CHANNELS_LAST_MAX", 1 << 30)
    depth = 1 << 30 if request.param == "per_image" else 0
    monkeypatch.setattr(conv_module, "PER_IMAGE_GEMM_MAX_DEPTH", depth)
    return request.param


def _params(rng, w_shape, bias, num_output):
    return [rng.standard_normal(w_shape)] + ([rng.standard_normal(num_output)] if bias else [])


@pytest.mark.parametrize("name", sorted(CONV_CASES))
def test_convolution(xp, name, layout):
    text, shape, geometry, group, bias = CONV_CASES[name]
    rng = numpy.random.default_rng(0)
    x = rng.standard_normal(shape)
    params = _params(rng, (4, shape[1] // group, *geometry["kernel"]), bias, 4)
    b = params[1] if bias else None
    want = conv_reference(x, params[0], b, geometry["pad"], geometry["stride"],
                          geometry["dilation"], group)  # fmt: skip
    layer_text = f'type: "Convolution" convolution_param {{ num_output: 4 {text} }}'
    assert_allclose(forward_once(xp, make_layer(layer_text), x, params=params), want, atol=1e-12)
    check_gradient(xp, make_layer(layer_text), [x], params=params)


@pytest.mark.parametrize("num_output", [2, 12])
def test_convolution_data_gradient_paths(xp, num_output, layout):
    """Stride 1: a flipped-kernel convolution of dy when cheap (few outputs), else col2im."""
    text = f"num_output: {num_output} kernel_size: 3 pad: 1"
    text = f'type: "Convolution" convolution_param {{ {text} }}'
    layer = make_layer(text)
    LayerRig(xp, layer, [numpy.zeros((1, 3, 4, 4))])
    assert (layer.flip_geom is not None) == (num_output == 2)
    params = _params(numpy.random.default_rng(4), (num_output, 3, 3, 3), True, num_output)
    check_gradient(xp, make_layer(text), [(2, 3, 4, 4)], params=params)  # nonzero weights


def test_convolution_3d(xp, layout):
    rng = numpy.random.default_rng(1)
    x = rng.standard_normal((1, 2, 4, 5, 5))
    params = _params(rng, (2, 2, 3, 3, 3), True, 2)
    text = 'type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 pad: 1 stride: 2 }'
    want = conv_reference(x, *params, (1, 1, 1), (2, 2, 2), (1, 1, 1), 1)
    assert_allclose(forward_once(xp, make_layer(text), x, params=params), want, atol=1e-12)
    check_gradient(xp, make_layer(text), [x], params=params)


def test_convolution_1d_grouped_strided(xp, layout):
    """One spatial axis, two groups, stride 2: the data gradient goes through col2im, whose
    channels-last form then has a single pass."""
    rng = numpy.random.default_rng(3)
    x = rng.standard_normal((2, 4, 9))
    params = _params(rng, (6, 2, 3), True, 6)
    text = "num_output: 6 kernel_size: 3 stride: 2 pad: 1 group: 2"
    layer_text = f'type: "Convolution" convolution_param {{ {text} }}'
    want = conv_reference(x, *params, (1,), (2,), (1,), 2)
    assert_allclose(forward_once(xp, make_layer(layer_text), x, params=params), want, atol=1e-12)
    check_gradient(xp, make_layer(layer_text), [x], params=params)


def test_convolution_axis(xp, layout):
    """axis: 2 on (2, 3, 4, 5): 6 images of 4 channels and one spatial axis of 5."""
    rng = numpy.random.default_rng(2)
    x = rng.standard_normal((2, 3, 4, 5))
    params = _params(rng, (3, 4, 2), True, 3)
    text = 'type: "Convolution" convolution_param { num_output: 3 kernel_size: 2 axis: 2 }'
    y = forward_once(xp, make_layer(text), x, params=params)
    want = conv_reference(x.reshape(6, 4, 5), *params, (0,), (1,), (1,), 1).reshape(2, 3, 3, 4)
    assert_allclose(y, want, atol=1e-12)
    check_gradient(xp, make_layer(text), [x], params=params)


def test_convolution_two_bottoms_share_weights(xp, layout):
    rng = numpy.random.default_rng(3)
    a, b = rng.standard_normal((1, 2, 4, 4)), rng.standard_normal((1, 2, 4, 4))
    params = _params(rng, (3, 2, 3, 3), True, 3)
    text = 'type: "Convolution" bottom: "a" bottom: "b" top: "ya" top: "yb" '
    text += "convolution_param { num_output: 3 kernel_size: 3 }"
    ya, yb = forward_once(xp, make_layer(text), a, b, params=params)
    assert_allclose(ya, conv_reference(a, *params, (0, 0), (1, 1), (1, 1), 1), atol=1e-12)
    assert_allclose(yb, conv_reference(b, *params, (0, 0), (1, 1), (1, 1), 1), atol=1e-12)
    check_gradient(xp, make_layer(text), [a, b], params=params)


def test_convolution_accumulates_param_diffs(xp, layout):
    layer = make_layer('type: "Convolution" convolution_param { num_output: 2 kernel_size: 2 }')
    rig = LayerRig(xp, layer, [numpy.random.default_rng(4).standard_normal((2, 2, 3, 3))])
    rig.forward()
    dy = numpy.ones((2, 2, 2, 2))
    rig.backward([dy])
    once = rig.param_diffs()
    layer.backward(xp, rig.tops, [True], rig.bottoms)  # without zeroing: Caffe adds
    for first, twice in zip(once, rig.param_diffs(), strict=True):
        assert_allclose(twice, 2 * first)


def test_convolution_in_chunks(xp, monkeypatch, layout):
    """A batch larger than the column budget runs in chunks of whole images, same numbers."""
    text = 'type: "Convolution" convolution_param { num_output: 3 kernel_size: 3 stride: 2 pad: 1 }'
    rng = numpy.random.default_rng(5)
    x, params = rng.standard_normal((5, 2, 5, 5)), _params(rng, (3, 2, 3, 3), True, 3)
    dy = rng.standard_normal((5, 3, 3, 3))
    results = []
    for budget in (1 << 22, 40):  # 40 elements: one image (2·9·9 = 162) per chunk
        monkeypatch.setattr(im2col_module, "CPU_COL_BUDGET", budget)
        monkeypatch.setattr(im2col_module, "GPU_COL_BUDGET", budget)
        rig = LayerRig(xp, make_layer(text), [x], params=params)
        results.append((rig.forward(), rig.backward([dy]), rig.param_diffs()))
    for one, chunked in zip(*results, strict=True):
        for a, b in zip(one, chunked, strict=True):
            assert_allclose(a, b, atol=1e-12)


@pytest.mark.parametrize("extra", ["stride: 2 pad: 1", "pad: 1", "pad: 1 group: 2"])
def test_convolution_on_threads(xp, monkeypatch, layout, extra):
    """Chunks of images split over two threads (backend.split_work) give the numbers of one."""
    text = f"num_output: 4 kernel_size: 3 {extra}"
    text = f'type: "Convolution" convolution_param {{ {text} }}'
    rng = numpy.random.default_rng(6)
    x, params = rng.standard_normal((5, 2, 5, 5)), _params(rng, (4, 2, 3, 3), True, 4)
    if "group" in extra:
        params[0] = params[0][:, :1]
    monkeypatch.setattr(im2col_module, "CPU_COL_BUDGET", 200)  # one or two images per chunk
    results = []
    for threads in (1, 2):
        monkeypatch.setattr(backend, "_chunk_threads", lambda n=threads: backend._ChunkThreads(n))
        rig = LayerRig(xp, make_layer(text), [x], params=params)
        y = rig.forward()
        results.append((y, rig.backward([numpy.cos(y[0])]), rig.param_diffs()))
    for one, two in zip(*results, strict=True):
        for a, b in zip(one, two, strict=True):
            assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_convolution_default_fillers_and_backward_reads(xp):
    text = 'type: "Convolution" convolution_param { num_output: 2 kernel_size: 1 }'
    layer = make_layer(text)
    LayerRig(xp, layer, [numpy.ones((1, 3, 2, 2))])
    assert [b.shape for b in layer.blobs] == [(2, 3, 1, 1), (2,)]
    for blob in layer.blobs:  # Caffe's default fillers: constant 0
        assert not to_host(blob.data).any()
    check_backward_reads(xp, make_layer(text), [(2, 3, 2, 2)])


@pytest.mark.parametrize(
    "text, shape, message",
    [
        ("num_output: 2", (1, 2, 4, 4), "kernel_size must be specified"),
        ("num_output: 2 kernel_size: 2 kernel_h: 2 kernel_w: 2", (1, 2, 4, 4), "not both"),
        ("num_output: 2 kernel_h: 2 kernel_w: 2", (1, 2, 4, 4, 4), "2-D"),
        ("num_output: 2 kernel_size: 2 kernel_size: 2 kernel_size: 2", (1, 2, 4, 4), "once per"),
        ("num_output: 3 kernel_size: 2 group: 2", (1, 2, 4, 4), "multiples of group"),
        ("num_output: 2 kernel_size: 2 group: 2", (1, 3, 4, 4), "multiples of group"),
        ("kernel_size: 2", (1, 2, 4, 4), "num_output"),
        ("num_output: 2 kernel_size: 0", (1, 2, 4, 4), "nonzero"),
        ("num_output: 2 kernel_size: 2 stride: 0", (1, 2, 4, 4), "nonzero"),
        ("num_output: 2 kernel_size: 5", (1, 2, 4, 4), "larger than the padded input"),
        ("num_output: 2 kernel_size: 2 axis: 4", (1, 2, 4, 4), "axis"),
    ],
)
def test_convolution_errors(xp, text, shape, message):
    layer = make_layer(f'type: "Convolution" convolution_param {{ {text} }}')
    with pytest.raises(LayerError, match=message):
        LayerRig(xp, layer, [numpy.zeros(shape)])


def test_convolution_reshape_errors(xp):
    layer = make_layer('type: "Convolution" convolution_param { num_output: 2 kernel_size: 2 }')
    rig = LayerRig(xp, layer, [numpy.zeros((1, 2, 4, 4))])
    rig.bottoms[0].reshape((1, 3, 4, 4))
    with pytest.raises(LayerError, match="incompatible"):
        rig.reshape()
    two = make_layer(
        'type: "Convolution" bottom: "a" bottom: "b" top: "c" top: "d" '
        "convolution_param { num_output: 2 kernel_size: 2 }"
    )
    with pytest.raises(LayerError, match="same shape"):
        LayerRig(xp, two, [numpy.zeros((1, 2, 4, 4)), numpy.zeros((1, 2, 5, 4))])
    uneven = make_layer(
        'type: "Convolution" bottom: "a" top: "c" top: "d" '
        "convolution_param { num_output: 2 kernel_size: 2 }"
    )
    with pytest.raises(LayerError, match="one top per bottom"):
        LayerRig(xp, uneven, [numpy.zeros((1, 2, 4, 4))])


DECONV_CASES = {  # name: (num_output, case)
    "basic": (2, case("kernel_size: 3 stride: 2", (2, 3, 3, 3), (3, 3), stride=(2, 2))),
    "pad": (3, case("kernel_size: 4 stride: 2 pad: 1", (1, 2, 3, 3), (4, 4), (1, 1), (2, 2))),
    "group_nobias": (
        4,
        case(
            "kernel_size: 3 stride: 2 group: 2 bias_term: false",
            (1, 4, 3, 3),
            (3, 3),
            stride=(2, 2),
            group=2,
            bias=False,
        ),  # fmt: skip
    ),
    "rect_dilation": (
        2,
        case(
            "kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2 dilation: 2",
            (1, 2, 3, 4),
            (2, 3),
            stride=(1, 2),
            dilation=(2, 2),
        ),  # fmt: skip
    ),
}


@pytest.mark.parametrize("name", sorted(DECONV_CASES))
def test_deconvolution(xp, name):
    num_output, (text, shape, geometry, group, bias) = DECONV_CASES[name]
    rng = numpy.random.default_rng(6)
    x = rng.standard_normal(shape)
    params = _params(rng, (shape[1], num_output // group, *geometry["kernel"]), bias, num_output)
    b = params[1] if bias else None
    want = deconv_reference(x, params[0], b, geometry["pad"], geometry["stride"],
                            geometry["dilation"], group)  # fmt: skip
    layer_text = f'type: "Deconvolution" convolution_param {{ num_output: {num_output} {text} }}'
    assert_allclose(forward_once(xp, make_layer(layer_text), x, params=params), want, atol=1e-12)
    check_gradient(xp, make_layer(layer_text), [x], params=params)


def test_deconvolution_3d_and_errors(xp):
    text = 'type: "Deconvolution" convolution_param { num_output: 2 kernel_size: 2 stride: 2 }'
    params = _params(numpy.random.default_rng(7), (2, 2, 2, 2, 2), True, 2)
    check_gradient(xp, make_layer(text), [(1, 2, 2, 2, 3)], params=params)  # nonzero weights
    layer = make_layer(text)
    assert LayerRig(xp, layer, [numpy.zeros((1, 3, 2, 2, 2))]).tops[0].shape == (1, 2, 4, 4, 4)
    bad = make_layer(
        'type: "Deconvolution" convolution_param { num_output: 2 kernel_size: 1 pad: 1 }'
    )
    with pytest.raises(LayerError, match="not positive"):
        LayerRig(xp, bad, [numpy.zeros((1, 2, 2, 2))])


@pytest.mark.parametrize(
    "text, kernel, pad, stride, dilation",
    [
        ("kernel_size: 3 pad: 1 stride: 2", (3, 3), (1, 1), (2, 2), (1, 1)),
        ("kernel_h: 2 kernel_w: 3 dilation: 2 pad_h: 1 pad_w: 0", (2, 3), (1, 0), (1, 1), (2, 2)),
    ],
)
def test_im2col(xp, text, kernel, pad, stride, dilation):
    x = numpy.random.default_rng(7).standard_normal((2, 2, 5, 6))
    layer_text = f'type: "Im2col" convolution_param {{ {text} }}'
    want = im2col_reference(x, kernel, pad, stride, dilation)
    assert_allclose(forward_once(xp, make_layer(layer_text), x), want)
    check_gradient(xp, make_layer(layer_text), [x])
    check_backward_reads(xp, make_layer(layer_text), [x])


def test_im2col_3d_and_deconvolution_reads(xp):
    text = 'type: "Im2col" convolution_param { kernel_size: 2 stride: 2 pad: 1 }'
    x = numpy.random.default_rng(8).standard_normal((1, 2, 3, 3, 2))
    y = forward_once(xp, make_layer(text), x)
    assert y.shape == (1, 16, 2, 2, 2)
    xpad = numpy.pad(x, [(0, 0), (0, 0), (1, 1), (1, 1), (1, 1)])
    assert_allclose(y[0, 7, 1, 0, 1], xpad[0, 0, 3, 1, 3])  # c = 0, tap (1, 1, 1) at (2, 0, 2)
    check_gradient(xp, make_layer(text), [x])
    deconv = 'type: "Deconvolution" convolution_param { num_output: 2 kernel_size: 2 stride: 2 }'
    check_backward_reads(xp, make_layer(deconv), [(2, 3, 2, 2)])
