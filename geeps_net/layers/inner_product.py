"""Dense layers: InnerProduct (y = x·Wᵀ + b over the axes from `axis` on) and Embed (row lookup)."""

from __future__ import annotations

from geeps_net.backend import matmul, matmul_add, scatter_add
from geeps_net.layer import Layer, register


@register("InnerProduct")
class InnerProductLayer(Layer):
    """Top (*outer, num_output) = bottom flattened from `axis` to (M, K), times Wᵀ, plus b.

    W is (num_output, K), or (K, num_output) with `transpose: true`; b is (num_output).
    """

    backward_reads = frozenset({"bottom_data", "top_diff"})

    def setup(self, bottoms, tops):
        p = self.layer_param.inner_product_param
        self.num_output, self.bias_term, self.transpose = p.num_output, p.bias_term, p.transpose
        if self.num_output <= 0:
            raise self.error("num_output must be specified and positive")
        self.axis_param = p.axis
        self.k = bottoms[0].count_range(self._axis(bottoms[0]))
        shape = (self.k, self.num_output) if self.transpose else (self.num_output, self.k)
        self.add_param(shape, p.weight_filler)
        if self.bias_term:
            self.add_param((self.num_output,), p.bias_filler)

    def _axis(self, bottom) -> int:
        try:
            return bottom.canonical_axis(self.axis_param)
        except ValueError as e:
            raise self.error(str(e)) from None

    def reshape(self, bottoms, tops):
        axis = self._axis(bottoms[0])
        if bottoms[0].count_range(axis) != self.k:
            raise self.error(
                f"input size incompatible with inner product parameters: bottom "
                f"{bottoms[0].shape} gives K = {bottoms[0].count_range(axis)} from axis {axis}, "
                f"the weights want {self.k}"
            )
        self.m = bottoms[0].count_range(0, axis)
        tops[0].reshape(bottoms[0].shape[:axis] + (self.num_output,))

    def _weight_t(self):
        """The weights as (K, num_output), a view."""
        w = self.blobs[0].data
        return w if self.transpose else w.T

    def forward(self, xp, bottoms, tops):
        x = bottoms[0].data.reshape(self.m, self.k)
        y = tops[0].data.reshape(self.m, self.num_output)
        matmul(xp, x, self._weight_t(), y)
        if self.bias_term:
            y += self.blobs[1].data

    def backward(self, xp, tops, propagate_down, bottoms):
        x = bottoms[0].data.reshape(self.m, self.k)
        dy = tops[0].diff.reshape(self.m, self.num_output)
        if self.transpose:
            matmul_add(xp, x.T, dy, self.blobs[0].diff)
        else:
            matmul_add(xp, dy.T, x, self.blobs[0].diff)
        if self.bias_term:
            self.blobs[1].diff += dy.sum(axis=0)
        if propagate_down[0]:
            matmul(xp, dy, self._weight_t().T, bottoms[0].diff.reshape(self.m, self.k))


@register("Embed")
class EmbedLayer(Layer):
    """Top (*bottom.shape, num_output) = W[index] (+ b); the bottom holds integer indices as floats.

    W is (input_dim, num_output), b is (num_output). No gradient reaches the indices.
    """

    backward_reads = frozenset({"bottom_data", "top_diff"})
    no_gradient_bottoms = (0,)

    def setup(self, bottoms, tops):
        p = self.layer_param.embed_param
        self.num_output, self.input_dim, self.bias_term = p.num_output, p.input_dim, p.bias_term
        if self.num_output <= 0 or self.input_dim <= 0:
            raise self.error("num_output and input_dim must be specified and positive")
        self.add_param((self.input_dim, self.num_output), p.weight_filler)
        if self.bias_term:
            self.add_param((self.num_output,), p.bias_filler)

    def reshape(self, bottoms, tops):
        tops[0].reshape(bottoms[0].shape + (self.num_output,))

    def _indices(self, xp, bottom):
        """The bottom as integer indices, checked to be whole numbers in [0, input_dim)."""
        x = bottom.data.reshape(-1)
        bad = (x < 0) | (x >= self.input_dim) | (x != xp.floor(x))
        if bool(bad.any()):
            value = float(x[bad][0])
            raise self.error(
                f"index {value} is not an integer in [0, input_dim = {self.input_dim})"
            )
        return x.astype(xp.int64)

    def forward(self, xp, bottoms, tops):
        idx = self._indices(xp, bottoms[0])
        y = tops[0].data.reshape(-1, self.num_output)
        xp.take(self.blobs[0].data, idx, axis=0, out=y)
        if self.bias_term:
            y += self.blobs[1].data

    def backward(self, xp, tops, propagate_down, bottoms):
        if propagate_down[0]:
            raise self.error("can't backpropagate to the indices (bottom 0)")
        dy = tops[0].diff.reshape(-1, self.num_output)
        scatter_add(xp, self.blobs[0].diff, self._indices(xp, bottoms[0]), dy)
        if self.bias_term:
            self.blobs[1].diff += dy.sum(axis=0)
