"""Convolution on oneDNN (geeps_net/onednn): the path ConvolutionLayer takes for 2-D float32
convolutions on the CPU, unless its convolution_param asks for `engine: CAFFE` (in Caffe, the
choice between its own im2col kernel and cuDNN)."""

from __future__ import annotations

import numpy

from geeps_net import onednn
from geeps_net.backend import chunk_threads
from geeps_net.proto import caffe_pb2


class OneDNNConvolution:
    """Forward and backward of a Convolution layer through oneDNN (a mixin: it uses the layer's
    geom, num, channels, num_output, num_spatial, group, bias_term, blobs, layer_param)."""

    # The oneDNN primitives the layer runs on (None: im2col), made by _onednn on first use.
    onednn_conv: onednn.Convolution2d | None = None
    _onednn_spec: onednn.ConvSpec | None = None

    def _onednn(self, xp, dtype):
        """oneDNN's primitives for this geometry, or None: then im2col and GEMMs. oneDNN takes
        2-D float32 convolutions on the CPU unless convolution_param's engine is CAFFE."""
        p = self.layer_param.convolution_param
        if xp is not numpy or dtype != numpy.float32 or self.num_spatial != 2:
            return None
        if p.engine == caffe_pb2.ConvolutionParameter.CAFFE:
            return None
        g = self.geom
        spec = onednn.ConvSpec(
            self.num,
            self.channels,
            g.in_size,
            self.num_output,
            g.out_size,
            g.kernel,
            g.stride,
            g.pad,
            g.dilation,
            self.group,
            self.bias_term,
            chunk_threads(xp),
        )
        if self._onednn_spec != spec:  # made once per geometry and thread count
            self._onednn_spec, self.onednn_conv = spec, onednn.convolution(spec)
        return self.onednn_conv

    def _forward_onednn(self, conv, bottoms, tops) -> None:
        """Each top from its bottom through `conv` (_onednn's)."""
        g = self.geom
        w = _contiguous(self.blobs[0].data)
        b = _contiguous(self.blobs[1].data) if self.bias_term else None
        for bottom, top in zip(bottoms, tops, strict=True):
            x = _contiguous(bottom.data).reshape((self.num, self.channels) + g.in_size)
            conv.forward(x, w, b, top.data.reshape((self.num, self.num_output) + g.out_size))

    def _backward_onednn(self, conv, tops, propagate_down, bottoms) -> None:
        """oneDNN writes each bottom's weight gradients into scratch arrays; they are added to
        the blobs' diffs, which accumulate (iter_size, shared weights, several bottoms)."""
        g = self.geom
        w = _contiguous(self.blobs[0].data)
        dw = numpy.empty_like(w)
        db = numpy.empty(self.num_output, w.dtype) if self.bias_term else None
        for top, down, bottom in zip(tops, propagate_down, bottoms, strict=True):
            x = _contiguous(bottom.data).reshape((self.num, self.channels) + g.in_size)
            dy = _contiguous(top.diff).reshape((self.num, self.num_output) + g.out_size)
            dx = bottom.diff.reshape(x.shape) if down else None
            conv.backward(x, w, dy, dx, dw, db)
            self.blobs[0].diff += dw
            if self.bias_term:
                self.blobs[1].diff += db


def _contiguous(a):
    """`a` itself when C-contiguous (blobs are), else a contiguous copy: oneDNN reads and
    writes plain layouts by address."""
    return a if a.flags.c_contiguous else numpy.ascontiguousarray(a)
