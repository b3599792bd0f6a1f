"""Convolution over channels-last columns: the path ConvolutionLayer takes when it has enough
channels per group (conv.CHANNELS_LAST_MIN).

Columns are (n·P, group, K·C/group) matrices, one row per output position with that position's
taps in (kernel, channel) order, copied from a zero-padded channels-last image; the weights are
(group, K·C/group, O/group). Compared with channels-first columns (C·K, n·P), each copied run is
kernel_w·C (or C/group) contiguous inputs instead of out_w, which measured 1.3-1.8x faster per
layer on LeNet's conv2 and CIFAR-10's conv2/conv3 (the copies, not the GEMMs, were the cost).
"""

from __future__ import annotations

import functools

from geeps_net.backend import split_work
from geeps_net.layers.im2col import channels_last_padded, col2im_cl, im2col_cl


class ChannelsLastColumns:
    """Forward and backward of a Convolution layer in channels-last columns (a mixin: it uses the
    layer's geom, flip_geom, group, channels, num_output, blobs, bias_term, _chunks,
    _forward_chunk_ranges, _bias_diff).
    """

    def _weights_cl(self, xp, last_kernel_axis_first: bool = False):
        """The weights as (group, K·C/group, O/group), rows in (kernel, channel) order: a copy.
        `last_kernel_axis_first`: rows in (kernel[-1], *kernel[:-1], channel) order instead, the
        order col2im_cl takes."""
        w = self.blobs[0].data
        w = w.reshape((self.group, -1) + w.shape[1:])  # (group, O/group, C/group, *kernel)
        w = xp.moveaxis(w, (1, 2), (-1, -2))  # (group, *kernel, C/g, O/g)
        if last_kernel_axis_first:
            w = xp.moveaxis(w, len(self.geom.kernel), 1)
        w = xp.ascontiguousarray(w)
        return w.reshape(self.group, -1, self.num_output // self.group)

    def _columns_cl(self, xp, x, geom):
        """(n·P, group, K·C/group) columns of images x (n, C, *in) under `geom`."""
        col = im2col_cl(xp, channels_last_padded(xp, x, geom), geom, self.group)
        return col.reshape(x.shape[0] * geom.out_count, self.group, -1)

    def _to_channels_first(self, xp, prod, out, bias=None) -> None:
        """out (n, G·F, P) = prod (G, n·P, F), the group-major product of a column GEMM, plus
        `bias` (G·F) when given: in the same pass, not a second one over out."""
        n, count = out.shape[0], out.shape[-1]
        src = prod.reshape(self.group, n, count, -1).transpose(1, 0, 3, 2)  # (n, G, F, P)
        dst = out.reshape(n, self.group, -1, count)
        if bias is None:
            dst[...] = src
        else:
            xp.add(src, bias.reshape(self.group, -1, 1), out=dst)

    def _forward_cl(self, xp, bottoms, tops):
        g, w = self.geom, self._weights_cl(xp)
        for bottom, top in zip(bottoms, tops, strict=True):
            x = bottom.data.reshape((self.num, self.channels) + g.in_size)
            y = top.data.reshape(self.num, self.num_output, g.out_count)
            work = functools.partial(self._forward_cl_chunks, xp, w, x, y)
            split_work(xp, work, self._forward_chunk_ranges(xp))

    def _forward_cl_chunks(self, xp, w, x, y, chunks) -> None:
        """y[n0:n1] (n, O, P) for each chunk of images x (N, C, *in); w from _weights_cl."""
        for n0, n1 in chunks:
            col = self._columns_cl(xp, x[n0:n1], self.geom)
            bias = self.blobs[1].data if self.bias_term else None
            self._to_channels_first(xp, xp.matmul(col.swapaxes(0, 1), w), y[n0:n1], bias)

    def _backward_cl(self, xp, tops, propagate_down, bottoms):
        g, o, w = self.geom, self.num_output, self._weights_cl(xp)
        w_diff = xp.zeros_like(w)  # added to the blob's diff in its own layout at the end
        for top, down, bottom in zip(tops, propagate_down, bottoms, strict=True):
            x = bottom.data.reshape((self.num, self.channels) + g.in_size)
            dy = top.diff.reshape(self.num, o, g.out_count)
            dx = bottom.diff.reshape(x.shape) if down else None
            self._bias_diff(dy)
            work = functools.partial(self._backward_cl_chunks, xp, w, x, dy, dx)
            for part in split_work(xp, work, self._chunks(xp, data_diff=down)):
                w_diff += part
        w_diff = w_diff.reshape((self.group,) + g.kernel + (self.channels // self.group, -1))
        diff = self.blobs[0].diff
        diff.reshape((self.group, -1) + diff.shape[1:])[...] += xp.moveaxis(
            w_diff, (-1, -2), (1, 2)
        )

    def _backward_cl_chunks(self, xp, w, x, dy, dx, chunks):
        """The weight gradient (G, K·C/G, O/G) over these chunks of images (returned); dx[n0:n1]
        when dx is not None. x (N, C, *in), dy (N, O, P)."""
        w_diff, out_count = None, self.geom.out_count
        if self.flip_geom is not None:
            w_back = self._flipped_weights_cl(xp)
        else:
            w_back = self._weights_cl(xp, last_kernel_axis_first=True).swapaxes(1, 2)
        for n0, n1 in chunks:
            n = n1 - n0
            dy_cl = xp.ascontiguousarray(dy[n0:n1].swapaxes(1, 2))
            dy_cl = dy_cl.reshape(n * out_count, self.group, -1).swapaxes(0, 1)
            col = self._columns_cl(xp, x[n0:n1], self.geom)  # (n·P, G, K·C/G)
            part = xp.matmul(col.transpose(1, 2, 0), dy_cl)
            w_diff = part if w_diff is None else xp.add(w_diff, part, out=w_diff)
            if dx is not None:
                self._data_diff_cl(xp, w_back, dy[n0:n1], dy_cl, dx[n0:n1])
        return w_diff

    def _flipped_weights_cl(self, xp):
        """(G, K·O/G, C/G): the kernel reversed, rows in (kernel, out channel) order: a copy."""
        w = self.blobs[0].data
        w = xp.flip(w, tuple(range(2, w.ndim)))
        w = w.reshape((self.group, -1) + w.shape[1:])  # (G, O/G, C/G, *kernel)
        w = xp.ascontiguousarray(xp.moveaxis(w, (1, 2), (-2, -1)))  # (G, *kernel, O/G, C/G)
        return w.reshape(self.group, -1, self.channels // self.group)

    def _data_diff_cl(self, xp, w_back, dy, dy_cl, dx) -> None:
        """dx (n, C, *in) from dy (n, O, P) (dy_cl: (G, n·P, O/G)). Stride 1: the flipped-kernel
        convolution of dy (w_back from _flipped_weights_cl), in channels-last columns; else
        col2im of dy·Wᵀ (w_back: the weights (G, O/G, K·C/G), kernel rows in col2im_cl's order)."""
        n, g, fg = dx.shape[0], self.geom, self.flip_geom
        if fg is None:
            dcol = xp.matmul(dy_cl, w_back).swapaxes(0, 1)  # (n·P, G, K·C/G)
            kernel = g.kernel[-1:] + g.kernel[:-1]
            dcol = dcol.reshape((n,) + g.out_size + (self.group,) + kernel + (-1,))
            col2im_cl(xp, dcol, g, dx)
            return
        col = self._columns_cl(xp, dy.reshape((n, self.num_output) + g.out_size), fg)
        prod = xp.matmul(col.swapaxes(0, 1), w_back)
        self._to_channels_first(xp, prod, dx.reshape(n, self.channels, -1))
