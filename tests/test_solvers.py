"""Update rules, lr policies and clipping vs NumPy transcriptions of Caffe's formulas, and a replay
of real Caffe's LeNet solver steps (gradients from an independent NumPy LeNet, no Net involved)."""

import math

import numpy
import pytest
from google.protobuf import text_format
from numpy.lib.stride_tricks import sliding_window_view
from numpy.testing import assert_allclose

from geeps_net import backend, solvers
from geeps_net.errors import SolverError
from geeps_net.proto import caffe_pb2


def solver_param(text: str) -> caffe_pb2.SolverParameter:
    return text_format.Parse(text, caffe_pb2.SolverParameter())


# -- update rules vs the formulas of caffe_format.md (e) -------------------------------------------

RULES = {
    "SGD": "momentum: 0.9",
    "Nesterov": "momentum: 0.8",
    "AdaGrad": "delta: 1e-6",
    "RMSProp": "rms_decay: 0.9 delta: 1e-6",
    "AdaDelta": "momentum: 0.9 delta: 1e-6",
    "Adam": "momentum: 0.9 momentum2: 0.99 delta: 1e-6",
}


def reference_step(p, it, lr, decay, w, g, hist):
    """One step of param `p`'s rule on float64 copies: returns (value to subtract, new history)."""
    g = g + decay * (numpy.sign(w) if p.regularization_type == "L1" else w)
    m, d = p.momentum, p.delta
    if p.type == "SGD":
        v = m * hist[0] + lr * g
        return v, [v]
    if p.type == "Nesterov":
        v = m * hist[0] + lr * g
        return (1 + m) * v - m * hist[0], [v]
    if p.type == "AdaGrad":
        h = hist[0] + g**2
        return lr * g / (numpy.sqrt(h) + d), [h]
    if p.type == "RMSProp":
        h = p.rms_decay * hist[0] + (1 - p.rms_decay) * g**2
        return lr * g / (numpy.sqrt(h) + d), [h]
    if p.type == "AdaDelta":
        h1 = m * hist[0] + (1 - m) * g**2
        u = g * numpy.sqrt(hist[1] + d) / numpy.sqrt(h1 + d)
        return lr * u, [h1, m * hist[1] + (1 - m) * u**2]
    b1, b2, t = m, p.momentum2, it + 1  # Adam
    mm = b1 * hist[0] + (1 - b1) * g
    v = b2 * hist[1] + (1 - b2) * g**2
    return lr * math.sqrt(1 - b2**t) / (1 - b1**t) * mm / (numpy.sqrt(v) + d), [mm, v]


def run_rule(xp, name, dtype, regularization="L2"):
    """Five steps of rule `name` (rate changing per step, lr_mult 2, decay_mult 0.5), ours and the
    reference side by side; yields (ours, reference) for data and every history array."""
    p = solver_param(f'type: "{name}" weight_decay: 0.01 regularization_type: "{regularization}" ')
    p.MergeFrom(solver_param(RULES[name]))
    rule = solvers.create_update_rule(p)
    rng = numpy.random.default_rng(1)
    w = rng.standard_normal((3, 4)).astype(dtype)
    data = xp.array(w)
    history = [xp.zeros((3, 4), dtype) for _ in range(rule.num_history)]
    ref_w, ref_hist = w.astype(numpy.float64), [numpy.zeros((3, 4))] * rule.num_history
    for it in range(5):
        g = rng.standard_normal((3, 4)).astype(dtype)
        rate = float(numpy.float32(0.1 / (1 + it)))
        diff = xp.array(g)  # a copy: update works in place
        rule.update(xp, it, rate, 2.0, 0.5, data, diff, history)
        data -= diff
        lr, decay = rate * 2.0, float(numpy.float32(0.01)) * 0.5
        step, ref_hist = reference_step(p, it, lr, decay, ref_w, g.astype(numpy.float64), ref_hist)
        ref_w = ref_w - step
        yield from zip([data, *history], [ref_w, *ref_hist], strict=True)


@pytest.mark.parametrize("regularization", ["L2", "L1"])
@pytest.mark.parametrize("name", sorted(RULES))
def test_rule_float64(xp, name, regularization):
    assert solvers.SOLVERS[name].num_history == (2 if name in ("AdaDelta", "Adam") else 1)
    for ours, ref in run_rule(xp, name, numpy.float64, regularization):
        assert ours.dtype == numpy.float64
        assert_allclose(
            numpy.asarray(ours.get() if hasattr(ours, "get") else ours), ref, 1e-12, 1e-14
        )


@pytest.mark.parametrize("name", sorted(RULES))
def test_rule_float32(xp, name):
    for ours, ref in run_rule(xp, name, numpy.float32):
        assert ours.dtype == numpy.float32
        host = ours.get() if hasattr(ours, "get") else ours
        assert_allclose(host, ref, rtol=2e-5, atol=1e-6)


def test_sgd_rounds_like_caffe_axpby():
    """float32, Caffe's order: v = fl(fl(m·v) + fl(lr·g)), lr = fl(rate·lr_mult), g += fl(λ·w)."""
    p = solver_param('type: "SGD" momentum: 0.9 weight_decay: 0.001')
    rng = numpy.random.default_rng(2)
    w, g, v = (rng.standard_normal(1000).astype(numpy.float32) for _ in range(3))
    diff, hist = g.copy(), [v.copy()]
    solvers.SGD(p).update(numpy, 0, 0.01, 2.0, 1.0, w, diff, hist)
    f = numpy.float32
    g2 = g + f(0.001) * w
    expected = f(0.9) * v + (f(0.01) * f(2.0)) * g2
    numpy.testing.assert_array_equal(diff, expected)
    numpy.testing.assert_array_equal(hist[0], expected)


def test_adam_bias_correction_uses_iter_plus_one():
    p = solver_param('type: "Adam" momentum: 0.9 momentum2: 0.999 delta: 0')
    diff, hist = numpy.ones(2), [numpy.zeros(2), numpy.zeros(2)]
    solvers.Adam(p).update(numpy, 0, 1.0, 1.0, 1.0, numpy.zeros(2), diff, hist)
    assert_allclose(diff, 1.0)  # m = 0.1, v = 0.001: √(0.001)/0.1 · 0.1/√0.001 = 1


# -- learning-rate policies ------------------------------------------------------------------------


def f(x: float) -> float:
    """x as the float32 a proto float field holds."""
    return float(numpy.float32(x))


POLICIES = [
    ("fixed", "", lambda it: f(0.01)),
    ("step", "gamma: 0.1 stepsize: 3", lambda it: f(0.01) * f(0.1) ** (it // 3)),
    ("exp", "gamma: 0.99", lambda it: f(0.01) * f(0.99) ** it),
    ("inv", "gamma: 0.0001 power: 0.75", lambda it: f(0.01) * (1 + f(1e-4) * it) ** -0.75),
    ("poly", "power: 0.5 max_iter: 1000", lambda it: f(0.01) * (1 - it / 1000) ** 0.5),
    (
        "sigmoid",
        "gamma: 0.05 stepsize: 50",
        lambda it: f(0.01) / (1 + math.exp(-f(0.05) * (it - 50))),
    ),
]


@pytest.mark.parametrize("policy, fields, formula", POLICIES, ids=[p[0] for p in POLICIES])
def test_lr_policy(policy, fields, formula):
    p = solver_param(f'base_lr: 0.01 lr_policy: "{policy}" {fields}')
    for it in (0, 1, 2, 3, 7, 50, 600):
        rate = solvers.learning_rate(p, it, solvers.LrState())
        assert rate == float(numpy.float32(rate))  # a float, as Caffe's Dtype
        assert rate == pytest.approx(formula(it), rel=2e-6)


def test_step_policy_sets_current_step():
    state = solvers.LrState()
    solvers.learning_rate(solver_param('lr_policy: "step" gamma: 0.5 stepsize: 4'), 9, state)
    assert state.current_step == 2


def test_multistep_advances_at_most_one_step_per_iteration():
    p = solver_param('base_lr: 1 lr_policy: "multistep" gamma: 0.5 stepvalue: 2 stepvalue: 4')
    state = solvers.LrState()
    rates = [solvers.learning_rate(p, it, state) for it in range(6)]
    assert rates == [1, 1, 0.5, 0.5, 0.25, 0.25]
    state = solvers.LrState()  # resumed far past both steps: one step per call, as Caffe
    assert solvers.learning_rate(p, 100, state) == 0.5 and state.current_step == 1
    assert solvers.learning_rate(p, 101, state) == 0.25 and state.current_step == 2


@pytest.mark.parametrize(
    "text, message",
    [
        ('lr_policy: "cosine"', 'unknown lr_policy "cosine" (known: fixed, step'),
        ('lr_policy: "step" gamma: 0.1', "stepsize must be > 0"),
        ('lr_policy: "exp" gamma: -1', "gamma must be >= 0"),
        ('lr_policy: "poly" power: 1', "max_iter must be > 0"),
    ],
)
def test_lr_policy_errors(text, message):
    with pytest.raises(SolverError, match=message.replace("(", r"\(")):
        solvers.learning_rate(solver_param(text), 1, solvers.LrState())


# -- clipping and normalization --------------------------------------------------------------------


def test_clip_gradients_scales_by_global_norm(xp):
    a, b = xp.asarray([3.0, 0.0]), xp.asarray([[0.0], [4.0]])  # global L2 norm 5
    solvers.clip_gradients(xp, [a, b], 1.0)
    assert_allclose(numpy.asarray([*a.tolist(), *b.ravel().tolist()]), [0.6, 0, 0, 0.8])
    solvers.clip_gradients(xp, [a, b], 2.0)  # norm 1 <= 2: untouched
    solvers.clip_gradients(xp, [a, b], -1.0)  # clipping off
    assert_allclose(numpy.asarray(a.tolist()), [0.6, 0])


def test_normalize(xp):
    diff = xp.asarray(numpy.full(3, 3.0, numpy.float32))
    solvers.normalize(xp, diff, 1)
    solvers.normalize(xp, diff, 3)
    assert diff.tolist() == [float(numpy.float32(3) * (numpy.float32(1) / numpy.float32(3)))] * 3


# -- validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, message",
    [
        ('type: "Adagrad"', 'unknown solver type "Adagrad" (known: AdaDelta, AdaGrad, Adam'),
        ('type: "AdaGrad" momentum: 0.9', "AdaGrad: momentum cannot be used"),
        ('type: "RMSProp" momentum: 0.9', "RMSProp: momentum cannot be used"),
        ('type: "RMSProp" rms_decay: 1.0', r"rms_decay must lie in \[0, 1\)"),
        ('type: "SGD" regularization_type: "L3"', 'unknown regularization_type "L3"'),
        ('type: "SGD" solver_type: ADAM', "cannot both be set"),
    ],
)
def test_solver_errors(text, message):
    with pytest.raises(
        SolverError, match=message.replace("(", r"\(") if "[" not in message else message
    ):
        solvers.create_update_rule(solver_param(text))


def test_legacy_solver_type_enum():
    for enum, name in [("SGD", "SGD"), ("NESTEROV", "Nesterov"), ("ADADELTA", "AdaDelta")]:
        rule = solvers.create_update_rule(solver_param(f"solver_type: {enum}"))
        assert rule.type == name
    assert solvers.create_update_rule(solver_param("")).type == "SGD"  # type defaults to "SGD"


# -- real Caffe: 3 LeNet solver steps --------------------------------------------------------------


def conv(x, w, b):
    win = sliding_window_view(x, w.shape[-2:], axis=(2, 3))  # (n, c, oh, ow, kh, kw)
    return numpy.einsum("nchwij,ocij->nohw", win, w, optimize=True) + b[:, None, None], win


def conv_backward(dy, win, w, x_shape):
    dw = numpy.einsum("nohw,nchwij->ocij", dy, win, optimize=True)
    dx = numpy.zeros(x_shape)
    oh, ow = dy.shape[2:]
    for i, j in numpy.ndindex(*w.shape[2:]):  # scatter each kernel tap back
        dx[:, :, i : i + oh, j : j + ow] += numpy.einsum("nohw,oc->nchw", dy, w[:, :, i, j])
    return dx, dw, dy.sum(axis=(0, 2, 3))


def pool(x):
    """2x2 stride-2 max pooling; the first maximum of each window (row-major) wins, as in Caffe."""
    n, c, h, w = x.shape
    blocks = x.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5)
    blocks = blocks.reshape(n, c, h // 2, w // 2, 4)
    arg = blocks.argmax(axis=-1)[..., None]
    return numpy.take_along_axis(blocks, arg, -1)[..., 0], arg


def pool_backward(dy, arg, x_shape):
    n, c, h, w = x_shape
    blocks = numpy.zeros((n, c, h // 2, w // 2, 4))
    numpy.put_along_axis(blocks, arg, dy[..., None], -1)
    return blocks.reshape(n, c, h // 2, w // 2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(x_shape)


def lenet_gradients(params, x, label):
    """(loss, param diffs) of Caffe's LeNet with SoftmaxWithLoss, in float64."""
    p = {k: v.astype(numpy.float64) for k, v in params.items()}
    c1, win1 = conv(x.astype(numpy.float64), p["conv1/0"], p["conv1/1"])
    p1, a1 = pool(c1)
    c2, win2 = conv(p1, p["conv2/0"], p["conv2/1"])
    p2, a2 = pool(c2)
    flat = p2.reshape(len(x), -1)
    z = flat @ p["ip1/0"].T + p["ip1/1"]
    h = numpy.maximum(z, 0)
    logits = h @ p["ip2/0"].T + p["ip2/1"]
    prob = numpy.exp(logits - logits.max(axis=1, keepdims=True))
    prob /= prob.sum(axis=1, keepdims=True)
    rows, y = numpy.arange(len(x)), label.astype(int)
    loss = -numpy.log(prob[rows, y]).mean()
    dl = prob
    dl[rows, y] -= 1
    dl /= len(x)
    g = {"ip2/0": dl.T @ h, "ip2/1": dl.sum(0)}
    dz = (dl @ p["ip2/0"]) * (z > 0)
    g["ip1/0"], g["ip1/1"] = dz.T @ flat, dz.sum(0)
    dc2 = pool_backward((dz @ p["ip1/0"]).reshape(p2.shape), a2, c2.shape)
    dp1, g["conv2/0"], g["conv2/1"] = conv_backward(dc2, win2, p["conv2/0"], p1.shape)
    dc1 = pool_backward(dp1, a1, c1.shape)
    _, g["conv1/0"], g["conv1/1"] = conv_backward(dc1, win1, p["conv1/0"], x.shape)
    return loss, g


def sampled(npz, key, full):
    """The oracle's value for `key` and ours, reduced alike where the oracle stored a sample."""
    if f"stride/{key}" in npz.files:
        full = full.reshape(-1)[:: int(npz[f"stride/{key}"])]
    return npz[key], full


def test_lenet_reference_matches_caffe(reference):
    """The NumPy LeNet used below reproduces real Caffe's loss and param gradients."""
    root = reference / "oracle" / "numeric" / "lenet"
    params, backward = numpy.load(root / "params.npz"), numpy.load(root / "backward.npz")
    weights = {k[len("param/") :]: params[k] for k in params.files if k.startswith("param/")}
    loss, grads = lenet_gradients(weights, params["in/data"], params["in/label"])
    assert loss == pytest.approx(float(numpy.load(root / "forward.npz")["out/loss"]), rel=1e-6)
    for name, g in grads.items():
        assert_allclose(*sampled(backward, f"pgrad/{name}", g), rtol=1e-4, atol=1e-6)


def param_specs(path):
    """(layer/i, lr_mult, decay_mult) of each learnable blob of the oracle's LeNet, in order."""
    net = text_format.Parse(path.read_text(), caffe_pb2.NetParameter())
    specs = []
    for layer in net.layer:
        if layer.type in ("Convolution", "InnerProduct"):
            for i in range(2):
                spec = layer.param[i] if i < len(layer.param) else caffe_pb2.ParamSpec()
                specs.append((f"{layer.name}/{i}", spec.lr_mult, spec.decay_mult))
    return specs


CASES = ["sgd", "sgd_l1_step", "sgd_clip", "nesterov", "adagrad", "rmsprop", "adadelta", "adam"]


@pytest.mark.parametrize("case", CASES)
def test_caffe_solver_steps(reference, case):
    """Replay Caffe's ApplyUpdate for 3 iterations with gradients from the NumPy LeNet."""
    root = reference / "oracle" / "numeric" / "solvers"
    param = solver_param((root / f"{case}.solver.prototxt").read_text())
    initial, oracle = numpy.load(root / "initial.npz"), numpy.load(root / f"{case}.npz")
    specs = param_specs(root / "lenet_train_b4.prototxt")
    data = {name: initial[f"param/{name}"].copy() for name, _, _ in specs}
    rule, state = solvers.create_update_rule(param), solvers.LrState()
    history = {
        name: [numpy.zeros_like(w) for _ in range(rule.num_history)] for name, w in data.items()
    }
    losses = []
    for it in range(3):
        loss, grads = lenet_gradients(data, initial["in/data"], initial["in/label"])
        losses.append(loss)
        diffs = {name: grads[name].astype(numpy.float32) for name in data}
        rate = solvers.learning_rate(param, it, state)
        solvers.clip_gradients(numpy, list(diffs.values()), param.clip_gradients)
        for name, lr_mult, decay_mult in specs:
            solvers.normalize(numpy, diffs[name], param.iter_size)
            rule.update(
                numpy, it, rate, lr_mult, decay_mult, data[name], diffs[name], history[name]
            )
            data[name] -= diffs[name]
        for name in data:
            key = f"param_after{it + 1}/{name}"
            # The oracle's full-size param_after1 arrays alias param_after3 (views saved after the
            # run); only its sampled arrays hold step-1 values.
            if key in oracle.files and (it == 2 or f"stride/{key}" in oracle.files):
                expected, ours = sampled(oracle, key, data[name])
                start = sampled(oracle, key, initial[f"param/{name}"])[1]
                assert_allclose(ours - start, expected - start, rtol=1e-3, atol=5e-6, err_msg=key)
    assert_allclose(losses, oracle["loss"], rtol=1e-5)


@pytest.mark.parametrize("name", list(RULES))
@pytest.mark.parametrize("then", [None, "subtract", "negate"])
@pytest.mark.parametrize("threads", [1, 2])
def test_blockwise_update_is_bit_identical(monkeypatch, name, then, threads):
    """The CPU update runs block by block, the blocks shared out to the CPU threads; blocks of 7
    elements must give exactly the bits of one whole-array pass, with the caller's finishing
    step (data -= diff or diff = -diff) fused."""
    monkeypatch.setattr(backend, "_chunk_threads", lambda: backend._ChunkThreads(threads))
    p = solver_param(f'type: "{name}" weight_decay: 0.01 ' + RULES[name])
    rng = numpy.random.default_rng(3)
    w, g = rng.standard_normal((2, 50, 3)).astype(numpy.float32)
    results = []
    for block in (7, 1 << 30):
        monkeypatch.setattr(solvers, "UPDATE_BLOCK", block)
        rule = solvers.create_update_rule(p)
        data, history = w.copy(), [numpy.full(w.shape, 0.25, numpy.float32)] * rule.num_history
        history = [h.copy() for h in history]
        for it in range(3):
            diff = (g * (it + 1)).astype(numpy.float32)
            rule.update(numpy, it, 0.1, 2.0, 0.5, data, diff, history, then=then)
            if then is None:
                data -= diff
            elif then == "negate":
                data += diff
        results.append([data, diff, *history])
    for blocked, whole in zip(*results, strict=True):
        assert blocked.tobytes() == whole.tobytes()
