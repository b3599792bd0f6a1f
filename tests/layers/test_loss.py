import math

import numpy
import pytest
from numpy.testing import assert_allclose

from geeps_net.errors import LayerError
from geeps_net.testing import LayerRig, check_gradient, forward_once, make_layer


def rng(seed=0):
    return numpy.random.default_rng(seed)


def backward(xp, text, inputs, weight, propagate):
    rig = LayerRig(xp, make_layer(text), inputs)
    rig.forward()
    return rig.backward([numpy.array(weight)], propagate)


def test_loss_layers_declare_a_scalar_top_and_loss(xp):
    x, labels = rng().standard_normal((3, 4)), numpy.array([0.0, 1, 2])
    for kind in ("SigmoidCrossEntropyLoss", "HingeLoss"):
        layer = make_layer(f'type: "{kind}"')
        inputs = [x, rng(1).uniform(0, 1, x.shape) if kind.startswith("Sig") else labels]
        rig = LayerRig(xp, layer, inputs)
        assert rig.tops[0].shape == () and layer.is_loss and layer.no_gradient_bottoms == (1,)


# -- EuclideanLoss ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape_b", [(2, 3, 2, 2), (2, 12)])
def test_euclidean(xp, shape_b):
    a, b = rng().standard_normal((2, 3, 2, 2)), rng(1).standard_normal(shape_b)
    layer = make_layer('type: "EuclideanLoss"')
    want = sum((a.ravel()[i] - b.ravel()[i]) ** 2 for i in range(a.size)) / 2 / 2
    assert_allclose(forward_once(xp, layer, a, b), want)
    assert layer.no_gradient_bottoms == () and "diff" in layer.internals
    check_gradient(xp, make_layer('type: "EuclideanLoss"'), [a, b])
    da, db = backward(xp, 'type: "EuclideanLoss"', [a, b], 3.0, [True, True])
    assert_allclose(da, 3.0 * (a - b.reshape(a.shape)) / 2)
    assert_allclose(db, -da.reshape(shape_b))


def test_euclidean_shape_errors(xp):
    with pytest.raises(LayerError, match="same dimension"):
        LayerRig(xp, make_layer('type: "EuclideanLoss"'), [numpy.ones((2, 3)), numpy.ones((2, 4))])
    with pytest.raises(LayerError, match="same first dimension"):
        LayerRig(xp, make_layer('type: "EuclideanLoss"'), [numpy.ones((2, 3)), numpy.ones((3, 2))])


# -- SigmoidCrossEntropyLoss -----------------------------------------------------------------------


def sigmoid_xent_ref(x, t, ignore=None, mode="BATCH_SIZE"):
    loss, count = 0.0, 0
    for xi, ti in zip(x.ravel(), t.ravel(), strict=True):
        if ignore is not None and int(ti) == ignore:
            continue
        p = 1 / (1 + math.exp(-xi))
        loss -= ti * math.log(p) + (1 - ti) * math.log(1 - p)
        count += 1
    norm = {"FULL": x.size, "VALID": count, "BATCH_SIZE": x.shape[0], "NONE": 1}[mode]
    return loss / max(norm, 1)


XENT_X = rng(4).standard_normal((3, 2, 2)) * 2
XENT_T = numpy.array([1, 0, 0.25, 1, -1, 0, 1, -1, 0.75, 0, 1, 0], float).reshape(3, 2, 2)


@pytest.mark.parametrize(
    "loss_param, mode, ignore",
    [
        ("", "BATCH_SIZE", None),  # this layer's own default, unlike SoftmaxWithLoss
        ("normalization: VALID", "VALID", None),
        ("normalization: FULL", "FULL", None),
        ("normalization: NONE", "NONE", None),
        ("ignore_label: -1", "BATCH_SIZE", -1),
        ("ignore_label: -1 normalization: VALID", "VALID", -1),
        ("ignore_label: -1 normalization: FULL", "FULL", -1),
        ("ignore_label: -1 normalize: true", "VALID", -1),
        ("normalize: false", "BATCH_SIZE", None),
    ],
)
def test_sigmoid_cross_entropy(xp, loss_param, mode, ignore):
    text = 'type: "SigmoidCrossEntropyLoss"' + (
        f" loss_param {{ {loss_param} }}" if loss_param else ""
    )
    t = XENT_T if ignore is not None else numpy.abs(XENT_T)
    assert_allclose(
        forward_once(xp, make_layer(text), XENT_X, t), sigmoid_xent_ref(XENT_X, t, ignore, mode)
    )
    check_gradient(xp, make_layer(text), [XENT_X, t])


def test_sigmoid_cross_entropy_gradient_formula_and_stability(xp):
    text = 'type: "SigmoidCrossEntropyLoss" loss_param { ignore_label: -1 }'
    dx = backward(xp, text, [XENT_X, XENT_T], 2.0, [True, False])[0]
    want = (1 / (1 + numpy.exp(-XENT_X)) - XENT_T) * (XENT_T != -1) * 2.0 / 3
    assert_allclose(dx, want)
    x, t = numpy.array([[-800.0, 800.0]]), numpy.array([[1.0, 0.0]])
    with numpy.errstate(over="raise"):
        assert_allclose(forward_once(xp, make_layer('type: "SigmoidCrossEntropyLoss"'), x, t), 1600)
    with pytest.raises(LayerError, match="backpropagate"):
        backward(xp, text, [XENT_X, XENT_T], 1.0, [True, True])
    with pytest.raises(LayerError, match="same count"):
        LayerRig(xp, make_layer(text), [XENT_X, numpy.ones((3, 2))])


# -- ContrastiveLoss -------------------------------------------------------------------------------


def contrastive_ref(a, b, sim, margin, legacy):
    loss = 0.0
    for i in range(a.shape[0]):
        d2 = float(((a[i] - b[i]) ** 2).sum())
        if int(sim[i]):
            loss += d2
        elif legacy:
            loss += max(margin - d2, 0.0)
        else:
            loss += max(margin - math.sqrt(d2), 0.0) ** 2
    return loss / a.shape[0] / 2


PAIRS = rng(5).standard_normal((8, 3)) * 0.6, rng(6).standard_normal((8, 3)) * 0.6
SIM = numpy.array([1.0, 0, 0, 1, 0, 0, 1, 0])


@pytest.mark.parametrize(
    "param, margin, legacy",
    [
        ("", 1.0, False),
        ("margin: 2.0", 2.0, False),
        ("legacy_version: true", 1.0, True),
        ("margin: 1.5 legacy_version: true", 1.5, True),
    ],
)
def test_contrastive(xp, param, margin, legacy):
    text = f'type: "ContrastiveLoss" contrastive_loss_param {{ {param} }}'
    a, b = PAIRS
    d = numpy.sqrt(((a - b) ** 2).sum(axis=1))
    assert ((d < margin) & (SIM == 0)).any() and ((d > margin) & (SIM == 0)).any()  # both branches
    assert_allclose(
        forward_once(xp, make_layer(text), a, b, SIM), contrastive_ref(a, b, SIM, margin, legacy)
    )
    # Caffe's non-legacy gradient divides by d + 1e-4, not d: within the checker's tolerance.
    check_gradient(xp, make_layer(text), [a, b, SIM])
    a4, b4 = a.reshape(8, 3, 1, 1), b.reshape(8, 3, 1, 1)
    assert_allclose(
        forward_once(xp, make_layer(text), a4, b4, SIM.reshape(8, 1, 1, 1)),
        contrastive_ref(a, b, SIM, margin, legacy),
    )


def test_contrastive_gradient_formula(xp):
    """Caffe's dissimilar-pair gradient: -w/N (margin - d) / (d + 1e-4) (a - b) while d < margin."""
    a, b = PAIRS
    da, db, _ = backward(xp, 'type: "ContrastiveLoss"', [a, b, SIM], 2.0, [True, True, False])
    diff = a - b
    d = numpy.sqrt((diff**2).sum(axis=1, keepdims=True))
    alpha = 2.0 / 8
    dissimilar = numpy.where(d < 1.0, -alpha * (1.0 - d) / (d + 1e-4), 0.0)
    want = numpy.where(SIM[:, None] != 0, alpha, dissimilar) * diff
    assert_allclose(da, want)
    assert_allclose(db, -want)
    with pytest.raises(LayerError, match="bottom 2"):
        backward(xp, 'type: "ContrastiveLoss"', [a, b, SIM], 1.0, [True, True, True])
    with pytest.raises(LayerError, match="do not fit"):
        LayerRig(xp, make_layer('type: "ContrastiveLoss"'), [a, b, numpy.ones((8, 2))])


# -- HingeLoss -------------------------------------------------------------------------------------


def hinge_ref(x, labels, norm):
    x = x.reshape(x.shape[0], -1)
    loss = 0.0
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            t = 1.0 if j == int(labels[i]) else -1.0
            m = max(0.0, 1.0 - t * x[i, j])
            loss += m if norm == "L1" else m * m
    return loss / x.shape[0]


@pytest.mark.parametrize(
    "param, norm",
    [("", "L1"), ("hinge_loss_param { norm: L1 }", "L1"), ("hinge_loss_param { norm: L2 }", "L2")],
)
def test_hinge(xp, param, norm):
    text = f'type: "HingeLoss" {param}'
    x, labels = rng(7).standard_normal((4, 5)) * 1.5, numpy.array([0.0, 4, 2, 2])
    assert_allclose(forward_once(xp, make_layer(text), x, labels), hinge_ref(x, labels, norm))
    check_gradient(xp, make_layer(text), [x, labels], kink=1.0)
    x4 = x.reshape(4, 5, 1, 1)
    assert_allclose(forward_once(xp, make_layer(text), x4, labels), hinge_ref(x, labels, norm))
    with pytest.raises(LayerError, match="backpropagate"):
        backward(xp, text, [x, labels], 1.0, [True, True])


# -- MultinomialLogisticLoss -----------------------------------------------------------------------


def test_multinomial_logistic(xp):
    p = rng(8).uniform(0.05, 1.0, (4, 3))
    p[3, 1] = 0.0  # floored at 1e-20 before the log
    labels = numpy.array([0.0, 2, 1, 1])
    want = -sum(math.log(max(p[i, int(labels[i])], 1e-20)) for i in range(4)) / 4
    assert_allclose(
        forward_once(xp, make_layer('type: "MultinomialLogisticLoss"'), p, labels), want
    )
    p[3, 1] = 0.5
    check_gradient(xp, make_layer('type: "MultinomialLogisticLoss"'), [p, labels])
    dx = backward(xp, 'type: "MultinomialLogisticLoss"', [p, labels], 2.0, [True, False])[0]
    want = numpy.zeros_like(p)
    for i in range(4):
        want[i, int(labels[i])] = -2.0 / 4 / p[i, int(labels[i])]
    assert_allclose(dx, want)
    with pytest.raises(LayerError, match="labels expected"):
        LayerRig(xp, make_layer('type: "MultinomialLogisticLoss"'), [p, numpy.zeros((4, 2))])


@pytest.mark.parametrize("kind", ["HingeLoss", "MultinomialLogisticLoss", "InfogainLoss"])
def test_labels_out_of_range(xp, kind):
    x, labels = rng().uniform(0.1, 1, (3, 4)), numpy.array([0.0, 4, 1])
    inputs = [x, labels] + ([numpy.eye(4)] if kind == "InfogainLoss" else [])
    with pytest.raises(LayerError, match=r"outside \[0, 4\)"):
        forward_once(xp, make_layer(f'type: "{kind}"'), *inputs)
