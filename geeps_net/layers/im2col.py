"""im2col / col2im by strided views, and the window arithmetic shared by convolution and pooling.

A column tensor is laid out (C, *kernel, N, *out), so that reshaped to (C·K, N·P) one GEMM covers
the whole mini-batch (K = prod(kernel), P = prod(out)). The helpers take `xp` (numpy or cupy) and
never loop over images or pixels: im2col is one strided-view copy, col2im one strided add per
kernel offset.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import numpy

from geeps_net.backend import chunk_threads

# Upper bound on the elements of one column tensor: a larger batch runs in chunks of whole images.
# On the CPU, 512 Ki elements (2 MiB in float32) keeps a chunk's columns near the core while the
# GEMM reads them back (measured 1.5x faster on CIFAR-10 quick's conv2 than 4 Mi, which itself
# beat whole-batch columns 1.5-3x; 128-256 Ki, inside this machine's 1 MiB L2, were slower again:
# more, smaller NumPy calls), and chunks are what split_work hands to the threads; on a GPU,
# 64 Mi elements only bounds the scratch memory.
CPU_COL_BUDGET = 1 << 19
GPU_COL_BUDGET = 1 << 26


@dataclass(frozen=True)
class ConvGeometry:
    """Spatial geometry of a convolution: per-axis kernel, pad, stride, dilation, in and out size.

    out = (in + 2·pad − (dilation·(kernel − 1) + 1)) // stride + 1 on every spatial axis.
    """

    kernel: tuple[int, ...]
    pad: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    in_size: tuple[int, ...]
    out_size: tuple[int, ...]

    @property
    def padded(self) -> tuple[int, ...]:
        """Input size plus padding on both sides, per axis."""
        return tuple(n + 2 * p for n, p in zip(self.in_size, self.pad, strict=True))

    @property
    def kernel_count(self) -> int:
        return math.prod(self.kernel)

    @property
    def out_count(self) -> int:
        return math.prod(self.out_size)

    def offset_slices(self, offset) -> tuple[slice, ...]:
        """Slices of the padded input read by kernel tap `offset` for every output position."""
        return tuple(
            slice(o * d, o * d + s * (m - 1) + 1, s)
            for o, d, s, m in zip(offset, self.dilation, self.stride, self.out_size, strict=True)
        )

    @functools.cached_property
    def taps(self) -> tuple[tuple[tuple[int, ...], tuple[slice, ...]], ...]:
        """(offset, offset_slices(offset)) per kernel tap, in row-major order; made once, since
        col2im runs one small add per tap and per chunk of images (Python time adds up)."""
        offsets = itertools.product(*(range(k) for k in self.kernel))
        return tuple((o, self.offset_slices(o)) for o in offsets)

    @functools.cached_property
    def folds(self) -> tuple[tuple[slice, ...], tuple]:
        """col2im_cl's two passes: (the last axis's offset slice per tap of that axis, (offset,
        slices) per tap of the other axes in row-major order, offsets and slices over those axes
        only)."""
        last = tuple(self.offset_slices((0,) * (len(self.kernel) - 1) + (j,))[-1]
                     for j in range(self.kernel[-1]))  # fmt: skip
        rest = tuple((o[:-1], sl[:-1]) for o, sl in self.taps if o[-1] == 0)
        return last, rest

    def center(self) -> tuple[slice, ...]:
        """Slices of the padded input that hold the real input."""
        return self._center

    @functools.cached_property
    def _center(self) -> tuple[slice, ...]:
        return tuple(slice(p, p + n) for p, n in zip(self.pad, self.in_size, strict=True))


def conv_geometry(in_size, kernel, pad, stride, dilation) -> ConvGeometry:
    """A convolution's geometry and output size; ValueError if the padded input is too small."""
    out = []
    for n, k, p, s, d in zip(in_size, kernel, pad, stride, dilation, strict=True):
        extent = d * (k - 1) + 1
        if n + 2 * p < extent:
            raise ValueError(
                f"kernel extent {extent} is larger than the padded input {n + 2 * p} "
                f"(input {n}, pad {p})"
            )
        out.append((n + 2 * p - extent) // s + 1)
    return ConvGeometry(
        tuple(kernel), tuple(pad), tuple(stride), tuple(dilation), tuple(in_size), tuple(out)
    )


def batch_chunks(xp, num: int, per_image: int, cpu_budget: int | None = None):
    """Ranges (start, stop) of whole images holding at most the backend's budget of elements
    (`cpu_budget`, default CPU_COL_BUDGET, with NumPy; GPU_COL_BUDGET with CuPy); at least one
    image per range.

    On the CPU the number of ranges is a multiple of split_work's threads and the ranges are as
    even as whole images allow, so that every thread gets the same work: 64 images in chunks of
    at most 14 were 5 ranges, 28 images on one thread and 36 on the other; now 6 of 10-11.
    """
    budget = (cpu_budget or CPU_COL_BUDGET) if xp is numpy else GPU_COL_BUDGET
    step = max(1, budget // max(per_image, 1))
    count = -(-num // step)
    threads = chunk_threads(xp)
    count = min(num, -(-count // threads) * threads)
    return [(num * i // count, num * (i + 1) // count) for i in range(count)]


def _channels_first_source(xp, x, geom: ConvGeometry):
    """x (N, C, *in) as (C, N, *padded): a view without padding, else a zero-padded copy."""
    if not any(geom.pad):
        return x.swapaxes(0, 1)
    buf = xp.zeros(x.shape[1:2] + x.shape[:1] + geom.padded, dtype=x.dtype)
    buf[(slice(None), slice(None)) + geom.center()] = x.swapaxes(0, 1)
    return buf


def window_view(xp, x, geom: ConvGeometry):
    """Strided view (C, *kernel, N, *out) of x (N, C, *in): the patches, uncopied. Read only."""
    src = _channels_first_source(xp, x, geom)
    s_c, s_n, *s_sp = src.strides
    shape = src.shape[:1] + geom.kernel + src.shape[1:2] + geom.out_size
    strides = (
        (s_c,)
        + tuple(st * d for st, d in zip(s_sp, geom.dilation, strict=True))
        + (s_n,)
        + tuple(st * s for st, s in zip(s_sp, geom.stride, strict=True))
    )
    return xp.lib.stride_tricks.as_strided(src, shape=shape, strides=strides)


def im2col(xp, x, geom: ConvGeometry):
    """Contiguous columns (C, *kernel, N, *out) of x (N, C, *in); zeros where padding is read."""
    return xp.ascontiguousarray(window_view(xp, x, geom))


def col2im(xp, col, geom: ConvGeometry, out) -> None:
    """out (N, C, *in) = the adjoint of im2col applied to col (C, *kernel, N, *out).

    Each input element receives the sum of every column entry that read it; one strided add per
    kernel offset, into a zeroed channels-first padded scratch buffer.
    """
    channels, num = col.shape[0], col.shape[1 + len(geom.kernel)]
    buf = xp.zeros((channels, num) + geom.padded, dtype=col.dtype)
    lead = (slice(None), slice(None))
    for offset, slices in geom.taps:
        target = buf[lead + slices]
        target += col[(slice(None),) + offset]
    out[...] = buf[lead + geom.center()].swapaxes(0, 1)


def channels_last_padded(xp, x, geom: ConvGeometry):
    """x (n, C, *in) as a zero-padded channels-last copy (n, *padded, C)."""
    buf = xp.zeros(x.shape[:1] + geom.padded + x.shape[1:2], dtype=x.dtype)
    buf[(slice(None),) + geom.center()] = _channels_to_last(x)
    return buf


def im2col_cl(xp, x_cl, geom: ConvGeometry, group: int = 1):
    """Contiguous channels-last columns (n, *out, group, *kernel, C/group) of x_cl (n, *padded, C).

    As matrices (n·P, group, K·C/group): one row per output position, each group's taps in
    (kernel, channel) order. With group 1 and dilation 1 along the last axis each copied run is
    kernel_w·C contiguous inputs long (C/group otherwise), where channels-first columns copy runs
    of out_w.
    """
    s_n, *s_sp, s_c = x_cl.strides
    per_group = x_cl.shape[-1] // group
    shape = x_cl.shape[:1] + geom.out_size + (group,) + geom.kernel + (per_group,)
    strides = (
        (s_n,)
        + tuple(st * s for st, s in zip(s_sp, geom.stride, strict=True))
        + (per_group * s_c,)
        + tuple(st * d for st, d in zip(s_sp, geom.dilation, strict=True))
        + (s_c,)
    )
    return xp.ascontiguousarray(xp.lib.stride_tricks.as_strided(x_cl, shape, strides))


def col2im_cl(xp, dcol, geom: ConvGeometry, out) -> None:
    """out (n, C, *in) = the adjoint of im2col_cl(channels_last_padded(·)) applied to dcol
    (n, *out, group, kernel[-1], *kernel[:-1], C/group): the last kernel axis first.

    Two passes of strided adds into channels-last scratch: the last axis's taps onto padded
    rows, moving runs of kernel[:-1]·C/group contiguous elements, then the other axes' taps,
    each onto whole padded rows. One add per tap moved runs of C/group: LeNet's conv2 backward
    col2im (C = 20, 5x5) 0.40 -> 0.31 ms per 11 images, 10 NumPy calls instead of 25.
    """
    spatial = len(geom.kernel)
    n, group, per_group = dcol.shape[0], dcol.shape[1 + spatial], dcol.shape[-1]
    last, rest = geom.folds
    rows_shape = (n,) + geom.out_size[:-1] + (geom.padded[-1], group) + geom.kernel[:-1]
    rows = xp.zeros(rows_shape + (per_group,), dtype=dcol.dtype)
    lead = (slice(None),) * spatial  # images and every output axis but the last
    for j, sl in enumerate(last):
        target = rows[lead + (sl,)]
        target += dcol[lead + (slice(None), slice(None), j)]
    if spatial == 1:
        buf = rows  # (n, padded, group, C/group)
    else:
        buf = xp.zeros((n,) + geom.padded + (group, per_group), dtype=dcol.dtype)
        for offset, slices in rest:
            target = buf[(slice(None),) + slices]
            target += rows[(slice(None),) * (spatial + 2) + offset]
    buf = buf.reshape(buf.shape[: 1 + spatial] + (-1,))
    out[...] = _channels_to_second(buf[(slice(None),) + geom.center()])


def _channels_to_last(x):
    """x (n, C, *sp) as a view (n, *sp, C): moveaxis without its argument checks (per chunk)."""
    return x.transpose((0, *range(2, x.ndim), 1))


def _channels_to_second(x):
    """x (n, *sp, C) as a view (n, C, *sp)."""
    return x.transpose((0, x.ndim - 1, *range(1, x.ndim - 1)))


def window_range(offset: int, size: int, pad: int, stride: int, count: int):
    """Which outputs of a strided window read input `q·stride − pad + offset` inside [0, size).

    Returns (lo, hi, x_slice): outputs lo..hi−1 read input elements x_slice (None when none do).
    Used by pooling, whose windows are clipped to the input instead of reading padding.
    """
    lo = max(0, -((offset - pad) // stride))  # ceil((pad - offset) / stride)
    hi = min(count, (size - 1 + pad - offset) // stride + 1)
    if hi <= lo:
        return lo, lo, None
    start = lo * stride - pad + offset
    return lo, hi, slice(start, start + stride * (hi - lo - 1) + 1, stride)
