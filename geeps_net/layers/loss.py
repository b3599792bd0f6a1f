"""Loss layers: a scalar top of shape () computed from predictions and labels (or targets).

The Net presets top 0's diff to the layer's loss_weight before backward, so every backward here
scales the bottom gradient by `tops[0].diff`: that is how loss_weight reaches the gradient. Labels
are stored as floats and cast to int as Caffe's static_cast<int> does (truncation). The
softmax-based losses (SoftmaxWithLoss, InfogainLoss) live in softmax.py.
"""

from __future__ import annotations

from geeps_net.layer import Layer, enum_name, register
from geeps_net.layers.activation import sigmoid

LOG_THRESHOLD = 1e-20  # Caffe's kLOG_THRESHOLD: probabilities are floored here before the log

# Caffe's LossLayer::GetNormalizer for FULL, BATCH_SIZE, NONE, and VALID with nothing ignored.
_NORMALIZERS = {
    "FULL": lambda outer, inner: outer * inner,
    "VALID": lambda outer, inner: outer * inner,
    "BATCH_SIZE": lambda outer, inner: outer,
    "NONE": lambda outer, inner: 1,
}


def normalization_mode(loss_param, default: str) -> str:
    """loss_param.normalization if set; else legacy normalize (true VALID, false BATCH_SIZE); else
    `default`."""
    if loss_param.HasField("normalization"):
        return enum_name(loss_param, "normalization")
    if loss_param.HasField("normalize"):
        return "VALID" if loss_param.normalize else "BATCH_SIZE"
    return default


def read_labels(
    layer: Layer, xp, blob, shape, num_classes: int, ignore_label: int | None, check: bool = True
):
    """(labels, counted): int64 labels of `shape`, and the mask of counted positions (None: all).

    Ignored positions read as class 0 so they index safely; the caller masks them. With `check`,
    a counted label outside [0, num_classes) raises (one device-to-host read of a flag; backward
    passes check=False, forward having checked the same labels).
    """
    labels = blob.data.reshape(shape).astype(xp.int64)  # truncation toward 0, like static_cast<int>
    counted = None if ignore_label is None else labels != ignore_label
    if check:
        bad = (labels < 0) | (labels >= num_classes)
        if counted is not None:
            bad &= counted
        if bool(bad.any()):
            raise layer.error(f"a label in bottom {blob.name!r} is outside [0, {num_classes})")
    if counted is not None:
        labels = xp.where(counted, labels, 0)
    return labels, counted


class LossLayer(Layer):
    """Base of loss layers: bottom 0 predictions, bottom 1 labels; top 0 the loss, shape ()."""

    is_loss = True
    num_bottoms = 2
    no_gradient_bottoms: tuple[int, ...] = (1,)
    backward_reads = frozenset({"bottom_data", "top_diff"})
    ignore_label: int | None = None  # read_loss_param sets these for the layers that use loss_param
    normalization = "VALID"

    def read_loss_param(self, default_mode: str) -> None:
        """Set self.ignore_label (None when unset) and self.normalization from loss_param."""
        p = self.layer_param.loss_param
        self.ignore_label = p.ignore_label if p.HasField("ignore_label") else None
        self.normalization = normalization_mode(p, default_mode)

    def reshape(self, bottoms, tops):
        if bottoms[0].shape[:1] != bottoms[1].shape[:1]:
            raise self.error(
                f"bottoms 0 and 1 need the same first dimension, got {bottoms[0].shape} and "
                f"{bottoms[1].shape}"
            )
        tops[0].reshape(())

    def check_label_count(self, bottoms, expected: int) -> None:
        if bottoms[1].count != expected:
            raise self.error(
                f"{expected} labels expected for predictions of shape {bottoms[0].shape}, "
                f"bottom 1 has {bottoms[1].count}"
            )

    def labels(self, xp, bottoms, shape, num_classes: int, check: bool = True):
        """read_labels on bottom 1 with this layer's ignore_label."""
        return read_labels(self, xp, bottoms[1], shape, num_classes, self.ignore_label, check)

    def normalizer(self, xp, outer: int, inner: int, counted):
        """Divisor of the summed loss, clamped to >= 1 (a device scalar when it counts labels)."""
        if self.normalization == "VALID" and counted is not None:
            return xp.maximum(counted.sum(dtype=self.dtype), 1)
        return max(_NORMALIZERS[self.normalization](outer, inner), 1)

    def refuse_fixed_inputs(self, propagate_down) -> None:
        """Raise when asked for a gradient to a label (or other fixed) bottom, as Caffe does."""
        for i in self.no_gradient_bottoms:
            if i < len(propagate_down) and propagate_down[i]:
                raise self.error(
                    f"cannot backpropagate to bottom {i} (label inputs take no gradient)"
                )


@register("EuclideanLoss")
class EuclideanLossLayer(LossLayer):
    """loss = sum((a - b)^2) / (2 N), N = shape[0]; da = w (a - b) / N, db = -da, w = top diff.

    a - b is kept in the internal "diff" blob. Both bottoms take gradients.
    """

    no_gradient_bottoms = ()
    backward_reads = frozenset({"top_diff"})

    def reshape(self, bottoms, tops):
        super().reshape(bottoms, tops)
        if bottoms[0].count_range(1) != bottoms[1].count_range(1):
            raise self.error(
                f"bottoms need the same dimension, got {bottoms[0].shape} and {bottoms[1].shape}"
            )
        self.add_internal("diff", bottoms[0].shape)

    def forward(self, xp, bottoms, tops):
        d = self.internals["diff"].data
        xp.subtract(bottoms[0].data, bottoms[1].data.reshape(d.shape), out=d)
        tops[0].data[...] = (d * d).sum() / bottoms[0].shape[0] / 2

    def backward(self, xp, tops, propagate_down, bottoms):
        d = self.internals["diff"].data
        for i, sign in ((0, 1.0), (1, -1.0)):
            if propagate_down[i]:
                alpha = sign * tops[0].diff / bottoms[i].shape[0]
                bottoms[i].diff[...] = (alpha * d).reshape(bottoms[i].shape)


@register("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLossLayer(LossLayer):
    """loss = -sum_i [x t - max(x, 0) - log(1 + exp(-|x|))] / normalizer over counted i.

    Targets t may be soft.

    ignore_label compares int(t). Normalization defaults to BATCH_SIZE (shape[0]) when neither
    normalization nor normalize is set. dx = (sigmoid(x) - t) * w / normalizer, 0 where ignored.
    """

    def setup(self, bottoms, tops):
        self.read_loss_param("BATCH_SIZE")

    def reshape(self, bottoms, tops):
        super().reshape(bottoms, tops)
        if bottoms[0].count != bottoms[1].count:
            raise self.error(
                f"inputs need the same count, got {bottoms[0].shape} and {bottoms[1].shape}"
            )

    def _counted(self, xp, bottoms):
        if self.ignore_label is None:
            return None
        return bottoms[1].data.reshape(bottoms[0].shape).astype(xp.int64) != self.ignore_label

    def _normalizer(self, xp, bottoms, counted):
        return self.normalizer(xp, bottoms[0].shape[0], bottoms[0].count_range(1), counted)

    def forward(self, xp, bottoms, tops):
        x, t = bottoms[0].data, bottoms[1].data.reshape(bottoms[0].shape)
        terms = x * t - xp.maximum(x, 0) - xp.log1p(xp.exp(-xp.abs(x)))
        counted = self._counted(xp, bottoms)
        if counted is not None:
            terms *= counted
        tops[0].data[...] = -terms.sum() / self._normalizer(xp, bottoms, counted)

    def backward(self, xp, tops, propagate_down, bottoms):
        self.refuse_fixed_inputs(propagate_down)
        if not propagate_down[0]:
            return
        dx = bottoms[0].diff
        sigmoid(xp, bottoms[0].data, dx)
        dx -= bottoms[1].data.reshape(dx.shape)
        counted = self._counted(xp, bottoms)
        if counted is not None:
            dx *= counted
        dx *= tops[0].diff / self._normalizer(xp, bottoms, counted)


@register("ContrastiveLoss")
class ContrastiveLossLayer(LossLayer):
    """Bottoms a, b (N, D...), sim (N); d2 = |a - b|^2 per item (internals "diff" and "dist_sq").

    loss = sum_n [sim_n ? d2 : max(margin - d, 0)^2] / (2 N), or max(margin - d2, 0) for the
    dissimilar pairs with legacy_version. Backward as Caffe's, including the 1e-4 it adds to d in
    the non-legacy gradient.
    """

    num_bottoms = 3
    no_gradient_bottoms = (2,)

    def setup(self, bottoms, tops):
        p = self.layer_param.contrastive_loss_param
        self.margin, self.legacy = p.margin, p.legacy_version

    def reshape(self, bottoms, tops):
        super().reshape(bottoms, tops)
        a, b, sim = bottoms
        n, dim = a.shape[0], a.count_range(1)
        if b.count_range(1) != dim or sim.count != n or sim.shape[:1] != (n,):
            raise self.error(
                f"bottoms of shapes {a.shape}, {b.shape}, {sim.shape} do not fit (N, D)"
            )
        self.add_internal("diff", (n, dim))
        self.add_internal("dist_sq", (n,))

    def _similar(self, xp, bottoms):
        return bottoms[2].data.reshape(-1).astype(xp.int64) != 0  # static_cast<int>(sim) in Caffe

    def forward(self, xp, bottoms, tops):
        d, dist_sq = self.internals["diff"].data, self.internals["dist_sq"].data
        n = d.shape[0]
        xp.subtract(bottoms[0].data.reshape(d.shape), bottoms[1].data.reshape(d.shape), out=d)
        (d * d).sum(axis=1, out=dist_sq)
        if self.legacy:
            dissimilar = xp.maximum(self.margin - dist_sq, 0)
        else:
            dissimilar = xp.maximum(self.margin - xp.sqrt(dist_sq), 0) ** 2
        per_pair = xp.where(self._similar(xp, bottoms), dist_sq, dissimilar)
        tops[0].data[...] = per_pair.sum() / n / 2

    def backward(self, xp, tops, propagate_down, bottoms):
        self.refuse_fixed_inputs(propagate_down)
        if not (propagate_down[0] or propagate_down[1]):
            return
        d, dist_sq = self.internals["diff"].data, self.internals["dist_sq"].data
        alpha = tops[0].diff / d.shape[0]
        if self.legacy:
            mdist, beta = self.margin - dist_sq, -alpha
        else:
            dist = xp.sqrt(dist_sq)
            mdist = self.margin - dist
            beta = -alpha * mdist / (dist + 1e-4)
        coef = xp.where(self._similar(xp, bottoms), alpha, xp.where(mdist > 0, beta, 0))
        for i, sign in ((0, 1.0), (1, -1.0)):
            if propagate_down[i]:
                bottoms[i].diff[...] = (sign * coef[:, None] * d).reshape(bottoms[i].shape)


def _one_hot(xp, labels, num_classes: int):
    """(N, num_classes) bool from int labels (N,)."""
    return xp.arange(num_classes)[None, :] == labels[:, None]


@register("HingeLoss")
class HingeLossLayer(LossLayer):
    """With x as (N, D) and t = +1 at the label, -1 elsewhere: m = max(0, 1 - t x);
    L1 (default): loss = sum(m) / N; L2: loss = sum(m^2) / N.
    dx = -t * (L1: [m > 0]; L2: 2 m) * w / N.
    """

    def setup(self, bottoms, tops):
        self.norm = enum_name(self.layer_param.hinge_loss_param, "norm")

    def reshape(self, bottoms, tops):
        super().reshape(bottoms, tops)
        self.check_label_count(bottoms, bottoms[0].shape[0])

    def _margins(self, xp, bottoms, check: bool):
        """(m, t): hinge margins and the +-1 targets, both (N, D)."""
        n = bottoms[0].shape[0]
        x = bottoms[0].data.reshape(n, -1)
        labels, _ = self.labels(xp, bottoms, (n,), x.shape[1], check)
        t = xp.where(_one_hot(xp, labels, x.shape[1]), 1.0, -1.0).astype(x.dtype)
        return xp.maximum(1 - t * x, 0), t

    def forward(self, xp, bottoms, tops):
        m, _ = self._margins(xp, bottoms, check=True)
        total = m.sum() if self.norm == "L1" else (m * m).sum()
        tops[0].data[...] = total / bottoms[0].shape[0]

    def backward(self, xp, tops, propagate_down, bottoms):
        self.refuse_fixed_inputs(propagate_down)
        if not propagate_down[0]:
            return
        m, t = self._margins(xp, bottoms, check=False)
        grad = (m > 0) if self.norm == "L1" else 2 * m
        scale = tops[0].diff / bottoms[0].shape[0]
        bottoms[0].diff[...] = (-t * grad * scale).reshape(bottoms[0].shape)


@register("MultinomialLogisticLoss")
class MultinomialLogisticLossLayer(LossLayer):
    """Bottom 0 holds probabilities (N, D): loss = -sum_n log(max(p[n, label_n], 1e-20)) / N;
    dx[n, label_n] = -w / (N * max(p, 1e-20)), 0 elsewhere.
    """

    def reshape(self, bottoms, tops):
        super().reshape(bottoms, tops)
        self.check_label_count(bottoms, bottoms[0].shape[0])

    def _picked(self, xp, bottoms, check: bool):
        n = bottoms[0].shape[0]
        p = bottoms[0].data.reshape(n, -1)
        labels, _ = self.labels(xp, bottoms, (n, 1), p.shape[1], check)
        return labels, xp.maximum(xp.take_along_axis(p, labels, axis=1), LOG_THRESHOLD)

    def forward(self, xp, bottoms, tops):
        _, p = self._picked(xp, bottoms, check=True)
        tops[0].data[...] = -xp.log(p).sum() / bottoms[0].shape[0]

    def backward(self, xp, tops, propagate_down, bottoms):
        self.refuse_fixed_inputs(propagate_down)
        if not propagate_down[0]:
            return
        n = bottoms[0].shape[0]
        labels, p = self._picked(xp, bottoms, check=False)
        dx = bottoms[0].diff.reshape(n, -1)
        hot = _one_hot(xp, labels[:, 0], dx.shape[1])
        dx[...] = hot * (-tops[0].diff / n / p)
