"""Local response normalization (Caffe's LRN), across channels or within each channel plane.

ACROSS_CHANNELS: scale = k + α/n · Σ x² over the n channels centred on c (zero outside);
WITHIN_CHANNEL:  scale = 1 + α/n² · Σ x² over the n×n box centred on (h, w) (zero padded; k unused).
Both: y = x · scale^−β and dx = dy · scale^−β − (2αβ/m) · x · Σ_window(dy · y / scale), where m
(n or n²) is the number of terms in a window.
"""

from __future__ import annotations

import functools

from geeps_net.backend import split_work
from geeps_net.layer import Layer, enum_name, register
from geeps_net.layers.im2col import batch_chunks

# Images per block on the CPU: about 256 Ki elements, so the temporaries stay in cache (measured
# about 2x faster than whole-batch temporaries on AlexNet-sized inputs); blocks run on the CPU
# threads (backend.split_work).
CPU_BLOCK = 1 << 18


def window_sum(a, half: int, axis: int, out) -> None:
    """out = Σ_{|o| ≤ half} a shifted by o along `axis` (zeros beyond the ends); out is not a."""
    out[...] = a
    lead = (slice(None),) * axis
    for o in range(1, half + 1):
        upper, lower = lead + (slice(o, None),), lead + (slice(None, -o),)
        out[upper] += a[lower]
        out[lower] += a[upper]


@register("LRN")
class LRNLayer(Layer):
    """y = x · scale^−β with Caffe's local sums of squares; `scale` is kept for backward."""

    backward_reads = frozenset({"bottom_data", "top_data", "top_diff"})  # and internal "scale"

    def setup(self, bottoms, tops):
        p = self.layer_param.lrn_param
        self.size, self.alpha, self.beta, self.k = p.local_size, p.alpha, p.beta, p.k
        if self.size % 2 == 0:
            raise self.error(f"LRN only supports odd values for local_size, got {self.size}")
        self.within = enum_name(p, "norm_region") == "WITHIN_CHANNEL"
        self.half = (self.size - 1) // 2
        # Number of terms in each local sum: alpha is divided by it.
        self.terms = self.size**2 if self.within else self.size

    def reshape(self, bottoms, tops):
        if bottoms[0].num_axes != 4:
            raise self.error(
                f"input must have 4 axes (num, channels, height, width), got {bottoms[0].shape}"
            )
        tops[0].reshape(bottoms[0].shape)
        self.add_internal("scale", bottoms[0].shape)

    def _local_sum(self, xp, a, out) -> None:
        """out = the window sums of a: over channels, or over the n×n spatial box (separable)."""
        if self.within:
            rows = xp.empty_like(a)
            window_sum(a, self.half, 2, rows)
            window_sum(rows, self.half, 3, out)
        else:
            window_sum(a, self.half, 1, out)

    def forward(self, xp, bottoms, tops):
        x, y, scale = bottoms[0].data, tops[0].data, self.internals["scale"].data
        blocks = [slice(*c) for c in batch_chunks(xp, x.shape[0], x[0].size, CPU_BLOCK)]
        split_work(xp, functools.partial(self._forward_blocks, xp, x, y, scale), blocks)

    def _forward_blocks(self, xp, x, y, scale, blocks) -> None:
        for b in blocks:
            self._forward(xp, x[b], y[b], scale[b])

    def _forward(self, xp, x, y, scale) -> None:
        self._local_sum(xp, x * x, scale)
        scale *= self.alpha / self.terms
        scale += 1.0 if self.within else self.k
        xp.power(scale, -self.beta, out=y)
        y *= x

    def backward(self, xp, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        x, dx = bottoms[0].data, bottoms[0].diff
        y, dy, scale = tops[0].data, tops[0].diff, self.internals["scale"].data
        blocks = [slice(*c) for c in batch_chunks(xp, x.shape[0], x[0].size, CPU_BLOCK)]
        work = functools.partial(self._backward_blocks, xp, x, y, dy, scale, dx)
        split_work(xp, work, blocks)

    def _backward_blocks(self, xp, x, y, dy, scale, dx, blocks) -> None:
        for b in blocks:
            self._backward(xp, x[b], y[b], dy[b], scale[b], dx[b])

    def _backward(self, xp, x, y, dy, scale, dx) -> None:
        ratio = dy * y
        ratio /= scale
        acc = xp.empty_like(ratio)
        self._local_sum(xp, ratio, acc)
        acc *= x
        acc *= 2.0 * self.alpha * self.beta / self.terms
        xp.power(scale, -self.beta, out=dx)
        dx *= dy
        dx -= acc
