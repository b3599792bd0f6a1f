"""Softmax along one axis, and the losses built on it: SoftmaxWithLoss and InfogainLoss."""

from __future__ import annotations

import math

import numpy
from google.protobuf.message import DecodeError

from geeps_net.layer import Layer, register
from geeps_net.layers.loss import LOG_THRESHOLD, LossLayer
from geeps_net.proto import caffe_pb2


def canonical_axis(layer: Layer, blob, axis: int) -> int:
    """Caffe's CanonicalAxisIndex for `blob`; out of range raises a LayerError naming `layer`."""
    try:
        return blob.canonical_axis(axis)
    except ValueError as e:
        raise layer.error(str(e)) from None


def softmax(xp, x, axis: int, out) -> None:
    """out = exp(x - max) / sum(exp(x - max)) along `axis` (max-subtracted); out may be x."""
    xp.subtract(x, x.max(axis=axis, keepdims=True), out=out)
    xp.exp(out, out=out)
    out /= out.sum(axis=axis, keepdims=True)


def split_at_axis(blob, axis: int) -> tuple[int, int, int]:
    """(outer, channels, inner) = (count before axis, shape[axis], count after axis)."""
    return blob.count_range(0, axis), blob.shape[axis], blob.count_range(axis + 1)


@register("Softmax")
class SoftmaxLayer(Layer):
    """y = softmax(x) along softmax_param.axis (default 1); dx = y * (dy - sum_axis(dy * y)).

    Backward reads only the top, so it is safe in place.
    """

    backward_reads = frozenset({"top_data", "top_diff"})

    def reshape(self, bottoms, tops):
        self.axis = canonical_axis(self, bottoms[0], self.layer_param.softmax_param.axis)
        tops[0].reshape(bottoms[0].shape)

    def forward(self, xp, bottoms, tops):
        softmax(xp, bottoms[0].data, self.axis, tops[0].data)

    def backward(self, xp, tops, propagate_down, bottoms):
        if propagate_down[0]:
            y, dy = tops[0].data, tops[0].diff
            dot = (dy * y).sum(
                axis=self.axis, keepdims=True
            )  # before dx, which may share dy's buffer
            bottoms[0].diff[...] = y * (dy - dot)


FLT_MIN = float(numpy.finfo(numpy.float32).tiny)  # SoftmaxWithLoss floors p here before the log


@register("SoftmaxWithLoss")
class SoftmaxWithLossLayer(LossLayer):
    """loss = -sum over counted positions of log(max(p[label], FLT_MIN)) / normalizer.

    p = softmax(x) along softmax_param.axis, kept in the internal "prob" blob (and copied to top 1
    when asked). x is (outer, C, inner) around the axis; labels have count outer * inner.
    loss_param: ignore_label skips positions; normalization FULL / VALID (default) / BATCH_SIZE /
    NONE, or the legacy normalize. dx = (p - onehot(label)) * w / normalizer, 0 at ignored
    positions, w = top 0's diff.
    """

    num_tops = (1, 2)

    def setup(self, bottoms, tops):
        self.read_loss_param("VALID")

    def reshape(self, bottoms, tops):
        super().reshape(bottoms, tops)
        self.axis = canonical_axis(self, bottoms[0], self.layer_param.softmax_param.axis)
        self.dims = split_at_axis(bottoms[0], self.axis)
        self.check_label_count(bottoms, self.dims[0] * self.dims[2])
        self.add_internal("prob", bottoms[0].shape)
        if len(tops) > 1:
            tops[1].reshape(bottoms[0].shape)

    def forward(self, xp, bottoms, tops):
        outer, c, inner = self.dims
        prob = self.internals["prob"].data
        softmax(xp, bottoms[0].data, self.axis, prob)
        labels, counted = self.labels(xp, bottoms, (outer, 1, inner), c)
        picked = xp.take_along_axis(prob.reshape(outer, c, inner), labels, axis=1)
        log_p = xp.log(xp.maximum(picked, FLT_MIN))
        if counted is not None:
            log_p *= counted
        tops[0].data[...] = -log_p.sum() / self.normalizer(xp, outer, inner, counted)
        if len(tops) > 1:
            tops[1].data[...] = prob

    def backward(self, xp, tops, propagate_down, bottoms):
        self.refuse_fixed_inputs(propagate_down)
        if not propagate_down[0]:
            return
        outer, c, inner = self.dims
        labels, counted = self.labels(xp, bottoms, (outer, 1, inner), c, check=False)
        dx = bottoms[0].diff.reshape(outer, c, inner)
        dx[...] = self.internals["prob"].data.reshape(outer, c, inner)
        dx -= xp.arange(c).reshape(1, c, 1) == labels
        if counted is not None:
            dx *= counted
        dx *= tops[0].diff / self.normalizer(xp, outer, inner, counted)


def load_blob_proto(layer: Layer, path: str) -> numpy.ndarray:
    """A BlobProto file (.binaryproto) as a float64 host array of its shape (or legacy NCHW)."""
    proto = caffe_pb2.BlobProto()
    try:
        with open(path, "rb") as f:
            proto.ParseFromString(f.read())
    except OSError as e:
        raise layer.error(f"cannot read {path}: {e.strerror}") from None
    except DecodeError:
        raise layer.error(f"{path} is not a binary BlobProto") from None
    if any(proto.HasField(f) for f in ("num", "channels", "height", "width")):
        shape = (proto.num, proto.channels, proto.height, proto.width)
    else:
        shape = tuple(proto.shape.dim)
    values = numpy.asarray(proto.double_data or proto.data, dtype=numpy.float64)
    if values.size != math.prod(shape):
        raise layer.error(f"{path}: {values.size} values for blob shape {shape}")
    return values.reshape(shape)


@register("InfogainLoss")
class InfogainLossLayer(LossLayer):
    """loss = -sum over counted positions of sum_k H[label, k] log(max(p_k, 1e-20)) / normalizer.

    p = softmax(x) along infogain_loss_param.axis, computed inside as Caffe does (internal "prob";
    top 1 when asked). H (C x C) is bottom 2, or the BlobProto file infogain_loss_param.source,
    held on the host as a constant and copied into the internal "infogain" blob by each forward.
    ignore_label and normalization as SoftmaxWithLoss (legacy normalize refused, as in Caffe).
    dx = (p * rowsum(H)[label] - H[label, :]) * w / normalizer, 0 at ignored positions.
    """

    num_bottoms = (2, 3)
    num_tops = (1, 2)
    no_gradient_bottoms = (1, 2)

    def setup(self, bottoms, tops):
        p = self.layer_param
        if p.loss_param.HasField("normalize"):
            raise self.error('loss_param.normalize is deprecated here: use "normalization"')
        self.read_loss_param("VALID")
        self.infogain = None
        if len(bottoms) < 3:
            if not p.infogain_loss_param.source:
                raise self.error("needs infogain_loss_param.source or a 3rd bottom holding H")
            self.infogain = load_blob_proto(self, p.infogain_loss_param.source)

    def reshape(self, bottoms, tops):
        super().reshape(bottoms, tops)
        self.axis = canonical_axis(self, bottoms[0], self.layer_param.infogain_loss_param.axis)
        self.dims = split_at_axis(bottoms[0], self.axis)
        c = self.dims[1]
        self.check_label_count(bottoms, self.dims[0] * self.dims[2])
        h_count = bottoms[2].count if len(bottoms) > 2 else self.infogain.size
        if h_count != c * c:
            raise self.error(f"H has {h_count} elements; {c} classes need {c * c}")
        self.add_internal("prob", bottoms[0].shape)
        if self.infogain is not None:
            self.add_internal("infogain", (c, c))
        if len(tops) > 1:
            tops[1].reshape(bottoms[0].shape)

    def _infogain(self, bottoms):
        c = self.dims[1]
        return (bottoms[2] if len(bottoms) > 2 else self.internals["infogain"]).data.reshape(c, c)

    def _rows(self, xp, bottoms, check: bool):
        """(H[label, :] as (outer, C, inner), rowsum(H)[label] as (outer, 1, inner), counted)."""
        outer, c, inner = self.dims
        labels, counted = self.labels(xp, bottoms, (outer, inner), c, check)
        h = self._infogain(bottoms)
        rows = xp.moveaxis(h[labels], 2, 1)
        row_sums = h.sum(axis=1)[labels][:, None, :]
        return rows, row_sums, (None if counted is None else counted[:, None, :])

    def forward(self, xp, bottoms, tops):
        outer, c, inner = self.dims
        if self.infogain is not None:
            self.internals["infogain"].data[...] = xp.asarray(self.infogain)
        prob = self.internals["prob"].data
        softmax(xp, bottoms[0].data, self.axis, prob)
        rows, _, counted = self._rows(xp, bottoms, check=True)
        terms = rows * xp.log(xp.maximum(prob.reshape(outer, c, inner), LOG_THRESHOLD))
        if counted is not None:
            terms *= counted
        tops[0].data[...] = -terms.sum() / self.normalizer(xp, outer, inner, counted)
        if len(tops) > 1:
            tops[1].data[...] = prob

    def backward(self, xp, tops, propagate_down, bottoms):
        self.refuse_fixed_inputs(propagate_down)
        if not propagate_down[0]:
            return
        outer, c, inner = self.dims
        rows, row_sums, counted = self._rows(xp, bottoms, check=False)
        dx = bottoms[0].diff.reshape(outer, c, inner)
        dx[...] = self.internals["prob"].data.reshape(outer, c, inner) * row_sums - rows
        if counted is not None:
            dx *= counted
        dx *= tops[0].diff / self.normalizer(xp, outer, inner, counted)
