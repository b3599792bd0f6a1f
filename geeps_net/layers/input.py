"""Layers with no bottoms: Input (filled from outside), DummyData (filled by fillers), Parameter
(a learnable blob as a top) and MemoryData (arrays handed over by `set_input_arrays`, as in
pycaffe)."""

from __future__ import annotations

import logging

import numpy

from geeps_net.fillers import FILLERS, fill
from geeps_net.layer import Layer, register
from geeps_net.proto import caffe_pb2

log = logging.getLogger(__name__)


def _one_or_each(layer: Layer, items, count: int, what: str) -> list:
    """Caffe's rule for repeated fields given once (for every top) or once per top."""
    items = list(items)
    if len(items) == 1:
        return items * count
    if len(items) != count:
        raise layer.error(f"{what} must be given once or once per top ({count}), got {len(items)}")
    return items


@register("Input")
class InputLayer(Layer):
    """Tops shaped by input_param.shape (one shape for all tops, or one per top); their data is
    written from outside (Net.forward(**inputs), the PS, the user), so forward does nothing."""

    num_bottoms = 0
    num_tops = (1, None)
    has_backward = False
    backward_reads = frozenset()

    def setup(self, bottoms, tops):
        shapes = self.layer_param.input_param.shape
        if shapes:
            for top, shape in zip(
                tops, _one_or_each(self, shapes, len(tops), "shape"), strict=True
            ):
                top.reshape(shape.dim)

    def reshape(self, bottoms, tops):
        pass  # shaped in setup or from outside, as Caffe's Input: a reshape here would undo that

    def forward(self, xp, bottoms, tops):
        pass


@register("DummyData")
class DummyDataLayer(Layer):
    """Tops of `shape` (or legacy num/channels/height/width, each once or per top) filled every
    forward by data_filler (once or per top; default constant 0); random ones draw from self.rng."""

    num_bottoms = 0
    num_tops = (1, None)
    has_backward = False
    backward_reads = frozenset()

    def setup(self, bottoms, tops):
        param = self.layer_param.dummy_data_param
        n = len(tops)
        fillers = list(param.data_filler) or [caffe_pb2.FillerParameter(type="constant", value=0)]
        self.data_fillers = _one_or_each(self, fillers, n, "data_filler")
        for filler in self.data_fillers:
            if filler.type not in FILLERS:
                raise self.error(f"unknown filler type {filler.type!r}")
        legacy = [param.num, param.channels, param.height, param.width]
        if any(legacy):
            if param.shape:
                raise self.error("both shape and legacy num/channels/height/width were given")
            names = ("num", "channels", "height", "width")
            dims = [_one_or_each(self, f, n, name) for f, name in zip(legacy, names, strict=True)]
            self.shapes = [tuple(d[i] for d in dims) for i in range(n)]
        else:
            if not param.shape:
                raise self.error("needs shape (or legacy num/channels/height/width)")
            self.shapes = [tuple(s.dim) for s in _one_or_each(self, param.shape, n, "shape")]
        for top, shape in zip(tops, self.shapes, strict=True):
            top.reshape(shape)

    def reshape(self, bottoms, tops):
        pass  # shaped once in setup, as Caffe's DummyData

    def forward(self, xp, bottoms, tops):
        # Constant tops are refilled too: a PS-bound top need not keep last iteration's values.
        for top, filler in zip(tops, self.data_fillers, strict=True):
            top.data[...] = xp.asarray(fill(filler, top.shape, self.rng, top.dtype))


@register("Parameter")
class ParameterLayer(Layer):
    """Top = learned blob 0 of parameter_param.shape (zeros unless loaded); its gradient is the
    top's diff (Caffe shares data and diff between the two)."""

    num_bottoms = 0
    backward_reads = frozenset({"top_diff"})

    def setup(self, bottoms, tops):
        shape = tuple(self.layer_param.parameter_param.shape.dim)
        self.add_param(shape)
        tops[0].reshape(shape)

    def reshape(self, bottoms, tops):
        tops[0].reshape(self.blobs[0].shape)

    def forward(self, xp, bottoms, tops):
        tops[0].data[...] = self.blobs[0].data

    def backward(self, xp, tops, propagate_down, bottoms):
        self.blobs[0].diff[...] += tops[0].diff


@register("MemoryData")
class MemoryDataLayer(Layer):
    """Tops data (batch_size, channels, height, width) and label (batch_size) served from arrays
    given by `set_input_arrays`, batch_size items per forward, cycling. No transformation."""

    num_bottoms = 0
    num_tops = 2
    has_backward = False
    backward_reads = frozenset()

    def setup(self, bottoms, tops):
        p = self.layer_param.memory_data_param
        self.batch_size, self.item_shape = p.batch_size, (p.channels, p.height, p.width)
        if self.batch_size * p.channels * p.height * p.width == 0:
            raise self.error("batch_size, channels, height and width must be given and positive")
        if self.layer_param.HasField("transform_param"):
            log.warning('layer "%s": MemoryData does not transform array data', self.name)
        tops[0].reshape((self.batch_size, *self.item_shape))
        tops[1].reshape((self.batch_size,))
        self.data_array = self.label_array = None
        self.position = 0

    def set_input_arrays(self, data, labels) -> None:
        """Serve `data` (n, channels, height, width) and `labels` (n, or n x 1 x 1 x 1), n a
        multiple of batch_size, from the next forward on; both are kept as host float32."""
        data = numpy.ascontiguousarray(data, dtype=numpy.float32)
        labels = numpy.ascontiguousarray(labels, dtype=numpy.float32)
        n = data.shape[0] if data.ndim else 0
        if data.ndim != 4 or data.shape[1:] != self.item_shape:
            raise self.error(f"data array shape {data.shape}: want (n, *{self.item_shape})")
        if labels.ndim == 0 or labels.shape[0] != n or labels.size != n:
            raise self.error(f"labels shape {labels.shape}: want ({n},) to match the data")
        if n == 0 or n % self.batch_size:
            raise self.error(
                f"{n} items: must be a positive multiple of batch_size {self.batch_size}"
            )
        self.data_array, self.label_array, self.position = data, labels.reshape(-1), 0

    def reshape(self, bottoms, tops):
        pass  # shaped in setup

    def forward(self, xp, bottoms, tops):
        if self.data_array is None:
            raise self.error("needs set_input_arrays(data, labels) before the first forward")
        batch = slice(self.position, self.position + self.batch_size)
        tops[0].data[...] = xp.asarray(self.data_array[batch])
        tops[1].data[...] = xp.asarray(self.label_array[batch])
        self.position = (self.position + self.batch_size) % self.data_array.shape[0]
