import numpy
import pytest
from numpy.testing import assert_allclose

import geeps_net.backend as backend
import geeps_net.layers.lrn as lrn_module
from geeps_net.errors import LayerError
from geeps_net.testing import (
    LayerRig,
    check_backward_reads,
    check_gradient,
    forward_once,
    make_layer,
)


def lrn_reference(x, size, alpha, beta, k, within):
    """Caffe's LRN, one element at a time, windows centred and clipped at the borders."""
    num, channels, height, width = x.shape
    half = (size - 1) // 2
    y = numpy.empty_like(x)
    for n, c, h, w in numpy.ndindex(x.shape):
        if within:
            box = x[n, c, max(h - half, 0) : h + half + 1, max(w - half, 0) : w + half + 1]
            scale = 1.0 + alpha / size**2 * (box**2).sum()
        else:
            column = x[n, max(c - half, 0) : c + half + 1, h, w]
            scale = k + alpha / size * (column**2).sum()
        y[n, c, h, w] = x[n, c, h, w] * scale**-beta
    return y


def case(text, shape, size=5, alpha=1.0, beta=0.75, k=1.0):
    """An lrn_param text, the bottom shape, and the values the reference applies."""
    return text, shape, size, alpha, beta, k, "WITHIN_CHANNEL" in text


CASES = {
    "across_default": case("", (2, 7, 2, 3)),
    "across_3_k2": case("local_size: 3 alpha: 2 beta: 0.6 k: 2", (1, 4, 3, 2), 3, 2.0, 0.6, 2.0),
    "across_wide": case("local_size: 7 alpha: 0.5", (1, 3, 2, 2), 7, 0.5),
    "within_3": case("local_size: 3 alpha: 1.5 norm_region: WITHIN_CHANNEL", (2, 2, 4, 5), 3, 1.5),
    "within_5_k_unused": case(
        "local_size: 5 alpha: 2 beta: 0.6 k: 2 norm_region: WITHIN_CHANNEL",
        (1, 2, 6, 6),
        5,
        2.0,
        0.6,
        2.0,
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_lrn(xp, name):
    text, shape, size, alpha, beta, k, within = CASES[name]
    layer_text = f'type: "LRN" lrn_param {{ {text} }}'
    x = numpy.random.default_rng(0).standard_normal(shape)
    alpha, beta, k = (float(numpy.float32(v)) for v in (alpha, beta, k))  # proto floats
    want = lrn_reference(x, size, alpha, beta, k, within)
    assert_allclose(forward_once(xp, make_layer(layer_text), x), want, rtol=1e-12)
    check_gradient(xp, make_layer(layer_text), [x])
    check_backward_reads(xp, make_layer(layer_text), [x])


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name", ["across_3_k2", "within_3"])
def test_lrn_in_blocks(xp, monkeypatch, name, threads):
    """On the CPU, large batches are normalized a few images at a time, the blocks split over the
    CPU threads (backend.split_work): same numbers."""
    layer_text = f'type: "LRN" lrn_param {{ {CASES[name][0]} }}'
    x = numpy.random.default_rng(1).standard_normal((3, 4, 3, 2))
    dy = numpy.random.default_rng(2).standard_normal(x.shape)
    monkeypatch.setattr(backend, "_chunk_threads", lambda: backend._ChunkThreads(threads))
    results = []
    for block in (1 << 18, 1):
        monkeypatch.setattr(lrn_module, "CPU_BLOCK", block)
        rig = LayerRig(xp, make_layer(layer_text), [x])
        results.append((rig.forward()[0], rig.backward([dy])[0]))
    for whole, blocked in zip(*results, strict=True):
        assert_allclose(blocked, whole, rtol=1e-14)


def test_lrn_keeps_scale_internal(xp):
    layer = make_layer('type: "LRN" lrn_param { local_size: 3 alpha: 3 k: 2 }')
    rig = LayerRig(xp, layer, [numpy.ones((1, 3, 1, 1))])
    rig.forward()
    assert_allclose(numpy.asarray(layer.internals["scale"].data.tolist()).ravel(), [4, 5, 4])


@pytest.mark.parametrize(
    "text, shape, message",
    [("local_size: 4", (1, 3, 2, 2), "odd"), ("", (1, 3, 2), "4 axes")],
)
def test_lrn_errors(xp, text, shape, message):
    with pytest.raises(LayerError, match=message):
        LayerRig(xp, make_layer(f'type: "LRN" lrn_param {{ {text} }}'), [numpy.zeros(shape)])
