"""Blob: a named N-d shape with `data` and `diff` views onto buffers it does not own.

Buffers are bound before a layer runs and unbound after, either by `Net` (resident arrays for tests
and
inference) or by the parameter server (device buffers handed out one layer at a time).
"""

from __future__ import annotations

import math

import numpy


class Blob:
    """Shape, dtype and the currently bound `data` / `diff` arrays (None when unbound)."""

    __slots__ = ("name", "shape", "dtype", "data", "diff")

    def __init__(self, name: str, shape=(), dtype="float32") -> None:
        self.name = name
        self.shape = tuple(int(d) for d in shape)
        self.dtype = numpy.dtype(dtype)
        self.data = None
        self.diff = None

    def __repr__(self) -> str:
        return f"Blob({self.name!r}, {self.shape}, {self.dtype})"

    @property
    def count(self) -> int:
        """Number of elements (1 for a scalar blob of shape ())."""
        return math.prod(self.shape)

    @property
    def num_axes(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return self.count * self.dtype.itemsize

    def canonical_axis(self, axis: int) -> int:
        """Caffe's CanonicalAxisIndex: negative axes count from the end; out of range is an
        error."""
        if not -self.num_axes <= axis < max(self.num_axes, 1):
            raise ValueError(
                f"axis {axis} out of range for blob {self.name!r} of shape {self.shape}"
            )
        return axis % self.num_axes if self.num_axes else 0

    def count_range(self, start: int, end: int | None = None) -> int:
        """Product of shape[start:end] (Caffe's count(start, end))."""
        return math.prod(self.shape[start:end])

    def reshape(self, shape) -> None:
        """Set a new shape; bound arrays of another size are unbound (their owner rebinds)."""
        shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise ValueError(f"blob {self.name!r}: negative dimension in {shape}")
        if shape != self.shape and self.data is not None:
            if self.data.size == math.prod(shape):
                self.data = self.data.reshape(shape)
                self.diff = None if self.diff is None else self.diff.reshape(shape)
            else:
                self.data = self.diff = None
        self.shape = shape

    def bind(self, data, diff=None) -> None:
        """Point `data` (and `diff`) at arrays of this blob's shape, owned by someone else."""
        self.data = data.reshape(self.shape)
        self.diff = None if diff is None else diff.reshape(self.shape)

    def unbind(self) -> None:
        self.data = self.diff = None
