import numpy
import pytest
from numpy.testing import assert_allclose

import geeps_net.backend as backend
from geeps_net.backend import to_host
from geeps_net.errors import LayerError
from geeps_net.testing import (
    LayerRig,
    check_backward_reads,
    check_gradient,
    forward_once,
    make_layer,
)

CASES = {
    # name: (inner_product_param text, x shape, axis, transpose, bias)
    "basic": ("", (3, 5), 1, False, True),
    "4d_flatten": ("", (2, 3, 2, 2), 1, False, True),
    "transpose": ("transpose: true", (3, 6), 1, True, True),
    "no_bias": ("bias_term: false", (3, 6), 1, False, False),
    "axis2": ("axis: 2", (2, 3, 2, 2), 2, False, True),
    "axis_negative_transpose": ("axis: -1 transpose: true", (2, 3, 4), 2, True, True),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_inner_product(xp, name):
    text, shape, axis, transpose, bias = CASES[name]
    rng = numpy.random.default_rng(0)
    x = rng.standard_normal(shape)
    k = int(numpy.prod(shape[axis:]))
    w = rng.standard_normal((k, 4) if transpose else (4, k))
    b = rng.standard_normal(4)
    params = [w, b] if bias else [w]
    want = x.reshape(-1, k) @ (w if transpose else w.T) + (b if bias else 0)
    layer_text = f'type: "InnerProduct" inner_product_param {{ num_output: 4 {text} }}'
    y = forward_once(xp, make_layer(layer_text), x, params=params)
    assert y.shape == shape[:axis] + (4,)
    assert_allclose(y.reshape(-1, 4), want, rtol=1e-12)
    check_gradient(xp, make_layer(layer_text), [x], params=params)
    check_backward_reads(xp, make_layer(layer_text), [x], params=params)


def test_inner_product_shapes_fillers_and_accumulation(xp):
    layer = make_layer('type: "InnerProduct" inner_product_param { num_output: 2 }')
    rig = LayerRig(xp, layer, [numpy.ones((3, 4))])
    assert [b.shape for b in layer.blobs] == [(2, 4), (2,)]
    assert not to_host(layer.blobs[0].data).any()  # Caffe's default filler: constant 0
    rig.forward()
    rig.backward([numpy.ones((3, 2))])
    once = rig.param_diffs()
    layer.backward(xp, rig.tops, [False], rig.bottoms)  # param diffs accumulate, as in Caffe
    for first, twice in zip(once, rig.param_diffs(), strict=True):
        assert_allclose(twice, 2 * first)
    rig.bottoms[0].reshape((3, 5))
    with pytest.raises(LayerError, match="incompatible"):
        rig.reshape()
    with pytest.raises(LayerError, match="num_output"):
        LayerRig(xp, make_layer('type: "InnerProduct"'), [numpy.ones((3, 4))])


@pytest.mark.parametrize("split_min", [1 << 18, 1 << 30])  # split, or whole in the caller
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape, num_output", [((90, 50), 60), ((4, 300), 500)])  # tall, wide
def test_inner_product_blocked_gemms(monkeypatch, threads, shape, num_output, split_min):
    """GEMMs of at least SPLIT_GEMM_MIN multiply-adds go by blocks of rows (a tall top) or of
    columns (a wide one) over the CPU threads; smaller ones run whole (the weight gradient by
    blocks of rows): the numbers of one whole GEMM."""
    monkeypatch.setattr(backend, "_chunk_threads", lambda: backend._ChunkThreads(threads))
    monkeypatch.setattr(backend, "ACCUMULATE_BLOCK", 1000)  # several blocks per GEMM
    monkeypatch.setattr(backend, "SPLIT_GEMM_MIN", split_min)
    rng = numpy.random.default_rng(3)
    x, dy = rng.standard_normal(shape), rng.standard_normal((shape[0], num_output))
    w, b = rng.standard_normal((num_output, shape[1])), rng.standard_normal(num_output)
    assert shape[0] * shape[1] * num_output >= 1 << 18
    for transpose in (False, True):
        text = f"num_output: {num_output} transpose: {str(transpose).lower()}"
        layer = make_layer(f'type: "InnerProduct" inner_product_param {{ {text} }}')
        rig = LayerRig(numpy, layer, [x], params=[w.T if transpose else w, b])
        assert_allclose(rig.forward()[0], x @ w.T + b, rtol=1e-12, atol=1e-12)
        rig.layer.blobs[0].diff[...] = 1.0  # the weight gradient adds to what is there
        layer.backward(numpy, rig.tops, [True], rig.bottoms)
        rig.tops[0].diff[...] = dy
        rig.layer.blobs[0].diff[...] = 1.0
        layer.backward(numpy, rig.tops, [True], rig.bottoms)
        w_diff = dy.T @ x
        assert_allclose(rig.layer.blobs[0].diff, 1.0 + (w_diff.T if transpose else w_diff))
        assert_allclose(rig.bottoms[0].diff, dy @ w, rtol=1e-12, atol=1e-12)


def test_embed(xp):
    rng = numpy.random.default_rng(1)
    idx = numpy.array([[3.0, 0.0, 3.0], [9.0, 3.0, 1.0]])  # 3 repeats: its weight grad adds up
    w, b = rng.standard_normal((10, 4)), rng.standard_normal(4)
    text = 'type: "Embed" embed_param { num_output: 4 input_dim: 10 }'
    y = forward_once(xp, make_layer(text), idx, params=[w, b])
    assert_allclose(y, w[idx.astype(int)] + b)
    assert check_gradient(xp, make_layer(text), [idx], params=[w, b]) == 44
    check_backward_reads(xp, make_layer(text), [idx], params=[w, b])
    plain = 'type: "Embed" embed_param { num_output: 3 input_dim: 5 bias_term: false }'
    y = forward_once(xp, make_layer(plain), numpy.array([4.0, 0.0]), params=[w[:5, :3]])
    assert_allclose(y, w[[4, 0], :3])


@pytest.mark.parametrize("value", [-1.0, 10.0, 2.5])
def test_embed_rejects_bad_indices(xp, value):
    layer = make_layer('type: "Embed" embed_param { num_output: 2 input_dim: 10 }')
    rig = LayerRig(xp, layer, [numpy.array([1.0, value])])
    with pytest.raises(LayerError, match="not an integer in"):
        rig.forward()


def test_embed_refuses_index_gradient(xp):
    layer = make_layer('type: "Embed" embed_param { num_output: 2 input_dim: 3 }')
    assert not layer.allow_force_backward(0)
    rig = LayerRig(xp, layer, [numpy.array([1.0, 2.0])])
    rig.forward()
    with pytest.raises(LayerError, match="backpropagate"):
        rig.backward([numpy.ones((2, 2))], [True])
