"""backend.split_work and batch_chunks: the CPU threads that layers' chunks of images run on."""

import threading
import time

import numpy
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

import geeps_net.backend as backend
from geeps_net.layers.im2col import batch_chunks


def _blas_threads() -> list[int]:
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


@pytest.fixture
def two_threads(monkeypatch):
    threads = backend._ChunkThreads(2)
    monkeypatch.setattr(backend, "_chunk_threads", lambda: threads)
    yield threads
    threads.pool.shutdown()


def test_parts_are_fixed_whatever_the_timing(two_threads):
    """Which items a thread sums together never depends on which thread runs first: identical
    runs give identical float sums (a caller slow to start must not leave its items to the
    helper)."""

    def work(items):
        if threading.current_thread() is threading.main_thread():
            time.sleep(0.02)
        return [*items]

    assert backend.split_work(numpy, work, list(range(9))) == [[0, 1, 2, 3], [4, 5, 6, 7, 8]]


def test_every_item_goes_to_one_thread(two_threads):
    seen, lock = [], threading.Lock()

    def work(items):
        mine = list(items)
        with lock:
            seen.extend(mine)
        return sum(mine) if mine else None

    partial = backend.split_work(numpy, work, list(range(100)))
    assert sorted(seen) == list(range(100))
    assert sum(partial) == sum(range(100)) and 1 <= len(partial) <= 2


def test_blas_limit_holds_until_the_last_overlapping_caller_leaves(two_threads):
    """Two split_work calls at once (two Nets in one process): BLAS stays on one thread until
    both leave, then gets back the count it had, whatever order they leave in (nested limit
    contexts would restore two while one caller still runs, then one for good)."""
    with threadpool_limits(limits=2, user_api="blas"):
        first, second = two_threads.single_threaded_blas(), two_threads.single_threaded_blas()
        first.__enter__()
        second.__enter__()
        assert set(_blas_threads()) == {1}
        first.__exit__(None, None, None)
        assert set(_blas_threads()) == {1}
        second.__exit__(None, None, None)
        assert set(_blas_threads()) == {2}


def test_an_error_waits_for_the_helpers(two_threads):
    """A failing chunk raises in the caller, and only after every helper has stopped writing."""
    finished = []

    def work(items):
        for _ in items:
            if threading.current_thread() is threading.main_thread():
                raise ValueError("a chunk failed")
            time.sleep(0.001)  # the helper is still busy when the caller fails
        finished.append(threading.current_thread().name)

    with pytest.raises(ValueError, match="a chunk failed"):
        backend.split_work(numpy, work, list(range(50)))
    assert len(finished) == 1  # the helper finished its share and was waited for


def test_image_chunks_are_even_and_a_multiple_of_the_threads(two_threads):
    """64 images of which 14 fit a chunk: 6 ranges of 10-11 images, 3 per thread (not 5 ranges,
    28 images on one thread and 36 on the other); a batch that fits one chunk still splits in 2."""
    ranges = batch_chunks(numpy, 64, 100, cpu_budget=1400)
    assert len(ranges) == 6
    assert [b - a for a, b in ranges] == [10, 11, 11, 10, 11, 11]
    assert ranges[0][0] == 0 and ranges[-1][1] == 64
    assert all(a1 == b0 for (_, a1), (b0, _) in zip(ranges, ranges[1:]))
    assert batch_chunks(numpy, 8, 100, cpu_budget=10**6) == [(0, 4), (4, 8)]
    assert batch_chunks(numpy, 1, 100, cpu_budget=10**6) == [(0, 1)]
