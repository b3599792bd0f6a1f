"""Convolution, Deconvolution and Im2col: N-d, grouped, dilated; batched GEMMs over im2col columns.

On the CPU, 2-D float32 Convolutions run on oneDNN instead (conv_onednn.py) unless the layer asks
for `engine: CAFFE`; the im2col path takes the rest (float64 gradient checks, N-d, CuPy).

Shapes: bottom (*outer, C, *in) with the channel axis at `axis`; the outer axes are flattened into
a batch of N images. Convolution weight (num_output, C/group, *kernel); Deconvolution weight
(C, num_output/group, *kernel); bias (num_output). Each bottom i gives top i, with shared weights.
"""

from __future__ import annotations

import functools
import math

from geeps_net.backend import split_work
from geeps_net.layer import Layer, register
from geeps_net.layers import im2col as im2col_module
from geeps_net.layers.conv_cl import ChannelsLastColumns
from geeps_net.layers.conv_onednn import OneDNNConvolution
from geeps_net.layers.im2col import batch_chunks, col2im, conv_geometry, im2col, window_view

# Convolutions with MIN..MAX input channels per group use channels-last columns (conv_cl.py):
# their copies move runs of kernel_w·C (or C/group) elements instead of out_w. Measured faster at
# 20-32 channels (LeNet conv2, CIFAR-10 conv2/conv3), slower at 3 and at 48-256 (AlexNet), where
# the short copies save less than the output transposes and GEMM shapes cost.
CHANNELS_LAST_MIN, CHANNELS_LAST_MAX = 8, 32
# Channels-first convolutions whose GEMMs reduce over at most this many inputs (C·K/group) run one
# GEMM per image, (O, C·K) x (C·K, P), instead of one over the chunk, (O, C·K) x (C·K, n·P): the
# product lands in the top's (n, O, P) layout and the weight gradient needs no transposed copy of
# the top diff. Per 32 images on one thread, LeNet's conv1 (C·K = 25) forward GEMM and store
# 0.56 -> 0.26 ms, its weight gradient 0.60 -> 0.19 ms; neutral at 75-175 (CIFAR-10's conv1),
# slower at 2304 (AlexNet's conv3: 11.9 -> 13.1 ms), where P = 169 makes each GEMM small.
PER_IMAGE_GEMM_MAX_DEPTH = 128
COL2IM_BUDGET_SCALE = 4  # backward chunks that end in col2im hold this many column budgets

_HW_FIELDS = {"kernel_size": "kernel", "pad": "pad", "stride": "stride"}


def spatial_values(layer: Layer, param, field: str, num_spatial: int, default: int | None):
    """Caffe's reading of a repeated spatial field (kernel_size, pad, stride, dilation).

    One value applies to every spatial axis, else one per axis; `<name>_h`/`<name>_w` are the 2-D
    spelling (kernel_h, pad_h, stride_h) and exclude the repeated form. `default` None = required.
    """
    values = list(getattr(param, field))
    base = _HW_FIELDS.get(field)
    if base and (param.HasField(f"{base}_h") or param.HasField(f"{base}_w")):
        if num_spatial != 2:
            raise layer.error(f"{base}_h & {base}_w can only be used for 2-D convolution")
        if values:
            raise layer.error(f"either {field} or {base}_h/w should be specified; not both")
        return (getattr(param, f"{base}_h"), getattr(param, f"{base}_w"))
    if not values and default is not None:
        return (default,) * num_spatial
    if len(values) not in (1, num_spatial):
        raise layer.error(
            f"{field} must be specified once, or once per spatial dimension "
            f"({field} specified {len(values)} times; {num_spatial} spatial dims)"
        )
    return tuple(values * num_spatial if len(values) == 1 else values)


class _ConvGeometryLayer(Layer):
    """Reads convolution_param's axis and spatial fields; computes the geometry in reshape."""

    def _read_spatial(self, bottoms) -> None:
        p = self.layer_param.convolution_param
        try:
            self.axis = bottoms[0].canonical_axis(p.axis)
        except ValueError as e:
            raise self.error(str(e)) from None
        self.num_spatial = bottoms[0].num_axes - self.axis - 1
        self.kernel = spatial_values(self, p, "kernel_size", self.num_spatial, None)
        if any(k <= 0 for k in self.kernel):
            raise self.error(f"filter dimensions must be nonzero, got {self.kernel}")
        self.stride = spatial_values(self, p, "stride", self.num_spatial, 1)
        if any(s <= 0 for s in self.stride):
            raise self.error(f"stride dimensions must be nonzero, got {self.stride}")
        self.pad = spatial_values(self, p, "pad", self.num_spatial, 0)
        self.dilation = spatial_values(self, p, "dilation", self.num_spatial, 1)
        self.channels = bottoms[0].shape[self.axis]

    def _check_bottoms(self, bottoms) -> tuple[int, ...]:
        """The common bottom shape, checked against setup; returns the spatial input size."""
        shape = bottoms[0].shape
        if len(shape) != self.axis + 1 + self.num_spatial:
            raise self.error(f"bottom num_axes may not change: got shape {shape}")
        if shape[self.axis] != self.channels:
            raise self.error(
                f"input size incompatible with convolution kernel: bottom has "
                f"{shape[self.axis]} channels, the layer was set up for {self.channels}"
            )
        for b in bottoms[1:]:
            if b.shape != shape:
                raise self.error(f"all bottoms must have the same shape: {shape} vs {b.shape}")
        self.num = math.prod(shape[: self.axis])
        return shape[self.axis + 1 :]

    def _geometry(self, in_size):
        try:
            return conv_geometry(in_size, self.kernel, self.pad, self.stride, self.dilation)
        except ValueError as e:
            raise self.error(str(e)) from None


class BaseConvolutionLayer(_ConvGeometryLayer):
    """Shared setup of Convolution and Deconvolution: options, groups, learnable blobs."""

    num_bottoms = (1, None)
    num_tops = (1, None)
    backward_reads = frozenset({"bottom_data", "top_diff"})
    reverse = False  # Deconvolution: the weights map top channels back onto bottom channels

    def setup(self, bottoms, tops):
        if len(tops) != len(bottoms):
            raise self.error(
                f"needs one top per bottom, got {len(bottoms)} bottoms, {len(tops)} tops"
            )
        p = self.layer_param.convolution_param
        self._read_spatial(bottoms)
        self.num_output, self.group, self.bias_term = p.num_output, p.group, p.bias_term
        if self.num_output <= 0:
            raise self.error("num_output must be specified and positive")
        if self.group <= 0 or self.channels % self.group or self.num_output % self.group:
            raise self.error(
                f"channels ({self.channels}) and num_output ({self.num_output}) "
                f"must be multiples of group ({self.group})"
            )
        rows, cols = self.num_output, self.channels
        if self.reverse:
            rows, cols = cols, rows
        self.add_param((rows, cols // self.group) + self.kernel, p.weight_filler)
        if self.bias_term:
            self.add_param((self.num_output,), p.bias_filler)

    def _weights(self, which: str = "data"):
        """Weights (or their diff) as (group, rows/group, cols/group · K)."""
        w = getattr(self.blobs[0], which)
        return w.reshape(self.group, w.shape[0] // self.group, -1)

    def _add_bias(self, y) -> None:
        """y (N, num_output, P) += bias per output channel."""
        if self.bias_term:
            y += self.blobs[1].data.reshape(-1, 1)

    def _store_with_bias(self, xp, prod, y) -> None:
        """y (n, num_output, P) = prod (a view of that shape) + bias: one pass over y, where
        storing and then adding took two (about 0.9 ms a forward on CIFAR-10 quick's conv1)."""
        if self.bias_term:
            xp.add(prod, self.blobs[1].data.reshape(-1, 1), out=y)
        else:
            y[...] = prod

    def _bias_diff(self, y_diff) -> None:
        """bias diff += y_diff (N, num_output, P) summed over images and positions."""
        if self.bias_term:
            self.blobs[1].diff += y_diff.sum(axis=(0, 2))


@register("Convolution")
class ConvolutionLayer(OneDNNConvolution, ChannelsLastColumns, BaseConvolutionLayer):
    """top = W ⋆ bottom + b per group: one GEMM (num_output × C·K/group) × (C·K/group × N·P).

    Output size per axis: (in + 2·pad − (dilation·(k − 1) + 1)) // stride + 1.
    """

    def reshape(self, bottoms, tops):
        in_size = self._check_bottoms(bottoms)
        self.geom = self._geometry(in_size)
        self.flip_geom = self._transposed_geometry()
        per_group = self.channels // self.group
        self.channels_last = CHANNELS_LAST_MIN <= per_group <= CHANNELS_LAST_MAX
        self.per_image = per_group * self.geom.kernel_count <= PER_IMAGE_GEMM_MAX_DEPTH
        shape = bottoms[0].shape[: self.axis] + (self.num_output,) + self.geom.out_size
        for top in tops:
            top.reshape(shape)

    def _transposed_geometry(self):
        """With stride 1 the data gradient is itself a convolution: dy padded by extent − 1 − pad,
        correlated with the flipped kernel. Its geometry, or None when col2im is the better way."""
        g = self.geom
        pads = tuple(d * (k - 1) - p for k, d, p in zip(g.kernel, g.dilation, g.pad, strict=True))
        if any(s != 1 for s in g.stride) or any(p < 0 for p in pads):
            return None
        # The copy reads O·K·P_in elements where col2im adds C·K·P; an add costs about 3 copies.
        if self.num_output * math.prod(g.in_size) > 2 * self.channels * g.out_count:
            return None
        return conv_geometry(g.out_size, g.kernel, pads, g.stride, g.dilation)

    def _chunks(self, xp, data_diff: bool):
        """Chunks for the backward. Without a data gradient (data_diff False) only the columns
        count: LeNet's conv1 went from 14 chunks of 4-5 images to 2, 2.4 -> 1.65 ms on two
        threads."""
        g, budget = self.geom, None
        per_image = self.channels * g.out_count
        if data_diff:
            per_image = max(per_image, self.num_output * math.prod(g.in_size))
        if data_diff and self.flip_geom is None:
            # col2im runs one add per kernel tap and chunk: with small chunks its Python time
            # dominates (LeNet conv2 backward measured 9.2 ms at 2 MiB chunks, 7.6 ms at 8 MiB).
            budget = COL2IM_BUDGET_SCALE * im2col_module.CPU_COL_BUDGET
        return batch_chunks(xp, self.num, per_image * g.kernel_count, budget)

    def _forward_chunk_ranges(self, xp):
        """Chunks for the forward, sized by what it holds: C·K·P columns and the O·P product per
        image (the backward's _chunks also counts O·K·P_in for the data gradient). LeNet's conv1
        went from 64 one-image chunks to 2, 3.2 -> 0.8 ms on two threads."""
        g = self.geom
        per_image = (self.channels * g.kernel_count + self.num_output) * g.out_count
        return batch_chunks(xp, self.num, per_image)

    def _columns(self, xp, x):
        """(group, C·K/group, n·P) columns of images x (n, C, *in)."""
        return im2col(xp, x, self.geom).reshape(self.group, -1, x.shape[0] * self.geom.out_count)

    def _image_columns(self, cols, n: int):
        """_columns' (group, C·K/group, n·P) as a view (n, group, C·K/group, P): per image."""
        return cols.reshape(self.group, -1, n, self.geom.out_count).transpose(2, 0, 1, 3)

    def forward(self, xp, bottoms, tops):
        conv = self._onednn(xp, bottoms[0].data.dtype)
        if conv is not None:
            self._forward_onednn(conv, bottoms, tops)
            return
        if self.channels_last:
            self._forward_cl(xp, bottoms, tops)
            return
        g = self.geom
        for bottom, top in zip(bottoms, tops, strict=True):
            x = bottom.data.reshape((self.num, self.channels) + g.in_size)
            y = top.data.reshape(self.num, self.num_output, g.out_count)
            work = functools.partial(self._forward_chunks, xp, x, y)
            split_work(xp, work, self._forward_chunk_ranges(xp))

    def _forward_chunks(self, xp, x, y, chunks) -> None:
        """y[n0:n1] (n, O, P) for each chunk of images x (N, C, *in)."""
        w, out_count = self._weights(), self.geom.out_count
        for n0, n1 in chunks:
            if self.per_image:
                cols = self._image_columns(self._columns(xp, x[n0:n1]), n1 - n0)
                xp.matmul(w, cols, out=y[n0:n1].reshape(n1 - n0, self.group, -1, out_count))
                self._add_bias(y[n0:n1])
                continue
            prod = xp.matmul(w, self._columns(xp, x[n0:n1]))  # (group, O/group, n·P)
            prod = prod.reshape(self.num_output, n1 - n0, out_count).swapaxes(0, 1)
            self._store_with_bias(xp, prod, y[n0:n1])

    def backward(self, xp, tops, propagate_down, bottoms):
        conv = self._onednn(xp, tops[0].diff.dtype)
        if conv is not None:
            self._backward_onednn(conv, tops, propagate_down, bottoms)
            return
        if self.channels_last:
            self._backward_cl(xp, tops, propagate_down, bottoms)
            return
        g, w_diff = self.geom, self._weights("diff")
        for top, down, bottom in zip(tops, propagate_down, bottoms, strict=True):
            x = bottom.data.reshape((self.num, self.channels) + g.in_size)
            dy = top.diff.reshape((self.num, self.num_output) + g.out_size)
            dx = bottom.diff.reshape(x.shape) if down else None
            self._bias_diff(dy.reshape(self.num, self.num_output, -1))
            work = functools.partial(self._backward_chunks, xp, x, dy, dx)
            for part in split_work(xp, work, self._chunks(xp, data_diff=down)):
                w_diff += part

    def _backward_chunks(self, xp, x, dy, dx, chunks):
        """The weight gradient over these chunks of images (returned); dx[n0:n1] when dx is not
        None. x (N, C, *in), dy (N, O, *out)."""
        g, w_diff = self.geom, None
        w_data = self._weights().swapaxes(1, 2)
        if self.flip_geom is not None:
            w_data = self._flipped_weights(xp)
        for n0, n1 in chunks:
            n, cols = n1 - n0, self._columns(xp, x[n0:n1])
            dy_t = None
            if self.per_image:  # (n, group, O/group, P) x (n, group, P, C·K/group), summed
                dy_n = dy[n0:n1].reshape(n, self.group, -1, g.out_count)
                part = xp.matmul(dy_n, self._image_columns(cols, n).swapaxes(2, 3)).sum(axis=0)
            else:
                dy_t = xp.ascontiguousarray(dy[n0:n1].swapaxes(0, 1))
                dy_t = dy_t.reshape(self.group, -1, n * g.out_count)  # (group, O/group, n·P)
                part = xp.matmul(dy_t, cols.swapaxes(1, 2))
            w_diff = part if w_diff is None else xp.add(w_diff, part, out=w_diff)
            if dx is not None:
                self._data_diff(xp, w_data, dy[n0:n1], dy_t, dx[n0:n1])
        return w_diff

    def _flipped_weights(self, xp):
        """(group, C/group, O/group · K): the kernel reversed, in and out channels swapped."""
        o_g, c_g = self.num_output // self.group, self.channels // self.group
        w = self.blobs[0].data.reshape(self.group, o_g, c_g, -1)[..., ::-1]
        return xp.ascontiguousarray(w.swapaxes(1, 2)).reshape(self.group, c_g, -1)

    def _data_diff(self, xp, w_data, dy, dy_t, dx) -> None:
        """dx (n, C, *in) from dy (n, O, *out). Stride 1: the flipped-kernel convolution of dy
        (one im2col copy, faster than col2im's strided adds); else col2im of Wᵀ·dy."""
        n, g = dx.shape[0], self.geom
        if self.flip_geom is not None:
            col = im2col(xp, dy, self.flip_geom)  # (O, *kernel, n, *in)
            prod = xp.matmul(w_data, col.reshape(self.group, -1, n * self.flip_geom.out_count))
            dx = dx.reshape(n, self.channels, -1)
            dx[...] = prod.reshape(self.channels, n, -1).swapaxes(0, 1)
        else:
            if dy_t is None:
                dy_t = xp.ascontiguousarray(dy.swapaxes(0, 1)).reshape(
                    self.group, -1, n * g.out_count
                )
            dcol = xp.matmul(w_data, dy_t)  # (group, C·K/group, n·P)
            col2im(xp, dcol.reshape((self.channels,) + g.kernel + (n,) + g.out_size), g, dx)


@register("Deconvolution")
class DeconvolutionLayer(BaseConvolutionLayer):
    """The transpose of Convolution: top = col2im(Wᵀ · bottom) + b.

    Output size per axis: stride·(in − 1) + dilation·(k − 1) + 1 − 2·pad.
    """

    reverse = True

    def reshape(self, bottoms, tops):
        in_size = self._check_bottoms(bottoms)
        out_size = tuple(
            s * (n - 1) + d * (k - 1) + 1 - 2 * p
            for n, k, p, s, d in zip(
                in_size, self.kernel, self.pad, self.stride, self.dilation, strict=True
            )
        )
        if any(o <= 0 for o in out_size):
            raise self.error(f"output size {out_size} is not positive for input {in_size}")
        self.in_size = in_size
        self.geom = self._geometry(out_size)  # the convolution whose transpose this is
        shape = bottoms[0].shape[: self.axis] + (self.num_output,) + out_size
        for top in tops:
            top.reshape(shape)

    def _chunks(self, xp):
        per_image = self.num_output * self.geom.kernel_count * self.geom.out_count
        return batch_chunks(xp, self.num, per_image)

    def _channels_first(self, xp, x):
        """Images x (n, C, *in) as (group, C/group, n·P_in), a contiguous copy."""
        return xp.ascontiguousarray(x.swapaxes(0, 1)).reshape(
            self.group, -1, x.shape[0] * self.geom.out_count
        )

    def forward(self, xp, bottoms, tops):
        g, w = self.geom, self._weights()
        for bottom, top in zip(bottoms, tops, strict=True):
            x = bottom.data.reshape((self.num, self.channels) + self.in_size)
            y = top.data.reshape((self.num, self.num_output) + g.in_size)
            for n0, n1 in self._chunks(xp):
                dcol = xp.matmul(w.swapaxes(1, 2), self._channels_first(xp, x[n0:n1]))
                dcol = dcol.reshape((self.num_output,) + g.kernel + (n1 - n0,) + g.out_size)
                col2im(xp, dcol, g, y[n0:n1])
            self._add_bias(y.reshape(self.num, self.num_output, -1))

    def backward(self, xp, tops, propagate_down, bottoms):
        g, w, w_diff = self.geom, self._weights(), self._weights("diff")
        for top, down, bottom in zip(tops, propagate_down, bottoms, strict=True):
            x = bottom.data.reshape((self.num, self.channels) + self.in_size)
            dy = top.diff.reshape((self.num, self.num_output) + g.in_size)
            self._bias_diff(dy.reshape(self.num, self.num_output, -1))
            dx = bottom.diff.reshape(self.num, self.channels, -1) if down else None
            for n0, n1 in self._chunks(xp):
                n = n1 - n0
                col = im2col(xp, dy[n0:n1], g).reshape(self.group, -1, n * g.out_count)
                w_diff += xp.matmul(self._channels_first(xp, x[n0:n1]), col.swapaxes(1, 2))
                if down:
                    prod = xp.matmul(w, col)  # (group, C/group, n·P_in)
                    dx[n0:n1] = prod.reshape(self.channels, n, -1).swapaxes(0, 1)


@register("Im2col")
class Im2colLayer(_ConvGeometryLayer):
    """top (*outer, C·K, *out): the patch matrix of convolution_param's kernel/pad/stride/dilation.

    Channel index of top = c·K + flat kernel offset, as Caffe's im2col orders rows.
    """

    backward_reads = frozenset({"top_diff"})

    def setup(self, bottoms, tops):
        self._read_spatial(bottoms)

    def reshape(self, bottoms, tops):
        self.geom = self._geometry(self._check_bottoms(bottoms))
        kc = self.channels * self.geom.kernel_count
        tops[0].reshape(bottoms[0].shape[: self.axis] + (kc,) + self.geom.out_size)

    def _top_view(self, blob, which: str):
        """Top data/diff as (N, C, *kernel, *out)."""
        return getattr(blob, which).reshape(
            (self.num, self.channels) + self.geom.kernel + self.geom.out_size
        )

    def forward(self, xp, bottoms, tops):
        x = bottoms[0].data.reshape((self.num, self.channels) + self.geom.in_size)
        cols = window_view(xp, x, self.geom)  # (C, *kernel, N, *out)
        self._top_view(tops[0], "data")[...] = xp.moveaxis(cols, 1 + self.num_spatial, 0)

    def backward(self, xp, tops, propagate_down, bottoms):
        if propagate_down[0]:
            dcol = xp.moveaxis(self._top_view(tops[0], "diff"), 0, 1 + self.num_spatial)
            dx = bottoms[0].diff.reshape((self.num, self.channels) + self.geom.in_size)
            col2im(xp, dcol, self.geom, dx)
