"""oneDNN's 2-D average pooling, forward and backward, on Caffe's NCHW arrays."""

from __future__ import annotations

from typing import NamedTuple

from geeps_net.onednn import capi
from geeps_net.onednn.primitives import Primitives, make, pad_right


class PoolSpec(NamedTuple):
    """One 2-D average pooling: batch, channels, input and output sizes, kernel, stride, left
    padding, whether a window's divisor counts the padding it covers, and the OpenMP threads
    (see ConvSpec). Caffe's AVE divides by the window clipped to the padded input: that is
    oneDNN's exclude-padding without padding, include-padding when no window reaches past the
    padding; other cases stay with the caller's own kernel."""

    num: int
    channels: int
    in_size: tuple[int, int]
    out_size: tuple[int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]
    include_padding: bool
    threads: int

    def pad_right(self) -> tuple[int, int]:
        """The right padding that gives this output size (ceil mode reaches past the input)."""
        return pad_right(self.in_size, self.out_size, self.kernel, self.stride, self.pad, (1, 1))


class AvgPooling2d(Primitives):
    """oneDNN's average pooling forward and backward for one PoolSpec, on Caffe's NCHW arrays
    in place (no reorders: its plain-layout kernels measured 0.29 ms against 1.13 for NumPy's on
    CIFAR-10 quick's pool2)."""

    def __init__(self, lib: capi.Library, spec: PoolSpec) -> None:
        super().__init__(lib, spec.threads)
        self.spec = spec
        x = self._md((spec.num, spec.channels) + spec.in_size, capi.TAG_ABCD)
        y = self._md((spec.num, spec.channels) + spec.out_size, capi.TAG_ABCD)
        alg = (
            capi.POOL_AVG_INCLUDE_PADDING if spec.include_padding else capi.POOL_AVG_EXCLUDE_PADDING
        )
        geometry = (
            capi.Dims(*spec.stride),
            capi.Dims(*spec.kernel),
            capi.Dims(0, 0),
            capi.Dims(*spec.pad),
            capi.Dims(*spec.pad_right()),
        )
        fwd_pd = self._pd(
            "dnnl_pooling_forward_primitive_desc_create",
            *(capi.FORWARD_TRAINING, alg, x, y, *geometry, None),
        )
        bwd_pd = self._pd(
            "dnnl_pooling_backward_primitive_desc_create", *(alg, x, y, *geometry, fwd_pd, None)
        )
        self.fwd, self.bwd = self._primitive(fwd_pd), self._primitive(bwd_pd)
        self.x, self.y = self.memory(x, capi.vp(None)), self.memory(y, capi.vp(None))

    def forward(self, x, y) -> None:
        """y = the window averages of x."""
        self._set_threads(self.threads)
        self._execute(
            self.fwd, [(capi.ARG_SRC, self._bind(self.x, x)), (capi.ARG_DST, self._bind(self.y, y))]
        )

    def backward(self, dy, dx) -> None:
        """dx = each window's dy shared out over the window (dx overwritten)."""
        self._set_threads(self.threads)
        args = [
            (capi.ARG_DIFF_DST, self._bind(self.y, dy)),
            (capi.ARG_DIFF_SRC, self._bind(self.x, dx)),
        ]
        self._execute(self.bwd, args)


def avg_pooling(spec: PoolSpec) -> AvgPooling2d | None:
    """oneDNN's average pooling for `spec`, or None (as convolution())."""
    return make(AvgPooling2d, spec)
