"""Reduction: every axis from `axis` on collapses into one number per leading index."""

from __future__ import annotations

from geeps_net.layer import Layer, enum_name, register
from geeps_net.layers.shape import canonical_axis

# operation -> (reduce rows of x (num, dim) to (num), d/dx of one row's reduction)
OPERATIONS = {
    "SUM": (lambda xp, x: x.sum(axis=1), lambda xp, x: 1),
    "ASUM": (lambda xp, x: xp.abs(x).sum(axis=1), lambda xp, x: xp.sign(x)),
    "SUMSQ": (lambda xp, x: (x * x).sum(axis=1), lambda xp, x: 2 * x),
    "MEAN": (lambda xp, x: x.sum(axis=1), lambda xp, x: 1),  # 1 / dim is folded into the coeff
}


@register("Reduction")
class ReductionLayer(Layer):
    """Top (shape bottom.shape[:axis]; a scalar for axis 0) = coeff * op over bottom axes
    axis..end, op SUM (default), ASUM (sum |x|), SUMSQ (sum x^2) or MEAN."""

    def setup(self, bottoms, tops):
        self.operation = enum_name(self.layer_param.reduction_param, "operation")
        self.reduce, self.derivative = OPERATIONS[self.operation]
        if self.operation in ("SUM", "MEAN"):
            self.backward_reads = frozenset({"top_diff"})

    def reshape(self, bottoms, tops):
        param = self.layer_param.reduction_param
        axis = canonical_axis(self, bottoms[0], param.axis)
        tops[0].reshape(bottoms[0].shape[:axis])
        self.num, self.dim = bottoms[0].count_range(0, axis), bottoms[0].count_range(axis)
        self.coeff = param.coeff / self.dim if self.operation == "MEAN" else param.coeff

    def forward(self, xp, bottoms, tops):
        x = bottoms[0].data.reshape(self.num, self.dim)
        y = self.reduce(xp, x)
        if self.coeff != 1:
            y *= self.coeff
        tops[0].data[...] = y.reshape(tops[0].shape)

    def backward(self, xp, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        x = None if bottoms[0].data is None else bottoms[0].data.reshape(self.num, self.dim)
        scale = tops[0].diff.reshape(self.num, 1) * self.coeff
        grad = xp.broadcast_to(self.derivative(xp, x) * scale, (self.num, self.dim))
        bottoms[0].diff[...] = grad.reshape(bottoms[0].shape)
