"""The Pooling (MAX, AVE) and SPP layers, on the kernels of pool_kernels.py; on the CPU, float32
AVE pooling whose divisor oneDNN can give runs on oneDNN (geeps_net/onednn/)."""

from __future__ import annotations

import math

import numpy

from geeps_net import onednn
from geeps_net.backend import chunk_threads
from geeps_net.layer import Layer, enum_name, register
from geeps_net.layers.pool_kernels import (
    ave_pool_backward,
    ave_pool_forward,
    mask_dtype,
    max_pool_backward,
    max_pool_forward,
    max_pool_mask_top,
    max_pool_values,
    pool_geometry,
)
from geeps_net.proto import caffe_pb2


def _method(layer: Layer, param) -> str:
    method = enum_name(param, "pool")
    if method == "STOCHASTIC":
        raise layer.error(
            "pool: STOCHASTIC is not supported (Caffe itself has no CPU implementation of it)"
        )
    return method


def _check_4d(layer: Layer, bottom) -> None:
    if bottom.num_axes != 4:
        raise layer.error(
            f"input must have 4 axes (num, channels, height, width), got {bottom.shape}"
        )


@register("Pooling")
class PoolingLayer(Layer):
    """MAX or AVE pooling of (N, C, H, W); with MAX, a second top may take Caffe's argmax mask."""

    num_tops = (1, 2)
    backward_reads = frozenset({"top_diff"})  # MAX also reads its internal "mask"
    # oneDNN's average pooling (None: pool_kernels.py's), made by _onednn_ave on first use.
    onednn_pool: onednn.AvgPooling2d | None = None
    _onednn_spec: onednn.PoolSpec | None = None

    def setup(self, bottoms, tops):
        p = self.layer_param.pooling_param
        self.method = _method(self, p)
        if len(tops) > 1 and self.method != "MAX":
            raise self.error("a second top (the argmax mask) needs pool: MAX")
        self.global_pooling = p.global_pooling
        self.ceil_mode = p.round_mode == caffe_pb2.PoolingParameter.CEIL
        for name in ("pad", "stride"):  # `pad` or both `pad_h` and `pad_w`; same for stride
            has_h, has_w = p.HasField(f"{name}_h"), p.HasField(f"{name}_w")
            if (has_h or has_w) and (p.HasField(name) or not (has_h and has_w)):
                raise self.error(f"{name} is {name} OR {name}_h and {name}_w are required")
        self.pad = (p.pad_h, p.pad_w) if p.HasField("pad_h") else (p.pad, p.pad)
        self.stride = (p.stride_h, p.stride_w) if p.HasField("stride_h") else (p.stride, p.stride)
        if min(self.stride) <= 0:
            raise self.error(f"stride must be positive, got {self.stride}")
        self.kernel = self._kernel(p)

    def _kernel(self, p):
        """(kernel_h, kernel_w), or None for global pooling (the whole plane, known at reshape)."""
        has_size = p.HasField("kernel_size")
        has_hw = p.HasField("kernel_h") and p.HasField("kernel_w")
        if self.global_pooling:
            if has_size or p.HasField("kernel_h") or p.HasField("kernel_w"):
                raise self.error("with global_pooling: true, the filter size cannot be specified")
            if any(self.pad) or self.stride != (1, 1):
                raise self.error("with global_pooling: true, only pad = 0 and stride = 1")
            return None
        if has_size == has_hw:
            raise self.error("filter size is kernel_size OR kernel_h and kernel_w (both)")
        kernel = (p.kernel_size,) * 2 if has_size else (p.kernel_h, p.kernel_w)
        if min(kernel) <= 0:
            raise self.error(f"filter dimensions cannot be zero, got {kernel}")
        return kernel

    def reshape(self, bottoms, tops):
        _check_4d(self, bottoms[0])
        shape = bottoms[0].shape
        kernel = shape[2:] if self.global_pooling else self.kernel
        if self.pad[0] >= kernel[0] or self.pad[1] >= kernel[1]:
            raise self.error(f"pad {self.pad} must be smaller than the kernel {kernel}")
        self.geom = pool_geometry(shape[2:], kernel, self.pad, self.stride, self.ceil_mode)
        top_shape = shape[:2] + self.geom.out_size
        for top in tops:
            top.reshape(top_shape)
        if self.method == "MAX":
            self.add_internal("mask", top_shape, mask_dtype(self.geom))

    def _onednn_ave(self, xp, x):
        """oneDNN's average pooling for this geometry and `x` (the bottom's data or diff), or
        None. Caffe divides by the window clipped to the padded input: oneDNN's exclude-padding
        when there is no padding, its include-padding when no window reaches past the padding
        (else None, as for MAX, float64, CuPy and `engine: CAFFE`)."""
        p = self.layer_param.pooling_param
        if self.method != "AVE" or xp is not numpy or x.dtype != numpy.float32:
            return None
        if p.engine == caffe_pb2.PoolingParameter.CAFFE:
            return None
        g, (num, channels) = self.geom, x.shape[:2]
        spec = onednn.PoolSpec(
            *(num, channels, g.in_size, g.out_size, g.kernel, g.stride, g.pad),
            *(any(g.pad), chunk_threads(xp)),
        )
        if any(g.pad) and any(r > q for r, q in zip(spec.pad_right(), g.pad, strict=True)):
            return None
        if self._onednn_spec != spec:  # made once per geometry and thread count
            self._onednn_spec, self.onednn_pool = spec, onednn.avg_pooling(spec)
        return self.onednn_pool

    def forward(self, xp, bottoms, tops):
        x, y = bottoms[0].data, tops[0].data
        if self.method == "AVE":
            pool = self._onednn_ave(xp, x)
            if pool is not None and x.flags.c_contiguous and y.flags.c_contiguous:
                pool.forward(x, y)
            else:
                ave_pool_forward(xp, x, self.geom, y)
            return
        if self.propagate_down is not None and not any(self.propagate_down) and len(tops) == 1:
            max_pool_values(xp, x, self.geom, y)  # no backward will read the mask (a test net)
            return
        mask = self.internals["mask"].data
        max_pool_forward(xp, x, self.geom, y, mask)
        if len(tops) > 1:
            max_pool_mask_top(xp, mask, self.geom, tops[1].data)

    def backward(self, xp, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        dy, dx = tops[0].diff, bottoms[0].diff
        if self.method == "AVE":
            pool = self._onednn_ave(xp, dx)
            if pool is not None and dy.flags.c_contiguous and dx.flags.c_contiguous:
                pool.backward(dy, dx)
            else:
                ave_pool_backward(xp, dy, self.geom, dx)
        else:
            max_pool_backward(xp, dy, self.internals["mask"].data, self.geom, dx)


@register("SPP")
class SPPLayer(Layer):
    """Spatial pyramid pooling: level l pools into about 2^l × 2^l bins (kernel = stride =
    ceil(H / 2^l), pad = (kernel·2^l − H + 1) // 2), each flattened; levels concatenated on axis 1.

    Top (N, C·Σ bins) — or (N, C, 1, 1) when pyramid_height is 1, as Caffe's single pooling layer.
    """

    backward_reads = frozenset({"top_diff"})  # MAX also reads its internal "mask<level>"

    def setup(self, bottoms, tops):
        p = self.layer_param.spp_param
        self.method = _method(self, p)
        self.height = p.pyramid_height
        if self.height <= 0:
            raise self.error("pyramid_height must be positive")

    def reshape(self, bottoms, tops):
        _check_4d(self, bottoms[0])
        n, c, h, w = bottoms[0].shape
        self.channels, self.levels = c, []
        for level in range(self.height):
            bins = 2**level
            kernel = (math.ceil(h / bins), math.ceil(w / bins))
            pad = tuple((k * bins - size + 1) // 2 for k, size in zip(kernel, (h, w), strict=True))
            if pad[0] >= kernel[0] or pad[1] >= kernel[1]:
                raise self.error(f"level {level}: a {h}x{w} input is too small for {bins} bins")
            geom = pool_geometry((h, w), kernel, pad, kernel)
            self.levels.append(geom)
            if self.method == "MAX":
                self.add_internal(f"mask{level}", (n, c) + geom.out_size, mask_dtype(geom))
        size = sum(c * math.prod(g.out_size) for g in self.levels)
        tops[0].reshape((n, c, 1, 1) if self.height == 1 else (n, size))

    def _level_views(self, array):
        """(geometry, level, view (N, C, oh, ow) of the level's part of the flat top array)."""
        flat = array.reshape(array.shape[0], -1)
        start = 0
        for level, geom in enumerate(self.levels):
            stop = start + self.channels * math.prod(geom.out_size)
            # Splitting the contiguous last axis of a slice: always a view, so writes land in array.
            view = flat[:, start:stop].reshape(flat.shape[:1] + (self.channels,) + geom.out_size)
            yield geom, level, view
            start = stop

    def forward(self, xp, bottoms, tops):
        x = bottoms[0].data
        for geom, level, y in self._level_views(tops[0].data):
            if self.method == "AVE":
                ave_pool_forward(xp, x, geom, y)
            else:
                max_pool_forward(xp, x, geom, y, self.internals[f"mask{level}"].data)

    def backward(self, xp, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        dx = bottoms[0].diff
        dx[...] = 0
        for geom, level, dy in self._level_views(tops[0].diff):
            if self.method == "AVE":
                ave_pool_backward(xp, dy, geom, dx, accumulate=True)
            else:
                mask = self.internals[f"mask{level}"].data
                max_pool_backward(xp, dy, mask, geom, dx, accumulate=True)
