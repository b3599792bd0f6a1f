"""Elementwise activations ("neuron" layers): one bottom, one top of its shape, in place allowed."""

from __future__ import annotations

import math

import numpy

from geeps_net.layer import Layer, register
from geeps_net.proto import caffe_pb2


class NeuronLayer(Layer):
    """Base of elementwise layers: top has the bottom's shape.

    A layer whose backward needs x sets `keeps_bottom`: run in place, its forward overwrites x with
    y, so reshape declares an internal "bottom_copy" that forward fills before computing. Caffe does
    this for PReLU only; its other in-place layers that read x in backward get wrong gradients.
    """

    keeps_bottom = False

    def reshape(self, bottoms, tops):
        tops[0].reshape(bottoms[0].shape)
        if self.keeps_bottom and _in_place(bottoms, tops):
            self.add_internal("bottom_copy", bottoms[0].shape)

    def forward_input(self, bottoms):
        """x for forward: the bottom's data, first saved to "bottom_copy" when running in place."""
        copy = self.internals.get("bottom_copy")
        if copy is None:
            return bottoms[0].data
        copy.data[...] = bottoms[0].data
        return copy.data

    def backward_input(self, bottoms):
        """x for backward: the saved copy in place, else the bottom's data."""
        copy = self.internals.get("bottom_copy")
        return bottoms[0].data if copy is None else copy.data


def _in_place(bottoms, tops) -> bool:
    return tops[0] is bottoms[0] or tops[0].name == bottoms[0].name


def sigmoid(xp, x, out):
    """out = 1 / (1 + exp(-x)) as 0.5 * tanh(x / 2) + 0.5, which cannot overflow; out may be x."""
    xp.multiply(x, 0.5, out=out)
    xp.tanh(out, out=out)
    out *= 0.5
    out += 0.5


@register("ReLU")
class ReLULayer(NeuronLayer):
    """y = x if x > 0 else negative_slope * x, elementwise (Caffe's ReLU). Safe in place."""

    backward_reads = frozenset(
        {"bottom_data", "top_diff"}
    )  # in place, x is y: same sign, same mask

    def setup(self, bottoms, tops):
        self.slope = self.layer_param.relu_param.negative_slope

    def forward(self, xp, bottoms, tops):
        x = bottoms[0].data
        if self.slope == 0:
            xp.maximum(x, 0, out=tops[0].data)
        else:
            tops[0].data[...] = xp.where(x > 0, x, self.slope * x)

    def backward(self, xp, tops, propagate_down, bottoms):
        if propagate_down[0]:
            x, dy, dx = bottoms[0].data, tops[0].diff, bottoms[0].diff
            if self.slope == 0:
                if xp.may_share_memory(dx, dy):  # in place: dx is dy
                    xp.multiply(dy, x > 0, out=dx)
                else:  # the mask straight into dx, then one multiply: no temporary
                    xp.greater(x, 0, out=dx)
                    dx *= dy
            else:
                dx[...] = xp.where(x > 0, dy, self.slope * dy)


@register("Sigmoid")
class SigmoidLayer(NeuronLayer):
    """y = 1 / (1 + exp(-x)); dx = dy * y * (1 - y), from the top alone. Safe in place."""

    backward_reads = frozenset({"top_data", "top_diff"})

    def forward(self, xp, bottoms, tops):
        sigmoid(xp, bottoms[0].data, tops[0].data)

    def backward(self, xp, tops, propagate_down, bottoms):
        if propagate_down[0]:
            y, dy = tops[0].data, tops[0].diff
            bottoms[0].diff[...] = dy * y * (1 - y)


@register("TanH")
class TanHLayer(NeuronLayer):
    """y = tanh(x); dx = dy * (1 - y^2), from the top alone. Safe in place."""

    backward_reads = frozenset({"top_data", "top_diff"})

    def forward(self, xp, bottoms, tops):
        xp.tanh(bottoms[0].data, out=tops[0].data)

    def backward(self, xp, tops, propagate_down, bottoms):
        if propagate_down[0]:
            y, dy = tops[0].data, tops[0].diff
            bottoms[0].diff[...] = dy * (1 - y * y)


@register("AbsVal")
class AbsValLayer(NeuronLayer):
    """y = |x|; dx = sign(x) * dy (0 at x = 0). Caffe refuses to run it in place."""

    def setup(self, bottoms, tops):
        if _in_place(bottoms, tops):
            raise self.error("AbsVal does not allow in-place computation (top == bottom)")

    def forward(self, xp, bottoms, tops):
        xp.abs(bottoms[0].data, out=tops[0].data)

    def backward(self, xp, tops, propagate_down, bottoms):
        if propagate_down[0]:
            bottoms[0].diff[...] = xp.sign(bottoms[0].data) * tops[0].diff


@register("Power")
class PowerLayer(NeuronLayer):
    """y = (shift + scale * x) ** power; dx = dy * power * scale * (shift + scale * x) ** (power-1).

    When power * scale == 0, y is the constant 1 (power 0) or shift ** power, and dx = 0 (Caffe).
    """

    keeps_bottom = True

    def setup(self, bottoms, tops):
        p = self.layer_param.power_param
        self.power, self.scale, self.shift = p.power, p.scale, p.shift
        self.diff_scale = self.power * self.scale

    def forward(self, xp, bottoms, tops):
        y = tops[0].data
        if self.diff_scale == 0:
            y[...] = 1.0 if self.power == 0 else float(numpy.power(self.shift, self.power))
            return
        xp.multiply(self.forward_input(bottoms), self.scale, out=y)
        y += self.shift
        if self.power != 1:
            xp.power(y, self.power, out=y)

    def backward(self, xp, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        dx, dy = bottoms[0].diff, tops[0].diff
        if self.diff_scale == 0:
            dx[...] = 0
        elif self.power == 1:
            xp.multiply(dy, self.diff_scale, out=dx)
        else:
            base = self.backward_input(bottoms) * self.scale + self.shift
            # Caffe divides y by the base instead: equal, except at base 0 where Caffe gets NaN.
            dx[...] = dy * (self.diff_scale * base ** (self.power - 1))


@register("BNLL")
class BNLLLayer(NeuronLayer):
    """y = log(1 + exp(x)), computed stably; dx = dy * e / (1 + e), e = exp(min(x, 50)) as Caffe."""

    keeps_bottom = True

    def forward(self, xp, bottoms, tops):
        x = self.forward_input(bottoms)
        tops[0].data[...] = xp.maximum(x, 0) + xp.log1p(xp.exp(-xp.abs(x)))

    def backward(self, xp, tops, propagate_down, bottoms):
        if propagate_down[0]:
            e = xp.exp(xp.minimum(self.backward_input(bottoms), 50.0))  # Caffe's kBNLL_THRESHOLD
            bottoms[0].diff[...] = tops[0].diff * e / (e + 1)


@register("ELU")
class ELULayer(NeuronLayer):
    """y = x if x > 0 else alpha * (exp(x) - 1); dx = dy if x > 0 else dy * (alpha + y).

    In place with alpha >= 0, y <= 0 exactly where x <= 0, so y stands in for x (Caffe relies on
    this); a negative alpha keeps a copy of x.
    """

    backward_reads = frozenset({"bottom_data", "top_data", "top_diff"})

    def setup(self, bottoms, tops):
        self.alpha = self.layer_param.elu_param.alpha
        self.keeps_bottom = self.alpha < 0

    def forward(self, xp, bottoms, tops):
        x = self.forward_input(bottoms)
        tops[0].data[...] = xp.maximum(x, 0) + self.alpha * xp.expm1(xp.minimum(x, 0))

    def backward(self, xp, tops, propagate_down, bottoms):
        if propagate_down[0]:
            x, y, dy = self.backward_input(bottoms), tops[0].data, tops[0].diff
            bottoms[0].diff[...] = xp.where(x > 0, dy, dy * (self.alpha + y))


@register("PReLU")
class PReLULayer(NeuronLayer):
    """y = x if x > 0 else a_c * x: a learnable slope per channel (axis 1) or one shared slope.

    Blob 0: slope, shape (C,), or () when channel_shared (as Caffe stores it); filler default
    constant 0.25.
    Backward: d a_c += sum over n, spatial of dy * x * [x <= 0]; dx = dy if x > 0 else a_c * dy.
    In place, x is kept in the internal "bottom_copy" blob (Caffe's bottom_memory_).
    """

    keeps_bottom = True

    def setup(self, bottoms, tops):
        if bottoms[0].num_axes < 2:
            raise self.error(f"needs a bottom with at least 2 axes, got shape {bottoms[0].shape}")
        p = self.layer_param.prelu_param
        self.channel_shared = p.channel_shared
        filler = p.filler if p.HasField("filler") else caffe_pb2.FillerParameter(value=0.25)
        self.add_param(() if self.channel_shared else (bottoms[0].shape[1],), filler)

    def reshape(self, bottoms, tops):
        if not self.channel_shared and bottoms[0].shape[1:2] != self.blobs[0].shape:
            raise self.error(f"{self.blobs[0].shape[0]} slopes for bottom shape {bottoms[0].shape}")
        super().reshape(bottoms, tops)

    def _slope(self, x):
        """The slope blob shaped to broadcast against x (channel axis 1)."""
        a = self.blobs[0].data
        return a if self.channel_shared else a.reshape((-1,) + (1,) * (x.ndim - 2))

    def forward(self, xp, bottoms, tops):
        x = self.forward_input(bottoms)
        tops[0].data[...] = xp.where(x > 0, x, self._slope(x) * x)

    def backward(self, xp, tops, propagate_down, bottoms):
        x, dy = self.backward_input(bottoms), tops[0].diff
        # The slope gradient first: in place, dy and the bottom diff share a buffer.
        slope_grad = dy * x * (x <= 0)
        if self.channel_shared:
            self.blobs[0].diff += slope_grad.sum()
        else:
            self.blobs[0].diff += slope_grad.sum(axis=(0, *range(2, x.ndim)))
        if propagate_down[0]:
            bottoms[0].diff[...] = xp.where(x > 0, dy, self._slope(x) * dy)


def _positive_base(layer, base: float) -> None:
    if base != -1 and base <= 0:
        raise layer.error(f"base must be strictly positive (or -1 for e), got {base}")


@register("Exp")
class ExpLayer(NeuronLayer):
    """y = base ** (shift + scale * x), base -1 meaning e; dx = dy * y * ln(base) * scale.

    Backward reads only the top: safe in place.
    """

    backward_reads = frozenset({"top_data", "top_diff"})

    def setup(self, bottoms, tops):
        p = self.layer_param.exp_param
        _positive_base(self, p.base)
        log_base = 1.0 if p.base == -1 else math.log(p.base)
        self.inner_scale = log_base * p.scale
        self.outer_scale = math.exp(p.shift * log_base) if p.shift != 0 else 1.0

    def forward(self, xp, bottoms, tops):
        y = tops[0].data
        xp.multiply(bottoms[0].data, self.inner_scale, out=y)
        xp.exp(y, out=y)
        if self.outer_scale != 1:
            y *= self.outer_scale

    def backward(self, xp, tops, propagate_down, bottoms):
        if propagate_down[0]:
            bottoms[0].diff[...] = tops[0].diff * tops[0].data * self.inner_scale


@register("Log")
class LogLayer(NeuronLayer):
    """y = log_base(shift + scale * x), base -1 meaning e.

    dx = dy * scale / (ln(base) * (shift + scale * x)).
    """

    keeps_bottom = True

    def setup(self, bottoms, tops):
        p = self.layer_param.log_param
        _positive_base(self, p.base)
        self.base_scale = 1.0 if p.base == -1 else 1.0 / math.log(p.base)
        self.scale, self.shift = p.scale, p.shift

    def forward(self, xp, bottoms, tops):
        y = tops[0].data
        xp.multiply(self.forward_input(bottoms), self.scale, out=y)
        y += self.shift
        xp.log(y, out=y)
        if self.base_scale != 1:
            y *= self.base_scale

    def backward(self, xp, tops, propagate_down, bottoms):
        if propagate_down[0]:
            inner = self.backward_input(bottoms) * self.scale + self.shift
            bottoms[0].diff[...] = tops[0].diff * (self.scale * self.base_scale) / inner


@register("Threshold")
class ThresholdLayer(NeuronLayer):
    """y = 1 if x > threshold else 0 (strict). No backward, as in Caffe."""

    backward_reads = frozenset()
    has_backward = False

    def setup(self, bottoms, tops):
        self.threshold = self.layer_param.threshold_param.threshold

    def forward(self, xp, bottoms, tops):
        tops[0].data[...] = bottoms[0].data > self.threshold


@register("Clip")
class ClipLayer(NeuronLayer):
    """y = min(max(x, min), max); dx = dy where min <= x <= max, else 0."""

    keeps_bottom = True

    def setup(self, bottoms, tops):
        p = self.layer_param.clip_param
        if not (p.HasField("min") and p.HasField("max")):
            raise self.error("clip_param { min: ... max: ... } is required")
        self.min, self.max = p.min, p.max

    def forward(self, xp, bottoms, tops):
        xp.clip(self.forward_input(bottoms), self.min, self.max, out=tops[0].data)

    def backward(self, xp, tops, propagate_down, bottoms):
        if propagate_down[0]:
            x = self.backward_input(bottoms)
            bottoms[0].diff[...] = tops[0].diff * ((x >= self.min) & (x <= self.max))


@register("Swish")
class SwishLayer(NeuronLayer):
    """y = x * s with s = sigmoid(beta * x) kept in the internal "sigmoid" blob, as Caffe keeps it.

    dx = dy * (beta * y + s * (1 - beta * y)), from y and s: safe in place.
    """

    backward_reads = frozenset({"top_data", "top_diff"})

    def setup(self, bottoms, tops):
        self.beta = self.layer_param.swish_param.beta

    def reshape(self, bottoms, tops):
        super().reshape(bottoms, tops)
        self.add_internal("sigmoid", bottoms[0].shape)

    def forward(self, xp, bottoms, tops):
        x, s = bottoms[0].data, self.internals["sigmoid"].data
        xp.multiply(x, self.beta, out=s)
        sigmoid(xp, s, s)
        xp.multiply(x, s, out=tops[0].data)

    def backward(self, xp, tops, propagate_down, bottoms):
        if propagate_down[0]:
            y, dy, s = tops[0].data, tops[0].diff, self.internals["sigmoid"].data
            by = self.beta * y
            bottoms[0].diff[...] = dy * (by + s * (1 - by))
