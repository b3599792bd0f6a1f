"""Array-module selection: NumPy on the CPU, CuPy on a GPU, one kernel source for both.

Layers receive `xp` explicitly; code that only holds an array asks `get_array_module(a)`.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor

import numpy

from geeps_net.errors import GeepsError

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
        raise GeepsError(f"-gpu {gpu}: CuPy with a CUDA device is not available here")
    cupy.cuda.Device(gpu).use()
    return cupy


def set_threads(n: int | None) -> None:
    """Limit every BLAS and OpenMP thread pool loaded in this process to `n` threads (None or
    0: leave them as they are), and run layers' image chunks on `n` threads (split_work). Call
    it once at start-up, before the first iteration: the limit holds process-wide until changed
    (threadpoolctl.threadpool_limits, not used as a context)."""
    if not n:
        return
    if n < 0:
        raise ValueError(f"threads must be positive, got {n}")
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=n)
    if _chunk_threads.cache_info().currsize:  # made with the old count: replace it
        pool = _chunk_threads().pool
        if pool is not None:
            pool.shutdown(wait=False)
        _chunk_threads.cache_clear()


class _ChunkThreads:
    """`n` threads for split_work, and the BLAS control that makes each thread's GEMMs
    single-threaded while they run (two threads each asking BLAS for two would oversubscribe)."""

    def __init__(self, n: int) -> None:
        from threadpoolctl import ThreadpoolController

        self.n = n
        self.blas = ThreadpoolController().select(user_api="blas")
        self.pool = ThreadPoolExecutor(n, thread_name_prefix="geeps-chunks") if n > 1 else None


@functools.cache
def _chunk_threads() -> _ChunkThreads:
    """As many chunk threads as BLAS has (its default, or what set_threads gave it). Made once
    per process, like BLAS's own pool: making one per call costs more than a small layer."""
    from threadpoolctl import threadpool_info

    blas = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
    return _ChunkThreads(max(blas, default=1))


def split_work(xp, work, items: list) -> list:
    """[work(part) for part in parts]: `items` cut into one contiguous part per CPU thread.

    Convolution's NumPy copies (im2col, transposes) use one core while only its GEMMs use BLAS's
    threads; running independent image chunks on their own threads, each with single-threaded
    BLAS, keeps every core busy through the copies too (measured below in docs/benchmarks.md).
    `work` must only write what its part owns; it returns a partial result (e.g. a weight
    gradient over its images) for the caller to combine, and must not call split_work itself.
    CuPy, one thread or one item: one part, in the caller's thread.
    """
    threads = _chunk_threads() if xp is numpy else None
    if threads is None or threads.pool is None or len(items) < 2:
        return [work(items)]
    n = min(threads.n, len(items))
    bounds = [len(items) * i // n for i in range(n + 1)]
    parts = [items[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    with threads.blas.limit(limits=1):
        return list(threads.pool.map(work, parts))


def to_host(a) -> numpy.ndarray:
    """A NumPy copy (or the array itself) of a NumPy or CuPy array."""
    if cupy is not None and isinstance(a, cupy.ndarray):
        return a.get()
    return numpy.asarray(a)


# Elements of the scratch block of matmul_add on the CPU (2 MiB in float32): small enough to come
# from malloc's heap and stay in cache, large enough for the GEMM to run at speed.
ACCUMULATE_BLOCK = 1 << 19


def matmul_add(xp, a, b, out) -> None:
    """out (M, N) += a (M, K) @ b (K, N), as Caffe's gemm with beta = 1 (gradient accumulation).

    On the CPU it goes by blocks of rows through a small scratch buffer: a whole (M, N) temporary
    is fresh memory every call (page faults), then a second pass over `out`; for AlexNet's fc6
    weight gradient (37.7 M elements) the blocks are about 5x faster. A GPU takes it whole.
    """
    if xp is not numpy or out.size <= ACCUMULATE_BLOCK:
        out += xp.matmul(a, b)
        return
    rows = max(1, ACCUMULATE_BLOCK // out.shape[1])
    scratch = numpy.empty((rows, out.shape[1]), dtype=out.dtype)
    for r in range(0, out.shape[0], rows):
        part = scratch[: min(rows, out.shape[0] - r)]
        numpy.matmul(a[r : r + rows], b, out=part)
        out[r : r + rows] += part


def scatter_add(xp, target, indices, values) -> None:
    """target[indices] += values, accumulating repeated indices (numpy.add.at / cupyx)."""
    if xp is numpy:
        numpy.add.at(target, indices, values)
    else:  # pragma: no cover - GPU only
        import cupyx

        cupyx.scatter_add(target, indices, values)
