import numpy
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from geeps_net.errors import LayerError
from geeps_net.testing import LayerRig, forward_once, make_layer


def rng(seed=0):
    return numpy.random.default_rng(seed)


def accuracy_ref(x, labels, top_k=1, axis=1, ignore=None):
    """(accuracy, per-class accuracy) by Caffe's loop: correct when fewer than top_k classes
    other than the true one score >= it."""
    outer, c = int(numpy.prod(x.shape[:axis])), x.shape[axis]
    x = x.reshape(outer, c, -1)
    labels = labels.reshape(outer, -1)
    correct = count = 0
    seen, hits = numpy.zeros(c), numpy.zeros(c)
    for i in range(outer):
        for j in range(x.shape[2]):
            k = int(labels[i, j])
            if ignore is not None and k == ignore:
                continue
            seen[k] += 1
            better = sum(x[i, m, j] >= x[i, k, j] for m in range(c)) - 1
            if better < top_k:
                correct += 1
                hits[k] += 1
            count += 1
    per_class = numpy.where(seen > 0, hits / numpy.maximum(seen, 1), 0)
    return (correct / count if count else 0.0), per_class


def acc_text(param="", tops=""):
    return f'type: "Accuracy" {tops}' + (f" accuracy_param {{ {param} }}" if param else "")


@pytest.mark.parametrize(
    "param, top_k, ignore",
    [
        ("", 1, None),
        ("top_k: 2", 2, None),
        ("top_k: 3", 3, None),
        ("ignore_label: 1", 1, 1),
        ("top_k: 2 ignore_label: 0", 2, 0),
    ],
)
def test_accuracy(xp, param, top_k, ignore):
    x, labels = rng().standard_normal((12, 4)), rng(1).integers(0, 4, 12).astype(float)
    acc, per_class = forward_once(xp, make_layer(acc_text(param, 'top: "a" top: "c"')), x, labels)
    want_acc, want_per_class = accuracy_ref(x, labels, top_k, ignore=ignore)
    assert 0 < want_acc < 1
    assert acc.shape == () and per_class.shape == (4,)
    assert_allclose(acc, want_acc)
    assert_allclose(per_class, want_per_class)
    layer = make_layer(acc_text(param))
    assert_allclose(forward_once(xp, layer, x, labels), want_acc)
    assert not layer.has_backward


def test_accuracy_ties_count_against(xp):
    x = numpy.array([[1.0, 1.0, 0.0], [2.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    labels = numpy.array([0.0, 0.0, 2.0])
    assert_allclose(forward_once(xp, make_layer(acc_text()), x, labels), 1 / 3)
    assert_allclose(forward_once(xp, make_layer(acc_text("top_k: 2")), x, labels), 2 / 3)


@pytest.mark.parametrize("axis, label_shape", [(1, (2, 1, 2, 3)), (-1, (2, 4, 2)), (3, (2, 4, 2))])
def test_accuracy_axis(xp, axis, label_shape):
    x = rng().standard_normal((2, 4, 2, 3))
    labels = rng(2).integers(0, x.shape[axis], label_shape).astype(float)
    got = forward_once(xp, make_layer(acc_text(f"axis: {axis} ignore_label: 1")), x, labels)
    assert_allclose(got, accuracy_ref(x, labels, 1, axis % 4, ignore=1)[0])


def test_accuracy_nothing_counted_and_unseen_class(xp):
    x, labels = rng().standard_normal((3, 4)), numpy.array([2.0, 2, 2])
    acc = forward_once(xp, make_layer(acc_text("ignore_label: 2")), x, labels)
    assert_allclose(acc, 0.0)
    _, per_class = forward_once(xp, make_layer(acc_text(tops='top: "a" top: "c"')), x, labels)
    assert_allclose(per_class[[0, 1, 3]], 0.0)


def test_accuracy_errors(xp):
    x = rng().standard_normal((3, 4))
    with pytest.raises(LayerError, match="top_k"):
        LayerRig(xp, make_layer(acc_text("top_k: 5")), [x, numpy.zeros(3)])
    with pytest.raises(LayerError, match="labels expected"):
        LayerRig(xp, make_layer(acc_text()), [x, numpy.zeros(2)])
    with pytest.raises(LayerError, match="outside"):
        forward_once(xp, make_layer(acc_text()), x, numpy.array([0.0, 4, 1]))


# -- ArgMax ----------------------------------------------------------------------------------------


def ranked(values, k):
    """Indices of the k largest, largest first; ties to the larger index (std::greater on pairs)."""
    pairs = sorted(((v, i) for i, v in enumerate(values)), reverse=True)
    return [i for _, i in pairs[:k]], [v for v, _ in pairs[:k]]


@pytest.mark.parametrize("top_k, out_max_val", [(1, False), (3, False), (2, True)])
@pytest.mark.parametrize("shape", [(4, 6), (2, 2, 2, 3)])
def test_argmax_per_item(xp, shape, top_k, out_max_val):
    param = f"top_k: {top_k} out_max_val: {str(out_max_val).lower()}"
    x = rng().standard_normal(shape)
    x.reshape(shape[0], -1)[1, :3] = 5.0  # a tie for the max
    got = forward_once(xp, make_layer(f'type: "ArgMax" argmax_param {{ {param} }}'), x)
    top_shape = [shape[0], 2 if out_max_val else 1, top_k] + [1] * (len(shape) - 3)
    assert got.shape == tuple(top_shape)
    for n in range(shape[0]):
        idx, val = ranked(x[n].ravel(), top_k)
        assert_array_equal(got[n, 0].ravel(), idx)
        if out_max_val:
            assert_array_equal(got[n, 1].ravel(), val)
    assert_array_equal(got[1, 0].ravel()[:1], [2])  # of three equal maxima, the largest index


@pytest.mark.parametrize("axis, top_k, out_max_val", [(1, 2, False), (-1, 1, True), (0, 2, True)])
def test_argmax_axis(xp, axis, top_k, out_max_val):
    param = f"axis: {axis} top_k: {top_k} out_max_val: {str(out_max_val).lower()}"
    x = rng().standard_normal((2, 5, 2, 3)).round(1)  # rounding makes ties likely
    got = forward_once(xp, make_layer(f'type: "ArgMax" argmax_param {{ {param} }}'), x)
    moved = numpy.moveaxis(x, axis, -1)
    want = numpy.empty(moved.shape[:-1] + (top_k,))
    for idx in numpy.ndindex(moved.shape[:-1]):
        indices, values = ranked(moved[idx], top_k)
        want[idx] = values if out_max_val else indices
    assert_array_equal(got, numpy.moveaxis(want, -1, axis))


def test_argmax_errors(xp):
    x = numpy.ones((2, 3))
    for param, match in [
        ("top_k: 0", "at least 1"),
        ("top_k: 7", "top_k"),
        ("axis: 1 top_k: 4", "top_k"),
    ]:
        with pytest.raises(LayerError, match=match):
            LayerRig(xp, make_layer(f'type: "ArgMax" argmax_param {{ {param} }}'), [x])
    assert not make_layer('type: "ArgMax"').has_backward
