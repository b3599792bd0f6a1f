"""Pooling kernels by strided slices (MAX, AVE, forward and backward) and Caffe's pooling
geometry: loops run over window offsets, never over pixels; one source for NumPy and CuPy.

Caffe's geometry: out = ceil((in + 2·pad − kernel) / stride) + 1 (floor with round_mode FLOOR);
when any pad is set, a last window that would start inside the right/bottom padding is dropped.
MAX windows are clipped to the input (padding never wins); AVE sums over the clipped window but
divides by the window clipped to the padded input, [start, min(start + kernel, in + pad)).
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import numpy

from geeps_net.backend import split_work
from geeps_net.layers.im2col import batch_chunks, window_range

FLT_MAX = float(numpy.finfo(numpy.float32).max)  # Caffe starts every MAX window at -FLT_MAX
# Elements of the largest array per block on the CPU (4 MiB in float32). Blocks run on the CPU
# threads, and a thread waits for the GIL between NumPy calls: fewer, larger calls scale better.
# Against 1 << 18 on two threads (alternating in one process, median forward / backward ms):
# CIFAR-10 quick's pool1 8.1 / 4.5 -> 7.1 / 4.5, AlexNet's pool1 (b16) 13.2 / 7.2 -> 8.6 / 6.2;
# on one thread no slower. 1 << 22 fell out of the cache (CIFAR-10 quick's pool1 18.8 / 7.5).
CPU_POOL_BLOCK = 1 << 20
# Arrays from this many elements up are shared out to the threads even when they fit one block.
# Whole on one thread against two blocks on two (min ms forward / backward, two runs): LeNet's
# pool1 (737 Ki elements, MAX 2x2/2) 0.63 / 1.04 -> 0.52 / 0.67, CIFAR-10 quick's pool2 (819 Ki,
# AVE 3x3/2) 1.41 / 1.71 -> 0.89 / 1.04. Below it the hand-off costs more than it saves: LeNet's
# pool2 (205 Ki) forward ran 0.30 ms whole, 0.34-0.37 ms in two blocks.
CPU_POOL_SPLIT = 1 << 19


@dataclass(frozen=True)
class PoolGeometry:
    """2-D pooling geometry: (h, w) kernel, pad, stride, input size and output size."""

    kernel: tuple[int, int]
    pad: tuple[int, int]
    stride: tuple[int, int]
    in_size: tuple[int, int]
    out_size: tuple[int, int]

    @property
    def whole(self) -> bool:
        """One window that is exactly the input: reduce over the plane directly."""
        return self.out_size == (1, 1) and self.kernel == self.in_size and self.pad == (0, 0)

    def ranges(self, axis: int, offset: int):
        """window_range along spatial `axis` (0 = h, 1 = w) for kernel offset `offset`."""
        return window_range(
            offset, self.in_size[axis], self.pad[axis], self.stride[axis], self.out_size[axis]
        )

    @functools.cached_property
    def tiles(self) -> bool:
        """Windows that tile the input: none overlap and every input is in one (LeNet's 2x2/2)."""
        if self.stride[0] < self.kernel[0] or self.stride[1] < self.kernel[1]:
            return False
        read = sum((rh[1] - rh[0]) * (rw[1] - rw[0]) for _, rh, rw in self.offsets())
        return read == self.in_size[0] * self.in_size[1]

    def offsets(self):
        """(k, (lo_h, hi_h, rows), (lo_w, hi_w, cols)) per kernel offset k that reads the input."""
        for k, (i, j) in enumerate(itertools.product(*map(range, self.kernel))):
            rh, rw = self.ranges(0, i), self.ranges(1, j)
            if rh[2] is not None and rw[2] is not None:
                yield k, rh, rw


def pool_geometry(in_size, kernel, pad, stride, ceil_mode: bool = True) -> PoolGeometry:
    """Caffe's PoolingLayer::Reshape output size, including the drop of a window in the padding."""
    rounding = math.ceil if ceil_mode else math.floor
    out = [
        int(rounding((n + 2 * p - k) / s)) + 1
        for n, k, p, s in zip(in_size, kernel, pad, stride, strict=True)
    ]
    if any(pad):
        out = [
            o - 1 if (o - 1) * s >= n + p else o
            for o, n, p, s in zip(out, in_size, pad, stride, strict=True)
        ]
    return PoolGeometry(tuple(kernel), tuple(pad), tuple(stride), tuple(in_size), tuple(out))


def mask_dtype(geom: PoolGeometry):
    """Smallest signed integer type holding a window offset (0..K−1) or −1."""
    return numpy.min_scalar_type(-math.prod(geom.kernel))


def _blocks(num: int, channels: int, plane: int, budget: int):
    """(images, channels) index pairs that cut (N, C, plane) into blocks of ~`budget` elements;
    whole images as even as batch_chunks makes them (a multiple of the threads)."""
    if channels * plane <= budget:
        images = batch_chunks(numpy, num, channels * plane, budget)
        return [(slice(n0, n1), slice(None)) for n0, n1 in images]
    step = max(1, budget // plane)
    return [
        (slice(n, n + 1), slice(c, c + step)) for n in range(num) for c in range(0, channels, step)
    ]


def _blockwise(kernel):
    """Run a pooling kernel block by block over images and channels: every array argument is
    (N, C, ...) and windows never cross planes. On the CPU, blocks of CPU_POOL_BLOCK elements of
    the largest array keep the working set in cache (measured 2x faster on large inputs), and
    run on the CPU threads (split_work: blocks write disjoint outputs), from CPU_POOL_SPLIT
    elements up; a GPU takes the whole batch at once."""

    @functools.wraps(kernel)
    def run(xp, *args, **kwargs):
        arrays = [i for i, a in enumerate(args) if hasattr(a, "shape")]
        largest = max((args[i] for i in arrays), key=lambda a: a.size)
        if xp is not numpy or largest.size < CPU_POOL_SPLIT:
            return kernel(xp, *args, **kwargs)
        num, channels = largest.shape[:2]
        plane = max(largest.size // (num * channels), 1)

        def run_blocks(blocks):
            for block in blocks:
                kernel(xp, *(a[block] if i in arrays else a for i, a in enumerate(args)), **kwargs)

        split_work(xp, run_blocks, _blocks(num, channels, plane, CPU_POOL_BLOCK))

    return run


def _phase_views(geom: PoolGeometry):
    """(k, index) per kernel offset k = i·kw + j: the (oh, ow) inputs that offset reads, as an
    index into the phase layout of _to_phases (rows step by stride_h; columns are contiguous)."""
    (oh, ow), (sh, sw) = geom.out_size, geom.stride
    for k, (i, j) in enumerate(itertools.product(*map(range, geom.kernel))):
        rows = slice(i, i + (oh - 1) * sh + 1, sh)
        yield k, (Ellipsis, rows, j % sw, slice(j // sw, j // sw + ow))


def _phase_shape(geom: PoolGeometry) -> tuple[int, int, int]:
    """(rows, stride_w, columns) of the padded plane in phase layout: every window's reach."""
    rows = (geom.out_size[0] - 1) * geom.stride[0] + geom.kernel[0]
    return rows, geom.stride[1], geom.out_size[1] + (geom.kernel[1] - 1) // geom.stride[1]


def _to_phases(xp, x, geom: PoolGeometry, fill: float):
    """x (N, C, H, W) in phase layout (N, C, rows, sw, cols), `fill` where windows read padding.

    Padded row r is input row r − pad_h; padded column q·sw + p sits at phase p, column q. Every
    kernel offset then reads contiguous runs of columns: one strided copy in, instead of strided
    reads at every offset (measured 1.4x faster on CIFAR-10's 3x3/2 max pooling forward).
    """
    rows, sw, cols = _phase_shape(geom)
    buf = xp.full(x.shape[:2] + (rows, sw, cols), fill, dtype=x.dtype)
    (ph, pw), (height, width) = geom.pad, geom.in_size
    in_rows = min(ph + height, rows) - ph
    for p in range(sw):
        lo, hi, sl = window_range(p, width, pw, sw, cols)
        if sl is not None:
            buf[:, :, ph : ph + in_rows, p, lo:hi] = x[:, :, :in_rows, sl]
    return buf


def _max_pool_reads(xp, x, geom: PoolGeometry):
    """(k, v, sub) per kernel offset k: the inputs v it reads for the outputs [sub].

    Overlapping windows read x in phase layout (one copy, then contiguous runs); otherwise
    strided views of x itself, which the caller copies one at a time: those taps partition x, so
    their copies move what one phase copy would, with no padding to fill.
    """
    if geom.stride[1] >= geom.kernel[1]:
        for k, rh, rw in geom.offsets():
            yield k, x[..., rh[2], rw[2]], (Ellipsis, slice(rh[0], rh[1]), slice(rw[0], rw[1]))
        return
    src = _to_phases(xp, x, geom, -FLT_MAX)
    for k, index in _phase_views(geom):
        yield k, src[index], Ellipsis


@_blockwise
def max_pool_forward(xp, x, geom: PoolGeometry, y, mask) -> None:
    """y (N, C, oh, ow) = window maxima of x (N, C, H, W); mask = window offset of the maximum.

    As in Caffe, a window starts at −FLT_MAX with mask −1 and takes an element only when it is
    strictly greater (ties keep the first in row-major order; NaN and padding never win). The
    mask is the last offset that was strictly greater: the running max of (k + 1)·better, less 1.
    """
    if geom.whole:
        plane = x.reshape(x.shape[:2] + (-1,))
        mask[..., 0, 0] = plane.argmax(axis=-1)
        y[..., 0, 0] = plane.max(axis=-1)
        return
    y[...] = -FLT_MAX
    won = xp.zeros(mask.shape, dtype=mask.dtype)
    for k, v, sub in _max_pool_reads(xp, x, geom):
        y_sub, won_sub = y[sub], won[sub]
        # v is read twice: one strided copy, then contiguous passes (LeNet's 2x2/2 forward
        # measured 1.33 -> 0.87 ms, CIFAR-10's 3x3/2 12.4 -> 9.0 ms, one thread).
        v = xp.ascontiguousarray(v)
        better = v > y_sub
        xp.fmax(y_sub, v, out=y_sub)  # = where(better, v, y_sub): y is never NaN
        xp.maximum(won_sub, better * mask.dtype.type(k + 1), out=won_sub)
    xp.subtract(won, mask.dtype.type(1), out=mask)


@_blockwise
def max_pool_values(xp, x, geom: PoolGeometry, y) -> None:
    """y (N, C, oh, ow) = window maxima of x (N, C, H, W), as max_pool_forward's without the
    mask: for a forward that no backward follows."""
    if geom.whole:
        y[..., 0, 0] = x.reshape(x.shape[:2] + (-1,)).max(axis=-1)
        return
    y[...] = -FLT_MAX
    for _, v, sub in _max_pool_reads(xp, x, geom):
        y_sub = y[sub]
        xp.fmax(y_sub, v, out=y_sub)


@_blockwise
def max_pool_backward(xp, dy, mask, geom: PoolGeometry, dx, accumulate: bool = False) -> None:
    """dx (N, C, H, W), contiguous, (+)= dy routed to the argmax recorded in mask."""
    if geom.stride[0] < geom.kernel[0] or geom.stride[1] < geom.kernel[1]:
        _scatter_overlapping(xp, dy, mask, geom, dx, accumulate)
        return
    if not accumulate and geom.tiles and not geom.whole:
        # Each input is one tap's: write the products, no zero fill and add (LeNet's pool1
        # backward 0.55 -> 0.29 ms per 32 images, one thread).
        for k, rh, rw in geom.offsets():
            sub = (Ellipsis, slice(rh[0], rh[1]), slice(rw[0], rw[1]))
            xp.multiply(dy[sub], mask[sub] == k, out=dx[..., rh[2], rw[2]])
        return
    if not accumulate:
        dx[...] = 0
    if geom.whole:
        rows = dx.reshape(-1, dx.shape[2] * dx.shape[3])
        picks = mask.reshape(-1).astype(xp.int64)
        rows[xp.arange(rows.shape[0]), picks] += dy.reshape(-1)
        return
    for k, rh, rw in geom.offsets():
        sub = (Ellipsis, slice(rh[0], rh[1]), slice(rw[0], rw[1]))  # outputs that read x here
        dx[..., rh[2], rw[2]] += dy[sub] * (mask[sub] == k)


def _scatter_overlapping(xp, dy, mask, geom: PoolGeometry, dx, accumulate: bool) -> None:
    """The backward of overlapping windows as one scatter-add of every output into its argmax,
    instead of a strided add per window offset (measured 2x faster on CIFAR-10's 3x3/2 pooling).
    bincount sums in float64: an input shared by overlapping windows gets its exact sum, rounded
    once."""
    index, dy = _argmax_index(xp, mask, geom), dy.reshape(-1)
    if bool((mask < 0).any()):  # windows of NaN or -inf only: no input won, nothing flows back
        won = mask.reshape(-1) >= 0
        index, dy = xp.where(won, index, 0), xp.where(won, dy, 0)
    sums = xp.bincount(index, weights=dy, minlength=dx.size).reshape(dx.shape)
    if accumulate:
        dx += sums
    else:
        dx[...] = sums


def _argmax_index(xp, mask, geom: PoolGeometry):
    """Flat index into the (N, C, H, W) input of each output's argmax: plane start + window
    start + the offset `mask` names (kernel tap i·kw + j is i·W + j past the window start)."""
    width, (kh, kw) = geom.in_size[1], geom.kernel
    taps = xp.asarray(numpy.add.outer(numpy.arange(kh) * width, numpy.arange(kw)).ravel())
    # take(), not taps[mask]: half the time (0.31 -> 0.15 ms for CIFAR-10's pool1, 25 images).
    # mask −1 picks the last tap; the caller masks those out.
    index = xp.take(taps, mask)
    index += _window_starts(xp, geom, mask.shape)
    return index.reshape(-1)


@functools.lru_cache(maxsize=16)
def _window_starts(xp, geom: PoolGeometry, shape: tuple[int, ...]):
    """(N, C, oh, ow) flat index of each window's first input (plane start + window start), read
    only: made once per block shape instead of two broadcast adds per call."""
    (num, channels, oh, ow), (height, width) = shape, geom.in_size
    (sh, sw), (ph, pw) = geom.stride, geom.pad
    starts = numpy.add.outer((numpy.arange(oh) * sh - ph) * width, numpy.arange(ow) * sw - pw)
    planes = numpy.arange(num * channels).reshape(num, channels, 1, 1) * (height * width)
    base = starts + planes
    base.flags.writeable = False
    return xp.asarray(base)


def max_pool_mask_top(xp, mask, geom: PoolGeometry, out) -> None:
    """Caffe's second MAX top: the argmax as flat index h·W + w in the input plane (−1: none)."""
    kw, width = geom.kernel[1], geom.in_size[1]
    m = mask.astype(xp.int64)
    i, j = m // kw, m % kw
    h0 = (xp.arange(geom.out_size[0]) * geom.stride[0] - geom.pad[0]).reshape(-1, 1)
    w0 = xp.arange(geom.out_size[1]) * geom.stride[1] - geom.pad[1]
    out[...] = xp.where(m >= 0, (h0 + i) * width + (w0 + j), -1)


def _ave_divisor(xp, geom: PoolGeometry, dtype):
    """(oh, ow) window sizes clipped to the padded input, as Caffe's pool_size."""
    sizes = []
    axes = zip(geom.in_size, geom.kernel, geom.pad, geom.stride, geom.out_size, strict=True)
    for n, k, p, s, o in axes:
        start = numpy.arange(o) * s - p
        sizes.append(numpy.minimum(start + k, n + p) - start)
    return xp.asarray(numpy.outer(*sizes), dtype=dtype)


@_blockwise
def ave_pool_forward(xp, x, geom: PoolGeometry, y) -> None:
    """y = window sums of x / Caffe's pool_size; separable: sum along h, then along w."""
    if geom.whole:
        plane = x.reshape(x.shape[:2] + (-1,))
        y[..., 0, 0] = plane.sum(axis=-1) / plane.shape[-1]
        return
    rows = xp.zeros(x.shape[:2] + (geom.out_size[0], x.shape[3]), dtype=x.dtype)
    for i in range(geom.kernel[0]):
        lo, hi, sl = geom.ranges(0, i)
        if sl is not None:
            rows[:, :, lo:hi] += x[:, :, sl]
    y[...] = 0
    for j in range(geom.kernel[1]):
        lo, hi, sl = geom.ranges(1, j)
        if sl is not None:
            y[..., lo:hi] += rows[..., sl]
    y /= _ave_divisor(xp, geom, y.dtype)


@_blockwise
def ave_pool_backward(xp, dy, geom: PoolGeometry, dx, accumulate: bool = False) -> None:
    """dx (+)= dy / pool_size spread over each window's clipped input (the forward's adjoint)."""
    if not accumulate:
        dx[...] = 0
    if geom.whole:
        dx += dy / (dx.shape[2] * dx.shape[3])
        return
    share = dy / _ave_divisor(xp, geom, dy.dtype)
    rows = xp.zeros(dy.shape[:3] + (dx.shape[3],), dtype=dy.dtype)
    for j in range(geom.kernel[1]):
        lo, hi, sl = geom.ranges(1, j)
        if sl is not None:
            rows[..., sl] += share[..., lo:hi]
    for i in range(geom.kernel[0]):
        lo, hi, sl = geom.ranges(0, i)
        if sl is not None:
            dx[:, :, sl] += rows[:, :, lo:hi]
