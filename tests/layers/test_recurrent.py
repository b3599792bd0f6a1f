import json

import numpy
import pytest
from google.protobuf import text_format
from numpy.testing import assert_allclose

from geeps_net.errors import LayerError
from geeps_net.proto import caffe_pb2
from geeps_net.testing import LayerRig, check_gradient, make_layer

CONT = numpy.array([[0, 0], [1, 1], [0, 1]], dtype=float)  # T=3, N=2: stream 0 restarts at t=2


def sigmoid(z):
    return 1 / (1 + numpy.exp(-z))


# Caffe's default fillers are constant 0, which would leave most of a gradient check trivial.
RANDOM = 'weight_filler { type: "uniform" min: -0.8 max: 0.8 }'
RANDOM += ' bias_filler { type: "uniform" min: -0.5 max: 0.5 }'


def recurrent(kind, num_output, expose=False, fillers=""):
    text = f'name: "r" type: "{kind}" recurrent_param {{ num_output: {num_output} {fillers}'
    text += " expose_hidden: true }" if expose else " }"
    if expose:  # name the tops, since an exposed layer has 1 + #states of them
        text += ' top: "o" top: "hT"' + (' top: "cT"' if kind == "LSTM" else "")
    return make_layer(text)


# -- NumPy references: one stream and one unit at a time ---------------------------------------


def rnn_reference(x, cont, w_xh, b_h, w_s, w_hh, w_ho, b_o, xs=None, h0=None):
    t_steps, n = cont.shape
    d = w_hh.shape[0]
    x = x.reshape(t_steps, n, -1)
    o, h_last = numpy.zeros((t_steps, n, d)), numpy.zeros((1, n, d))
    for s in range(n):
        h = numpy.zeros(d) if h0 is None else h0[0, s]
        for t in range(t_steps):
            z = w_xh @ x[t, s] + b_h + w_hh @ (cont[t, s] * h)
            if w_s is not None:
                z += w_s @ xs[s].reshape(-1)
            h = numpy.tanh(z)
            o[t, s] = [numpy.tanh(w_ho[k] @ h + b_o[k]) for k in range(d)]
        h_last[0, s] = h
    return o, h_last


def lstm_reference(x, cont, w_xc, b_c, w_s, w_hc, xs=None, h0=None, c0=None):
    t_steps, n = cont.shape
    d = w_hc.shape[1]
    x = x.reshape(t_steps, n, -1)
    out = numpy.zeros((t_steps, n, d))
    h_last, c_last = numpy.zeros((1, n, d)), numpy.zeros((1, n, d))
    for s in range(n):
        h = numpy.zeros(d) if h0 is None else h0[0, s]
        c = numpy.zeros(d) if c0 is None else c0[0, s]
        for t in range(t_steps):
            z = w_xc @ x[t, s] + b_c + w_hc @ (cont[t, s] * h)
            if w_s is not None:
                z += w_s @ xs[s].reshape(-1)
            for k in range(d):
                i, f = sigmoid(z[k]), sigmoid(z[d + k])
                o, g = sigmoid(z[2 * d + k]), numpy.tanh(z[3 * d + k])
                c[k] = cont[t, s] * f * c[k] + i * g
                h[k] = o * numpy.tanh(c[k])
            h, c = h.copy(), c.copy()
            out[t, s] = h
        h_last[0, s], c_last[0, s] = h, c
    return out, h_last, c_last


def random_params(layer, x, extra, seed=3):
    """Set `layer` up on the inputs to learn its param shapes; draw values for them."""
    rig = LayerRig(numpy, layer, [x, *extra])
    rng = numpy.random.default_rng(seed)
    return [rng.uniform(-0.8, 0.8, b.shape) for b in rig.layer.blobs]


# -- forward against the references ------------------------------------------------------------


@pytest.mark.parametrize("static", [False, True])
def test_rnn_forward(xp, static):
    rng = numpy.random.default_rng(0)
    x, xs = rng.standard_normal((3, 2, 2, 2)), rng.standard_normal((2, 3))
    bottoms = [x, CONT] + ([xs] if static else [])
    params = random_params(recurrent("RNN", 3), x, bottoms[1:])
    shapes = [(3, 4), (3,)] + ([(3, 3)] if static else []) + [(3, 3), (3, 3), (3,)]
    assert [p.shape for p in params] == shapes  # Caffe's order: W_xh, b_h, [W_xh_static], ...
    rig = LayerRig(xp, recurrent("RNN", 3), bottoms, params=params)
    w_s = params[2] if static else None
    rest = params[3:] if static else params[2:]
    want, _ = rnn_reference(x, CONT, params[0], params[1], w_s, *rest, xs=xs)
    assert_allclose(rig.forward()[0], want, rtol=1e-12)


@pytest.mark.parametrize("static", [False, True])
def test_lstm_forward(xp, static):
    rng = numpy.random.default_rng(1)
    x, xs = rng.standard_normal((3, 2, 3)), rng.standard_normal((2, 2))
    bottoms = [x, CONT] + ([xs] if static else [])
    params = random_params(recurrent("LSTM", 2), x, bottoms[1:])
    shapes = [(8, 3), (8,)] + ([(8, 2)] if static else []) + [(8, 2)]
    assert [p.shape for p in params] == shapes  # W_xc, b_c, [W_xc_static], W_hc
    rig = LayerRig(xp, recurrent("LSTM", 2), bottoms, params=params)
    w_s = params[2] if static else None
    want, _, _ = lstm_reference(x, CONT, params[0], params[1], w_s, params[-1], xs=xs)
    assert_allclose(rig.forward()[0], want, rtol=1e-12)
    # The initial state is zero at every forward: nothing carries over from the last batch.
    assert_allclose(rig.forward()[0], want, rtol=1e-12)


def test_expose_hidden_forward(xp):
    rng = numpy.random.default_rng(2)
    cont = numpy.ones((3, 2))  # continue from the given initial state
    x, h0, c0 = rng.standard_normal((3, 2, 3)), *rng.standard_normal((2, 1, 2, 2))
    params = random_params(recurrent("LSTM", 2, expose=True), x, [cont, h0, c0])
    outs = LayerRig(
        xp, recurrent("LSTM", 2, expose=True), [x, cont, h0, c0], params=params
    ).forward()
    want = lstm_reference(x, cont, params[0], params[1], None, params[2], h0=h0, c0=c0)
    for got, ref in zip(outs, want, strict=True):
        assert_allclose(got, ref, rtol=1e-12)
    params = random_params(recurrent("RNN", 2, expose=True), x, [cont, h0])
    outs = LayerRig(xp, recurrent("RNN", 2, expose=True), [x, cont, h0], params=params).forward()
    want = rnn_reference(x, cont, params[0], params[1], None, *params[2:], h0=h0)
    for got, ref in zip(outs, want, strict=True):
        assert_allclose(got, ref, rtol=1e-12)


def test_fillers_follow_recurrent_param(xp):
    fillers = (
        'weight_filler { type: "constant" value: 0.5 } bias_filler { type: "constant" value: 2 }'
    )
    layer = recurrent("RNN", 2, fillers=fillers)
    LayerRig(xp, layer, [numpy.zeros((1, 1, 3)), numpy.zeros((1, 1))])
    assert [float(b.data.reshape(-1)[0]) for b in layer.blobs] == [0.5, 2, 0.5, 0.5, 2]


def test_lstm_unit_forward(xp):
    rng = numpy.random.default_rng(4)
    c_prev, gates = rng.standard_normal((1, 3, 2)), rng.standard_normal((1, 3, 8))
    cont = numpy.array([[1.0, 0.0, 0.5]])
    c, h = LayerRig(xp, make_layer('type: "LSTMUnit"'), [c_prev, gates, cont]).forward()
    for n in range(3):
        for k in range(2):
            i, f, o, g = (gates[0, n, j * 2 + k] for j in range(4))
            want_c = cont[0, n] * sigmoid(f) * c_prev[0, n, k] + sigmoid(i) * numpy.tanh(g)
            assert_allclose(c[0, n, k], want_c, rtol=1e-12)
            assert_allclose(h[0, n, k], sigmoid(o) * numpy.tanh(want_c), rtol=1e-12)


# -- gradients ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
@pytest.mark.parametrize("static", [False, True])
def test_recurrent_gradient(xp, kind, static):
    bottoms = [(3, 2, 3), CONT] + ([(2, 2)] if static else [])
    layer = recurrent(kind, 2, fillers=RANDOM)
    checked = check_gradient(xp, layer, bottoms)
    assert checked == 18 + 4 * static + sum(b.count for b in layer.blobs)


def hide_exposed_state(layer):
    """Zero the final-state tops after forward, so E does not depend on them: Caffe does not
    backpropagate from them, and the gradient check should compare like with like."""
    forward = layer.forward

    def forward_then_zero(xp, bottoms, tops):
        forward(xp, bottoms, tops)
        for top in tops[1:]:
            top.data[...] = 0

    layer.forward = forward_then_zero
    return layer


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_expose_hidden_gradient(xp, kind):
    states = [(1, 2, 2)] * (2 if kind == "LSTM" else 1)
    bottoms = [(3, 2, 3), numpy.ones((3, 2)), (2, 2), *states]  # with static input too
    layer = hide_exposed_state(recurrent(kind, 2, expose=True, fillers=RANDOM))
    check_gradient(xp, layer, bottoms, check_bottoms=[0, 2])
    # Caffe: the initial states take no gradient, and the final states' diffs are ignored.
    rng = numpy.random.default_rng(5)
    inputs = [rng.standard_normal(s) if isinstance(s, tuple) else s for s in bottoms]
    rig = LayerRig(xp, recurrent(kind, 2, expose=True, fillers=RANDOM), inputs)
    tops = rig.forward()
    diffs = [rng.standard_normal(t.shape) for t in tops]
    grads = rig.backward(diffs)
    zeroed = rig.backward([diffs[0]] + [numpy.zeros(t.shape) for t in tops[1:]])
    for a, b in zip(grads[:1] + grads[2:3], zeroed[:1] + zeroed[2:3], strict=True):
        assert a.any() and (a == b).all()
    for blob in rig.bottoms[3:]:
        blob.diff[...] = 7  # the state diffs are written (zero), not left as they were
    rig.layer.backward(xp, rig.tops, [True, False, True] + [True] * len(states), rig.bottoms)
    for blob in rig.bottoms[3:]:
        assert not blob.diff.any()


def test_lstm_unit_gradient(xp):
    cont = numpy.array([[1.0, 0.0, 1.0]])
    check_gradient(xp, make_layer('type: "LSTMUnit"'), [(1, 3, 2), (1, 3, 8), cont])


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_params_accumulate(xp, kind):
    layer = recurrent(kind, 2, fillers=RANDOM)
    rig = LayerRig(xp, layer, [numpy.ones((2, 1, 3)), numpy.ones((2, 1))])
    rig.forward()
    top_diff = numpy.ones((2, 1, 2))
    rig.backward([top_diff])
    once = rig.param_diffs()
    layer.backward(xp, rig.tops, [True, False], rig.bottoms)  # a second pass adds to the first
    for a, b in zip(rig.param_diffs(), once, strict=True):
        assert b.any()
        assert_allclose(a, 2 * b)


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, expose, bottoms, message",
    [
        ("RNN", False, [(2, 1, 3), (2, 2)], r"bottom cont must be \(T, N\)"),
        (
            "LSTM",
            True,
            [(2, 1, 3), (2, 1)],
            r"expose_hidden true takes .*, h_0, c_0 and 3",
        ),
        (
            "LSTM",
            True,
            [(2, 1, 3), (2, 1), (1, 1, 3), (1, 1, 2)],
            r"bottom h_0 must be \(1, 1, 2\)",
        ),
        ("RNN", False, [(2, 1, 3), (2, 1), (2, 4)], r"bottom x_static \(2, 4\): want \(1, ...\)"),
    ],
)
def test_bad_bottoms(kind, expose, bottoms, message):
    layer = recurrent(kind, 2, expose=expose)
    with pytest.raises(LayerError, match=f'layer "r" \\({kind}\\): {message}'):
        LayerRig(numpy, layer, [numpy.zeros(s) for s in bottoms])


def test_num_output_must_be_positive():
    with pytest.raises(LayerError, match="num_output must be positive"):
        LayerRig(numpy, recurrent("RNN", 0), [numpy.zeros((2, 1, 3)), numpy.zeros((2, 1))])


# -- real Caffe ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["lstm_expose_hidden", "rnn_static", "lstm_unit"])
def test_matches_caffe(reference, case):
    folder = reference / "oracle" / "layers" / case
    net = text_format.Parse((folder / "case.prototxt").read_text(), caffe_pb2.NetParameter())
    (param,) = [lp for lp in net.layer if lp.type != "Input"]
    grads = json.loads((folder.parent / "cases.json").read_text())[case]["inputs"]
    with numpy.load(folder / "case.npz", allow_pickle=False) as npz:
        d = dict(npz)
    n_params = sum(k.startswith(f"param/{param.name}/") for k in d)
    layer = make_layer(text_format.MessageToString(param))
    params = [d[f"param/{param.name}/{i}"] for i in range(n_params)]
    inputs = [d[f"in/{b}"] for b in param.bottom]
    rig = LayerRig(numpy, layer, inputs, dtype="float32", params=params)
    for name, got in zip(param.top, rig.forward(), strict=True):
        assert_allclose(got, d[f"out/{name}"], rtol=1e-4, atol=1e-5, err_msg=name)
    propagate = [grads[b]["grad"] for b in param.bottom]
    bottom_diffs = rig.backward([d[f"topdiff/{t}"] for t in param.top], propagate)
    for name, got, wanted in zip(param.bottom, bottom_diffs, propagate, strict=True):
        if wanted:
            assert_allclose(got, d[f"grad/{name}"], rtol=1e-4, atol=1e-5, err_msg=name)
    for i, got in enumerate(rig.param_diffs()):
        assert_allclose(got, d[f"pgrad/{param.name}/{i}"], rtol=1e-4, atol=1e-5, err_msg=str(i))
