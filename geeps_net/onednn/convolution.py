"""oneDNN's 2-D convolution: forward, data gradient and weight gradient of one geometry."""

from __future__ import annotations

import ctypes
from typing import NamedTuple

from geeps_net.onednn import capi
from geeps_net.onednn.primitives import Port, Primitives, make, pad_right

# Activations of convolutions whose outputs per group fill whole 16-lane blocks go in the
# blocked layout oneDNN picks; others channels-last (its brgconv kernels), where blocks would
# pad them. LeNet's conv2 (20 -> 50 channels, two threads, forward / both gradients, ms):
# blocked 1.82 / 4.03, channels-last 1.29 / 2.83; CIFAR-10 quick's conv2 (32 -> 32): blocked
# 4.9 / 9.9, channels-last 5.2-5.5 / 11.5.
OUTPUT_BLOCK = 16


class ConvSpec(NamedTuple):
    """One 2-D convolution: batch, channels, input and output sizes, kernel, stride, padding
    (left per axis), dilation (Caffe's: 1 = none), groups, whether it has a bias, and the
    OpenMP threads its primitives run on. oneDNN splits the work (and the weight gradient's
    sums) for the threads there are when a primitive is made, so the count is part of what
    makes one: made for one count and run on another, two identical runs could differ in the
    last bits."""

    num: int
    channels: int
    in_size: tuple[int, int]
    num_output: int
    out_size: tuple[int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]
    dilation: tuple[int, int]
    group: int
    bias: bool
    threads: int

    def pad_right(self) -> tuple[int, int]:
        """oneDNN's right padding: what makes its output size Caffe's (floor division may drop
        the last window, so this can be below the left padding)."""
        return pad_right(self.in_size, self.out_size, self.kernel, self.stride, self.pad,
                          self.dilation)  # fmt: skip


class Convolution2d(Primitives):
    """The oneDNN primitives of one convolution geometry (ConvSpec): forward, data gradient and
    weight gradients. Arrays in Caffe's layouts: x (N, C, H, W), weights (O, C/group, kh, kw),
    bias (O,), y (N, O, out_h, out_w), all C-contiguous float32.

    Calls on one object must not overlap (its blocked copies are shared between them); a layer
    owns its own."""

    def __init__(self, lib: capi.Library, spec: ConvSpec) -> None:
        super().__init__(lib, spec.threads)
        self.spec = spec
        wanted = self._descriptors()
        fwd_pd, data_pd, weights_pd = self._pds = self._primitive_descs(*wanted)
        self.fwd, self.bwd_data, self.bwd_weights = map(self._primitive, self._pds)
        self.ports = {
            "x": Port(self, "x", fwd_pd, capi.Q_SRC, into=True),
            "w": Port(self, "w", fwd_pd, capi.Q_WEIGHTS, into=True),
            "y": Port(self, "y", fwd_pd, capi.Q_DST, into=False),
            "bd_dy": Port(self, "y", data_pd, capi.Q_DIFF_DST, into=True),
            "bd_w": Port(self, "w", data_pd, capi.Q_WEIGHTS, into=True),
            "bd_dx": Port(self, "x", data_pd, capi.Q_DIFF_SRC, into=False),
            "bw_x": Port(self, "x", weights_pd, capi.Q_SRC, into=True),
            "bw_dy": Port(self, "y", weights_pd, capi.Q_DIFF_DST, into=True),
            "bw_dw": Port(self, "w", weights_pd, capi.Q_DIFF_WEIGHTS, into=False),
        }
        self.bias = self.memory(self.plain["b"], capi.vp(None)) if spec.bias else None

    def _descriptors(self):
        """Sets self.plain, the memory descriptors of Caffe's layouts (x, y, w, b); returns
        those the primitives are asked for: x, w, y in the layout oneDNN may choose
        (activations channels-last when blocks would pad them, see OUTPUT_BLOCK)."""
        s = self.spec
        n, c, o, g = s.num, s.channels, s.num_output, s.group
        if g == 1:
            w_dims, w_tag = (o, c) + s.kernel, capi.TAG_ABCD
        else:
            w_dims, w_tag = (g, o // g, c // g) + s.kernel, capi.TAG_ABCDE
        x_dims, y_dims = (n, c) + s.in_size, (n, o) + s.out_size
        self.plain = {
            "x": self._md(x_dims, capi.TAG_ABCD),
            "y": self._md(y_dims, capi.TAG_ABCD),
            "w": self._md(w_dims, w_tag),
            "b": self._md((o,), capi.TAG_A),
        }
        layout = capi.TAG_ANY if (o // g) % OUTPUT_BLOCK == 0 else capi.TAG_NHWC
        return self._md(x_dims, layout), self._md(w_dims, capi.TAG_ANY), self._md(y_dims, layout)

    def _primitive_descs(self, x, w, y):
        """The forward, data-gradient and weight-gradient primitive descriptors."""
        s = self.spec
        geometry = (
            capi.Dims(*s.stride),
            capi.Dims(*(d - 1 for d in s.dilation)),  # oneDNN counts the gaps: 0 = dense
            capi.Dims(*s.pad),
            capi.Dims(*s.pad_right()),
        )
        bias = self.plain["b"] if s.bias else capi.vp(None)
        fwd = self._pd(
            "dnnl_convolution_forward_primitive_desc_create",
            *(capi.FORWARD_TRAINING, capi.CONV_DIRECT, x, w, bias, y, *geometry, None),
        )
        data = self._pd(
            "dnnl_convolution_backward_data_primitive_desc_create",
            *(capi.CONV_DIRECT, x, w, y, *geometry, fwd, None),
        )
        weights = self._pd(
            "dnnl_convolution_backward_weights_primitive_desc_create",
            *(capi.CONV_DIRECT, x, w, bias, y, *geometry, fwd, None),
        )
        return fwd, data, weights

    def implementation(self) -> str:
        """oneDNN's name for the forward's kernel (e.g. 'jit:avx512_core')."""
        out = ctypes.c_char_p()
        query = self.lib.lib.dnnl_primitive_desc_query
        query(self._pds[0], capi.QUERY_IMPL_INFO, 0, ctypes.byref(out))
        return (out.value or b"").decode()

    def buffer_bytes(self) -> int:
        """Host bytes oneDNN holds for this geometry between calls: the arrays in the layouts
        its primitives work in (made once, not per call), and the largest scratchpad."""
        size = self.lib.lib.dnnl_memory_desc_get_size
        inner = sum(size(md) for kind in self._inner.values() for md, _ in kind)
        query = self.lib.lib.dnnl_primitive_desc_query_md
        return inner + max(size(capi.vp(query(pd, capi.Q_SCRATCHPAD, 0))) for pd in self._pds)

    def forward(self, x, w, b, y) -> None:
        """y = conv(x, w) + b (b None without a bias term)."""
        self._set_threads(self.threads)
        p = self.ports
        args = [
            (capi.ARG_SRC, self._into(p["x"], x)),
            (capi.ARG_WEIGHTS, self._into(p["w"], w)),
            (capi.ARG_DST, self._bound(p["y"], y)),
        ]
        if self.spec.bias:
            args.append((capi.ARG_BIAS, self._bind(self.bias, b)))
        self._execute(self.fwd, args)
        self._out(p["y"])

    def backward(self, x, w, dy, dx, dw, db) -> None:
        """The gradients of y = conv(x, w) + b for top diff dy: dw and db (None without a bias
        term), overwritten (the caller adds them to the blobs' diffs), and dx when not None."""
        self._set_threads(self.threads)
        p = self.ports
        dy_inner = self._into(p["bw_dy"], dy)
        args = [
            (capi.ARG_SRC, self._into(p["bw_x"], x)),
            (capi.ARG_DIFF_DST, dy_inner),
            (capi.ARG_DIFF_WEIGHTS, self._bound(p["bw_dw"], dw)),
        ]
        if self.spec.bias:
            args.append((capi.ARG_DIFF_BIAS, self._bind(self.bias, db)))
        self._execute(self.bwd_weights, args)
        self._out(p["bw_dw"])
        if dx is None:
            return
        # Both gradients usually take dy in one layout: then its blocked copy is already made.
        same = p["bd_dy"].inner.value == dy_inner.value and p["bd_dy"].reorder is not None
        args = [
            (capi.ARG_DIFF_DST, dy_inner if same else self._into(p["bd_dy"], dy)),
            (capi.ARG_WEIGHTS, self._into(p["bd_w"], w)),
            (capi.ARG_DIFF_SRC, self._bound(p["bd_dx"], dx)),
        ]
        self._execute(self.bwd_data, args)
        self._out(p["bd_dx"])


def convolution(spec: ConvSpec) -> Convolution2d | None:
    """oneDNN primitives for `spec`, or None when the library is unavailable or has no
    implementation for it (the caller keeps its own kernels)."""
    return make(Convolution2d, spec)
