"""Caffe's fillers: initial values for learnable blobs, drawn on the host from a seeded generator.

Each filler maps (FillerParameter, shape, numpy.random.Generator) to a NumPy array; the caller
moves it to
wherever the blob lives (resident array or PS table).
"""

from __future__ import annotations

import math

import numpy

from geeps_net.errors import NetError


def _fans(shape) -> tuple[int, int]:
    count = math.prod(shape)
    fan_in = count // shape[0] if shape and shape[0] else count
    fan_out = count // shape[1] if len(shape) > 1 and shape[1] else count
    return fan_in, fan_out


def _variance_n(param, shape) -> float:
    fan_in, fan_out = _fans(shape)
    norm = param.variance_norm  # FAN_IN=0, FAN_OUT=1, AVERAGE=2
    return {0: fan_in, 1: fan_out, 2: (fan_in + fan_out) / 2.0}[norm]


def constant(param, shape, rng):
    """All elements = value."""
    return numpy.full(shape, param.value, dtype=numpy.float64)


def uniform(param, shape, rng):
    """U[min, max]."""
    return rng.uniform(param.min, param.max, size=shape)


def gaussian(param, shape, rng):
    """N(mean, std); with sparse >= 0 each element survives with probability sparse / shape[0]."""
    x = rng.normal(param.mean, param.std, size=shape)
    if param.sparse >= 0:
        num_outputs = shape[0] if shape else 1
        keep = rng.random(size=shape) < param.sparse / num_outputs
        x *= keep
    return x


def positive_unitball(param, shape, rng):
    """U[0, 1], then each of the shape[0] rows divided by its sum."""
    x = rng.random(size=shape)
    rows = x.reshape(shape[0], -1)
    rows /= rows.sum(axis=1, keepdims=True)
    return x


def xavier(param, shape, rng):
    """U[-a, a] with a = sqrt(3 / n), n from variance_norm."""
    a = math.sqrt(3.0 / _variance_n(param, shape))
    return rng.uniform(-a, a, size=shape)


def msra(param, shape, rng):
    """N(0, 2 / n), n from variance_norm."""
    return rng.normal(0.0, math.sqrt(2.0 / _variance_n(param, shape)), size=shape)


def bilinear(param, shape, rng):
    """Bilinear upsampling kernel for a 4-D square-kernel blob (Deconvolution initialisation)."""
    if len(shape) != 4 or shape[2] != shape[3]:
        raise NetError(f"bilinear filler needs a 4-D blob with a square kernel, got {tuple(shape)}")
    k = shape[3]
    f = math.ceil(k / 2.0)
    c = (k - 1) / (2.0 * f)
    t = 1 - numpy.abs(numpy.arange(k) / f - c)
    return numpy.broadcast_to(numpy.outer(t, t), shape).copy()


FILLERS = {
    "constant": constant,
    "uniform": uniform,
    "gaussian": gaussian,
    "positive_unitball": positive_unitball,
    "xavier": xavier,
    "msra": msra,
    "bilinear": bilinear,
}


def fill(param, shape, rng: numpy.random.Generator, dtype="float32") -> numpy.ndarray:
    """Values of `shape` drawn as FillerParameter `param` says (None = constant 0)."""
    shape = tuple(shape)
    if param is None:
        return numpy.zeros(shape, dtype=dtype)
    try:
        filler = FILLERS[param.type]
    except KeyError:
        known = ", ".join(sorted(FILLERS))
        raise NetError(f"unknown filler type {param.type!r} (known: {known})") from None
    if param.sparse >= 0 and param.type != "gaussian":
        raise NetError(f"filler {param.type!r}: sparse is only supported by the gaussian filler")
    return numpy.asarray(filler(param, shape, rng), dtype=dtype)
