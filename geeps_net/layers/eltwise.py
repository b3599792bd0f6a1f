"""Eltwise: one top combining two or more bottoms of one shape, element by element."""

from __future__ import annotations

from geeps_net.layer import Layer, enum_name, register


def _sum_forward(layer, xp, xs, top):
    top[...] = layer.coeffs[0] * xs[0] if layer.coeffs[0] != 1 else xs[0]
    for c, x in zip(layer.coeffs[1:], xs[1:], strict=True):
        top += c * x if c != 1 else x


def _prod_forward(layer, xp, xs, top):
    xp.multiply(xs[0], xs[1], out=top)
    for x in xs[2:]:
        top *= x


def _max_forward(layer, xp, xs, top):
    # Caffe's order: a tie between bottoms 0 and 1 goes to 1; later bottoms win only when strictly
    # greater, so the mask names the bottom whose gradient flows.
    mask = layer.internals["mask"].data
    first = xs[0] > xs[1]
    top[...] = xp.where(first, xs[0], xs[1])
    mask[...] = xp.where(first, 0, 1)
    for i, x in enumerate(xs[2:], 2):
        greater = x > top
        top[...] = xp.where(greater, x, top)
        mask[...] = xp.where(greater, i, mask)


def _sum_backward(layer, xp, i, xs, y, dy):
    c = layer.coeffs[i]
    return dy if c == 1 else c * dy


def _prod_backward(layer, xp, i, xs, y, dy):
    if not layer.stable:
        return y / xs[i] * dy  # Caffe's unstable form: top / bottom_i (NaN or inf at zeros)
    others = [x for j, x in enumerate(xs) if j != i]
    grad = others[0].copy()
    for x in others[1:]:
        grad *= x
    return grad * dy


def _max_backward(layer, xp, i, xs, y, dy):
    return xp.where(layer.internals["mask"].data == i, dy, 0)


# operation -> (forward(layer, xp, bottom datas, top data), d bottom_i(layer, xp, i, xs, y, dy))
OPERATIONS = {
    "SUM": (_sum_forward, _sum_backward),
    "PROD": (_prod_forward, _prod_backward),
    "MAX": (_max_forward, _max_backward),
}


@register("Eltwise")
class EltwiseLayer(Layer):
    """Top = SUM (default) sum_i coeff_i * x_i; PROD prod_i x_i; MAX elementwise max, whose
    gradient goes to the bottom holding the max (internal blob "mask"). PROD's gradient
    re-multiplies the other bottoms (stable_prod_grad, default) or divides the top by the bottom."""

    num_bottoms = (2, None)

    def setup(self, bottoms, tops):
        param = self.layer_param.eltwise_param
        self.operation = enum_name(param, "operation")
        coeffs = list(param.coeff)
        if coeffs and len(coeffs) != len(bottoms):
            raise self.error(
                f"takes one coeff per bottom: {len(coeffs)} for {len(bottoms)} bottoms"
            )
        if coeffs and self.operation == "PROD":
            raise self.error("takes coefficients only for SUM")
        self.coeffs = coeffs or [1.0] * len(bottoms)
        self.stable = param.stable_prod_grad
        self.forward_op, self.backward_op = OPERATIONS[self.operation]
        # What backward reads depends on the operation (an instance attribute after setup).
        self.backward_reads = {
            "SUM": frozenset({"top_diff"}),
            "MAX": frozenset({"top_diff"}),  # + the mask
            "PROD": frozenset({"bottom_data", "top_diff"}),
        }[self.operation]
        if self.operation == "PROD" and not self.stable:
            self.backward_reads = frozenset({"bottom_data", "top_data", "top_diff"})

    def reshape(self, bottoms, tops):
        for i, blob in enumerate(bottoms[1:], 1):
            if blob.shape != bottoms[0].shape:
                raise self.error(
                    f"bottom {i} has shape {blob.shape}; bottom 0 has {bottoms[0].shape}"
                )
        tops[0].reshape(bottoms[0].shape)
        if self.operation == "MAX":
            self.add_internal("mask", bottoms[0].shape, "int32")

    def forward(self, xp, bottoms, tops):
        self.forward_op(self, xp, [b.data for b in bottoms], tops[0].data)

    def backward(self, xp, tops, propagate_down, bottoms):
        xs = [b.data for b in bottoms] if "bottom_data" in self.backward_reads else None
        y = tops[0].data if "top_data" in self.backward_reads else None
        dy = tops[0].diff
        for i, blob in enumerate(bottoms):
            if propagate_down[i]:
                blob.diff[...] = self.backward_op(self, xp, i, xs, y, dy)
