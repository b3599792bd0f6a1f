"""Caffe's DataTransformer, vectorised over a batch: crop, mirror, then (pixel - mean) * scale.

Per item, in Caffe's order: a crop of crop_size x crop_size (TRAIN: random offsets, TEST: the
centre), a left-right mirror (TRAIN only, probability 0.5, when `mirror` is set), then the value
(pixel - mean) * scale, where mean is the mean file at the pixel's uncropped position or
mean_value[c] (one value serves every channel).
"""

from __future__ import annotations

import math

import numpy
from google.protobuf.message import DecodeError
from numpy.lib.stride_tricks import sliding_window_view

from geeps_net.errors import DataError
from geeps_net.proto import caffe_pb2

TRAIN = caffe_pb2.TRAIN
_LEGACY_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")


def transform_param_of(layer_param, legacy) -> caffe_pb2.TransformationParameter:
    """transform_param, plus the deprecated fields of data_param & co (as Caffe's upgrade)."""
    merged = caffe_pb2.TransformationParameter()
    merged.CopyFrom(layer_param.transform_param)
    for field in _LEGACY_TRANSFORM_FIELDS:
        if legacy.HasField(field) and not merged.HasField(field):
            setattr(merged, field, getattr(legacy, field))
    return merged


def read_mean_file(path) -> numpy.ndarray:
    """The (C, H, W) float32 mean stored in a binaryproto BlobProto (shape or legacy num/c/h/w)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"mean_file {path}: cannot read: {e.strerror or e}") from None
    blob = caffe_pb2.BlobProto()
    try:
        blob.ParseFromString(raw)
    except DecodeError:
        raise DataError(f"mean_file {path}: not a binaryproto BlobProto") from None
    if blob.HasField("shape"):
        dims = tuple(blob.shape.dim)
    else:
        dims = (blob.num, blob.channels, blob.height, blob.width)
    values = numpy.asarray(blob.data if len(blob.data) else blob.double_data, numpy.float32)
    chw = (1, 1, 1, *dims)[-3:]
    if len(dims) < 1 or math.prod(dims) != values.size or values.size != math.prod(chw):
        raise DataError(f"mean_file {path}: shape {dims} does not fit {values.size} values")
    return values.reshape(chw)


class Transformer:
    """Applies a TransformationParameter to batches (N, C, H, W) of uint8 or float pixels.

    `rng` (a numpy Generator) draws, per batch, the mirror flags then the crop offsets. The output
    is (N, C, H', W') in `dtype`, H' = W' = crop_size when cropping.
    """

    def __init__(self, transform_param, phase: int, rng, dtype="float32") -> None:
        p = transform_param
        self.phase, self.rng, self.dtype = phase, rng, numpy.dtype(dtype)
        self.crop_size, self.scale = int(p.crop_size), float(p.scale)
        self.mirror = bool(p.mirror) and phase == TRAIN
        if p.force_color and p.force_gray:
            raise DataError("transform_param: cannot set both force_color and force_gray")
        self.force_color, self.force_gray = bool(p.force_color), bool(p.force_gray)
        if p.mean_file and len(p.mean_value):
            raise DataError("transform_param: cannot set both mean_file and mean_value")
        self.mean_file = p.mean_file
        self.mean = read_mean_file(p.mean_file).astype(self.dtype) if p.mean_file else None
        self.mean_values = numpy.asarray(p.mean_value, self.dtype) if len(p.mean_value) else None

    def output_shape(self, shape) -> tuple[int, int, int]:
        """(C, H', W') for items (C, H, W); raises DataError when the options do not fit them."""
        c, h, w = shape
        if self.crop_size and (self.crop_size > h or self.crop_size > w):
            raise DataError(f"crop_size {self.crop_size} is larger than the data ({h} x {w})")
        if self.mean is not None and self.mean.shape != (c, h, w):
            raise DataError(
                f"mean_file {self.mean_file}: mean shape {self.mean.shape} differs from the data's "
                f"{(c, h, w)}"
            )
        if self.mean_values is not None and self.mean_values.size not in (1, c):
            raise DataError(
                f"{self.mean_values.size} mean_value(s) for {c} channels (give 1 or {c})"
            )
        if self.crop_size:
            return c, self.crop_size, self.crop_size
        return c, h, w

    def __call__(self, batch: numpy.ndarray) -> numpy.ndarray:
        """Transformed copy of `batch` (N, C, H, W); draws randomness from self.rng (TRAIN)."""
        n, c, h, w = batch.shape
        self.output_shape((c, h, w))
        flip = self.rng.random(n) < 0.5 if self.mirror else None
        x = batch.astype(self.dtype)
        if self.mean is not None:
            x -= self.mean
        elif self.mean_values is not None:
            x -= (
                self.mean_values.reshape(-1, 1, 1)
                if self.mean_values.size > 1
                else self.mean_values
            )
        if self.scale != 1:
            x *= self.dtype.type(self.scale)
        if self.crop_size:
            x = self._crop(x)
        if flip is not None and flip.any():
            x[flip] = x[flip][..., ::-1]
        return x

    def _crop(self, x: numpy.ndarray) -> numpy.ndarray:
        n, _, h, w = x.shape
        k = self.crop_size
        if self.phase != TRAIN:
            top, left = (h - k) // 2, (w - k) // 2
            return numpy.ascontiguousarray(x[:, :, top : top + k, left : left + k])
        rows = self.rng.integers(0, h - k + 1, n)
        cols = self.rng.integers(0, w - k + 1, n)
        windows = sliding_window_view(x, (k, k), axis=(2, 3))  # (N, C, h-k+1, w-k+1, k, k), no copy
        return windows[numpy.arange(n), :, rows, cols]  # advanced axes first: (N, C, k, k)
