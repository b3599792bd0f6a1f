"""Array-module selection: NumPy on the CPU, CuPy on a GPU, one kernel source for both.

Layers receive `xp` explicitly; code that only holds an array asks `get_array_module(a)`.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from concurrent import futures
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
    """`n` threads for split_work (the caller and n − 1 helpers), and the BLAS control that makes
    each thread's GEMMs single-threaded while they run (two threads each asking BLAS for two
    would oversubscribe the cores)."""

    def __init__(self, n: int) -> None:
        from threadpoolctl import ThreadpoolController

        self.n = n
        self.pool = ThreadPoolExecutor(n - 1, thread_name_prefix="geeps-chunks") if n > 1 else None
        self._blas = ThreadpoolController().select(user_api="blas")
        self._lock, self._active, self._limiter = threading.Lock(), 0, None

    @contextlib.contextmanager
    def single_threaded_blas(self):
        """BLAS on one thread until the last of overlapping callers (several Nets in one
        process) leaves; then its own limit again (nested limit contexts would restore out of
        order and could leave it at one)."""
        with self._lock:
            self._active += 1
            if self._active == 1:
                self._limiter = self._blas.limit(limits=1)
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
                if self._active == 0:
                    self._limiter.restore_original_limits()


@functools.cache
def _chunk_threads() -> _ChunkThreads:
    """As many chunk threads as BLAS has (its default, or what set_threads gave it). Made once
    per process, like BLAS's own pool: making one per call costs more than a small layer."""
    from threadpoolctl import threadpool_info

    blas = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
    return _ChunkThreads(max(blas, default=1))


def chunk_threads(xp) -> int:
    """How many threads split_work runs on with `xp` (1 with CuPy: one stream does it all)."""
    return _chunk_threads().n if xp is numpy else 1


def split_work(xp, work, items: list) -> list:
    """Run work(part) on every CPU thread at once, each part a fixed, contiguous share of
    `items` in order; returns the parts' results in part order, leaving out None.

    Convolution's NumPy copies (im2col, transposes) use one core while only its GEMMs use BLAS's
    threads; running independent image chunks on their own threads, each with single-threaded
    BLAS, keeps every core busy through the copies too. The shares are fixed, not drawn first
    come, first served: `work` sums over its items (e.g. a weight gradient over its images) and
    the caller adds the parts in order, so which items are summed together must not depend on
    timing, or two identical runs would differ in the last bits (DESIGN's bit-identical
    invariant). `work` must only write what its items own and must not call split_work itself.
    CuPy, one thread or one item: one part holding every item, in the caller's thread.
    """
    threads = _chunk_threads() if xp is numpy else None
    if threads is None or threads.pool is None or len(items) < 2:
        return [work(iter(items))]
    n = min(threads.n, len(items))
    bounds = [len(items) * t // n for t in range(n + 1)]
    parts = [items[bounds[t] : bounds[t + 1]] for t in range(n)]
    with threads.single_threaded_blas():
        helpers = [threads.pool.submit(work, iter(part)) for part in parts[1:]]
        try:
            mine = work(iter(parts[0]))  # the caller works too, instead of waiting
        finally:  # never leave helpers writing into arrays after the caller has returned
            futures.wait(helpers)
    results = [mine] + [h.result() for h in helpers]
    return [r for r in results if r is not None]


def to_host(a) -> numpy.ndarray:
    """A NumPy copy (or the array itself) of a NumPy or CuPy array."""
    if cupy is not None and isinstance(a, cupy.ndarray):
        return a.get()
    return numpy.asarray(a)


# Elements of one block of matmul/matmul_add's output on the CPU (2 MiB in float32): small enough
# to come from malloc's heap and stay in cache, large enough for the GEMM to run at speed.
ACCUMULATE_BLOCK = 1 << 19
# GEMMs of at least this many multiply-adds (M·N·K) go by blocks on the CPU threads (split_work);
# smaller ones run whole in the caller, where a hand-off to the threads would cost more than it
# saves (LeNet's ip2, 0.3 M: 0.02 ms whole, 0.2 ms split). LeNet's ip1 (25.6 M per GEMM) gains:
# forward 0.82 -> 0.65 ms, backward 1.46 -> 1.23 ms on two threads (it ran whole at 1 << 25).
# Both run with single-threaded BLAS when the threads exist: a multi-threaded OpenBLAS call
# leaves its workers spinning for a while afterwards, which would steal the cores from the next
# layer's chunk threads (suspected, not isolated: CIFAR-10 quick's conv3 backward, right after
# ip1's GEMMs, ran no faster on two threads than on one until ip1 went through the chunk threads
# too).
SPLIT_GEMM_MIN = 1 << 23


def matmul(xp, a, b, out) -> None:
    """out (M, N) = a (M, K) @ b (K, N) on the CPU threads, by blocks of out's longer axis."""
    _blocked_matmul(xp, a, b, out, accumulate=False)


def matmul_add(xp, a, b, out) -> None:
    """out (M, N) += a (M, K) @ b (K, N), as Caffe's gemm with beta = 1 (gradient accumulation).

    On the CPU it goes by blocks through a small scratch buffer: a whole (M, N) temporary is
    fresh memory every call (page faults), then a second pass over `out`; for AlexNet's fc6
    weight gradient (37.7 M elements) the blocks are about 5x faster. A GPU takes it whole.
    """
    _blocked_matmul(xp, a, b, out, accumulate=True)


def _blocked_matmul(xp, a, b, out, accumulate: bool) -> None:
    (m, n), k = out.shape, a.shape[1]
    if xp is not numpy:
        _whole_matmul(xp, a, b, out, accumulate)
        return
    threads = _chunk_threads()
    if threads.pool is None or m * n * k < SPLIT_GEMM_MIN:
        with threads.single_threaded_blas() if threads.pool else contextlib.nullcontext():
            if accumulate and out.size > ACCUMULATE_BLOCK:
                _row_blocks_matmul_add(a, b, out)
            else:
                _whole_matmul(numpy, a, b, out, accumulate)
        return
    # Blocks of rows, or of columns when out is wide (AlexNet's fc6: 16 x 4096): then each thread
    # reads only its columns of b, the weights, instead of all of them.
    by_rows = m >= n
    length, width = (m, n) if by_rows else (n, m)
    step = max(1, min(ACCUMULATE_BLOCK // width, -(-length // 4)))  # >= 4 blocks to share out
    blocks = [slice(i, i + step) for i in range(0, length, step)]

    def run(parts) -> None:
        scratch = numpy.empty(step * width, dtype=out.dtype) if accumulate else None
        for s in parts:
            a_s, b_s, out_s = (a[s], b, out[s]) if by_rows else (a, b[:, s], out[:, s])
            if not accumulate:
                numpy.matmul(a_s, b_s, out=out_s)
                continue
            part = scratch[: out_s.size].reshape(out_s.shape)
            numpy.matmul(a_s, b_s, out=part)
            out_s += part

    split_work(numpy, run, blocks)


def _whole_matmul(xp, a, b, out, accumulate: bool) -> None:
    if accumulate:
        out += xp.matmul(a, b)
    else:
        xp.matmul(a, b, out=out)


def _row_blocks_matmul_add(a, b, out) -> None:
    """out += a @ b by blocks of rows through one small scratch buffer, in the caller's thread."""
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
