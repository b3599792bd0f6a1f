"""Array-module selection: NumPy on the CPU, CuPy on a GPU, one kernel source for both.

Layers receive `xp` explicitly; code that only holds an array asks `get_array_module(a)`.
"""

from __future__ import annotations

import functools

import numpy

try:  # CuPy is optional (extra `gpu`); everything runs on NumPy without it.
    import cupy
except ImportError:  # pragma: no cover - depends on the machine
    cupy = None


def get_array_module(*arrays):
    """Return cupy if any argument is a CuPy array, else numpy (Chainer's rule)."""
    if cupy is not None:
        return cupy.get_array_module(*arrays)
    return numpy


@functools.cache
def gpu_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    if cupy is None:
        return False
    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no driver, no device: the CPU path still works
        return False


def array_module(gpu: int | None):
    """numpy for `gpu=None`, else cupy with device `gpu` made current."""
    if gpu is None:
        return numpy
    if not gpu_available():
        raise RuntimeError(f"-gpu {gpu}: CuPy with a CUDA device is not available here")
    cupy.cuda.Device(gpu).use()
    return cupy


def to_host(a) -> numpy.ndarray:
    """A NumPy copy (or the array itself) of a NumPy or CuPy array."""
    if cupy is not None and isinstance(a, cupy.ndarray):
        return a.get()
    return numpy.asarray(a)


def scatter_add(xp, target, indices, values) -> None:
    """target[indices] += values, accumulating repeated indices (numpy.add.at / cupyx)."""
    if xp is numpy:
        numpy.add.at(target, indices, values)
    else:  # pragma: no cover - GPU only
        import cupyx

        cupyx.scatter_add(target, indices, values)
