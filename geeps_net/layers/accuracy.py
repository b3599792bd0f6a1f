"""Accuracy and ArgMax: evaluation layers with no backward."""

from __future__ import annotations

from geeps_net.layer import Layer, register
from geeps_net.layers.loss import read_labels
from geeps_net.layers.softmax import canonical_axis, split_at_axis


@register("Accuracy")
class AccuracyLayer(Layer):
    """Top 0 (shape ()) = correct / counted; optional top 1 (C,) = per-class accuracy.

    Scores x are (outer, C, inner) around accuracy_param.axis (default 1), labels have count
    outer * inner. A position is correct when fewer than top_k other classes score >= the true
    class (ties count against). Positions labelled ignore_label are not counted; 0 when none is.
    """

    num_bottoms = 2
    num_tops = (1, 2)
    has_backward = False
    backward_reads = frozenset()
    no_gradient_bottoms = (1,)

    def setup(self, bottoms, tops):
        p = self.layer_param.accuracy_param
        self.top_k = p.top_k
        self.ignore_label = p.ignore_label if p.HasField("ignore_label") else None

    def reshape(self, bottoms, tops):
        if bottoms[1].count == 0 or self.top_k > bottoms[0].count // bottoms[1].count:
            raise self.error(f"top_k {self.top_k} exceeds the number of classes")
        axis = canonical_axis(self, bottoms[0], self.layer_param.accuracy_param.axis)
        self.dims = split_at_axis(bottoms[0], axis)
        if self.dims[0] * self.dims[2] != bottoms[1].count:
            raise self.error(
                f"{self.dims[0] * self.dims[2]} labels expected for scores of shape "
                f"{bottoms[0].shape}, bottom 1 has {bottoms[1].count}"
            )
        tops[0].reshape(())
        if len(tops) > 1:
            tops[1].reshape((self.dims[1],))

    def forward(self, xp, bottoms, tops):
        outer, c, inner = self.dims
        x = bottoms[0].data.reshape(outer, c, inner)
        labels, counted = read_labels(self, xp, bottoms[1], (outer, 1, inner), c, self.ignore_label)
        true_score = xp.take_along_axis(x, labels, axis=1)
        better = (x >= true_score).sum(axis=1, keepdims=True) - 1  # the true class counts itself
        hits = better < self.top_k
        # Dividing by max(count, 1) gives 0 when nothing is counted, as Caffe's special case.
        if counted is None:
            tops[0].data[...] = hits.sum() / max(outer * inner, 1)
        else:
            tops[0].data[...] = (hits & counted).sum() / xp.maximum(counted.sum(), 1)
        if len(tops) > 1:
            self._per_class(xp, tops[1].data, labels.ravel(), hits.ravel(), counted, c)

    @staticmethod
    def _per_class(xp, out, labels, hits, counted, num_classes):
        """out[k] = hits / occurrences of class k among counted positions (0 if it never occurs)."""
        weight = 1.0 if counted is None else counted.ravel()
        seen = xp.bincount(labels, weights=weight * xp.ones(labels.shape), minlength=num_classes)
        right = xp.bincount(labels, weights=weight * hits, minlength=num_classes)
        out[...] = right / xp.maximum(seen, 1)  # right is 0 where seen is


@register("ArgMax")
class ArgMaxLayer(Layer):
    """Indices (as floats) of the top_k largest values, largest first; ties go to the larger index.

    Without argmax_param.axis: per item over all non-batch values, top (N, 1, top_k) padded with
    1s to the bottom's rank (at least 3), or (N, 2, top_k, ...) holding indices then values when
    out_max_val. With axis: the bottom's shape with shape[axis] = top_k, holding the indices, or
    the values instead when out_max_val.
    """

    has_backward = False
    backward_reads = frozenset()

    def setup(self, bottoms, tops):
        p = self.layer_param.argmax_param
        self.out_max_val, self.top_k = p.out_max_val, p.top_k
        self.has_axis = p.HasField("axis")
        if self.top_k < 1:
            raise self.error("top_k must be at least 1")

    def reshape(self, bottoms, tops):
        shape = bottoms[0].shape
        if self.has_axis:
            self.axis = canonical_axis(self, bottoms[0], self.layer_param.argmax_param.axis)
            if self.top_k > shape[self.axis]:
                raise self.error(f"top_k {self.top_k} exceeds axis {self.axis} of {shape}")
            tops[0].reshape(shape[: self.axis] + (self.top_k,) + shape[self.axis + 1 :])
            return
        if self.top_k > bottoms[0].count_range(1):
            raise self.error(f"top_k {self.top_k} exceeds the values per item of {shape}")
        top_shape = [1] * max(len(shape), 3)
        top_shape[0], top_shape[1], top_shape[2] = (
            shape[0],
            2 if self.out_max_val else 1,
            self.top_k,
        )
        tops[0].reshape(top_shape)

    def forward(self, xp, bottoms, tops):
        x = bottoms[0].data
        if self.has_axis:
            order = _top_indices(xp, x, self.axis, self.top_k)
            value = xp.take_along_axis(x, order, axis=self.axis) if self.out_max_val else order
            tops[0].data[...] = value
            return
        flat = x.reshape(x.shape[0], -1)
        order = _top_indices(xp, flat, 1, self.top_k)
        out = tops[0].data.reshape(x.shape[0], -1, self.top_k)
        out[:, 0, :] = order
        if self.out_max_val:
            out[:, 1, :] = xp.take_along_axis(flat, order, axis=1)


def _top_indices(xp, x, axis: int, k: int):
    """Indices of the k largest along `axis`, largest first, ties to the larger index (Caffe sorts
    (value, index) pairs with std::greater): a stable ascending sort, reversed."""
    order = xp.flip(xp.argsort(x, axis=axis, kind="stable"), axis=axis)
    return xp.take(order, xp.arange(k), axis=axis)
