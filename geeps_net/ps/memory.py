"""Device memory under a hard budget: one arena, a next-fit access pool, a host store, copies.

The arena is ONE buffer preallocated at start-up (a NumPy buffer on the CPU, a CuPy buffer on a GPU)
that holds resident data at fixed offsets followed by the access pool. Nothing else is allocated on
the device while training, so the budget holds by construction; the pool's high-water mark proves it
in tests. Non-resident data lives in the host store and is copied through pool buffers; every copy
is counted.
"""

from __future__ import annotations

import bisect
import contextlib
import threading
import time

import numpy

from geeps_net.errors import DeadlineError, PsError


class Device:
    """Copies between host and device, with byte counters; CUDA streams and events when xp is CuPy.

    On NumPy every method is a plain copy and events are None, so the same call sites serve both.
    """

    def __init__(self, xp, pinned: bool = True) -> None:
        self.xp = xp
        self.gpu = xp is not numpy
        self.pinned = pinned
        self.bytes_to_device = self.bytes_to_host = 0
        self.copy_in_s = self.copy_out_s = 0.0
        self._lock = threading.Lock()  # counters are bumped by both background threads
        if self.gpu:  # pragma: no cover - GPU only
            self.copy_stream = xp.cuda.Stream(non_blocking=True)  # allocator thread's copies
            self.reclaim_stream = xp.cuda.Stream(non_blocking=True)  # reclaimer's copies and adds
        else:
            self.copy_stream = self.reclaim_stream = None

    def host_empty(self, num_values: int, dtype) -> numpy.ndarray:
        """A host array; page-locked on a GPU when `pinned` (fast, asynchronous copies)."""
        if self.gpu and self.pinned:  # pragma: no cover - GPU only
            import cupyx

            return cupyx.empty_pinned((num_values,), dtype=dtype)
        return numpy.empty(num_values, dtype=dtype)

    def to_device(self, dst, src: numpy.ndarray, stream=None) -> None:
        """dst (device) <- src (host), counted."""
        start = time.perf_counter()
        if self.gpu:  # pragma: no cover - GPU only
            dst.set(src, stream=stream)
        else:
            dst[...] = src
        self._count(src.nbytes, 0, time.perf_counter() - start, 0.0)

    def to_host(self, dst: numpy.ndarray, src, stream=None) -> None:
        """dst (host) <- src (device), counted; on a GPU complete once `record(stream)` is."""
        start = time.perf_counter()
        if self.gpu:  # pragma: no cover - GPU only
            src.get(stream=stream, out=dst)
        else:
            dst[...] = src
        self._count(0, src.nbytes, 0.0, time.perf_counter() - start)

    def add_to_host(self, dst: numpy.ndarray, src, staging: numpy.ndarray, stream=None) -> None:
        """dst (host) += src (device), counted as one device -> host copy."""
        if not self.gpu:
            start = time.perf_counter()
            dst += src
            self._count(0, src.nbytes, 0.0, time.perf_counter() - start)
            return
        part = staging[: src.size]  # pragma: no cover - GPU only
        self.to_host(part, src, stream)
        self.sync(self.record(stream))
        dst += part

    def _count(self, to_device: int, to_host: int, in_s: float, out_s: float) -> None:
        with self._lock:
            self.bytes_to_device += to_device
            self.bytes_to_host += to_host
            self.copy_in_s += in_s
            self.copy_out_s += out_s

    def on(self, stream):
        """Context making `stream` current for kernels (no-op on NumPy)."""
        return stream if stream is not None else contextlib.nullcontext()

    def record(self, stream=None):
        """An event marking the work queued so far on `stream` (None: current); None on NumPy."""
        if not self.gpu:
            return None
        event = self.xp.cuda.Event(disable_timing=True)  # pragma: no cover - GPU only
        event.record(stream)
        return event

    def wait(self, event, stream=None) -> None:
        """Make `stream` (None: the current one) wait for `event` without blocking the host."""
        if event is not None:  # pragma: no cover - GPU only
            (stream or self.xp.cuda.get_current_stream()).wait_event(event)

    def sync(self, event) -> None:
        """Block this host thread until `event` completed (background threads only)."""
        if event is not None:  # pragma: no cover - GPU only
            event.synchronize()


# The host arena starts on a page: every view then starts on a cache line (blocks start on
# ops.ALIGN boundaries), so AVX-512 loads never straddle two lines, as at malloc's 16 bytes.
ALIGN = 4096


class Arena:
    """The one preallocated device buffer; typed views at byte offsets."""

    def __init__(self, device: Device, nbytes: int) -> None:
        self.nbytes = nbytes
        if device.gpu:  # CuPy's allocations start on 512-byte boundaries already
            self.buffer = device.xp.empty(nbytes, dtype=numpy.uint8)
            return
        raw = numpy.empty(nbytes + ALIGN, dtype=numpy.uint8)
        skip = -raw.ctypes.data % ALIGN
        self.buffer = raw[skip : skip + nbytes]

    def view(self, offset: int, num_values: int, dtype):
        """A 1-D view of `num_values` of `dtype` at byte `offset` (zero copy)."""
        dtype = numpy.dtype(dtype)
        return self.buffer[offset : offset + num_values * dtype.itemsize].view(dtype)


class PoolAllocator:
    """Next-fit allocator over [start, start + size) of the arena; blocks when full.

    Free space is a sorted list of [offset, length] blocks merged on free; a search starts where
    the last allocation ended and wraps once, which suits the mostly first-in first-out order of
    the op sequence. The planner replays it over one iteration to fix every access's block, which
    the runtime then `claim`s (so it never fragments differently from the plan).
    """

    def __init__(self, start: int, size: int) -> None:
        self.start, self.size = start, size
        self._offsets = [start] if size else []  # free blocks, sorted by offset
        self._lengths = [size] if size else []
        self._used: dict[int, int] = {}
        self._cursor = start
        self._cond = threading.Condition()
        self._closed = False
        self.in_use = self.high_water = 0
        self.wait_s = 0.0

    def try_alloc(self, nbytes: int) -> int | None:
        """Offset of a free block of `nbytes` (> 0), or None if no block is large enough."""
        with self._cond:
            count = len(self._offsets)
            first = bisect.bisect_left(self._offsets, self._cursor)
            for j in range(count):
                i = (first + j) % count
                if self._lengths[i] >= nbytes:
                    return self._take(i, nbytes)
            return None

    def _take(self, i: int, nbytes: int) -> int:
        offset = self._offsets[i]
        if self._lengths[i] == nbytes:
            del self._offsets[i], self._lengths[i]
        else:
            self._offsets[i] += nbytes
            self._lengths[i] -= nbytes
        self._used[offset] = nbytes
        self._cursor = offset + nbytes
        self.in_use += nbytes
        self.high_water = max(self.high_water, self.in_use)
        return offset

    def alloc(self, nbytes: int, deadline_s: float, what: str) -> int:
        """Offset of `nbytes`, waiting for frees up to `deadline_s` (DeadlineError: how short)."""
        offset = self.try_alloc(nbytes)
        if offset is not None:
            return offset
        start = time.perf_counter()
        end = start + deadline_s
        with self._cond:
            while (offset := self.try_alloc(nbytes)) is None:
                left = end - time.perf_counter()
                if self._closed:
                    raise PsError(f"access pool closed while {what} waited for {nbytes} B")
                if left <= 0:
                    largest = max(self._lengths, default=0)
                    raise DeadlineError(
                        f"access pool: {what} needs {nbytes} B but after {deadline_s} s only "
                        f"{self.size - self.in_use} B of {self.size} B are free "
                        f"(largest piece {largest} B)"
                    )
                self._cond.wait(left)
        self.wait_s += time.perf_counter() - start
        return offset

    def try_claim(self, offset: int, nbytes: int) -> bool:
        """Take exactly [offset, offset + nbytes) if it is all free."""
        with self._cond:
            i = bisect.bisect_right(self._offsets, offset) - 1
            if i < 0 or self._offsets[i] + self._lengths[i] < offset + nbytes:
                return False
            start, end = self._offsets[i], self._offsets[i] + self._lengths[i]
            del self._offsets[i], self._lengths[i]
            for piece_start, piece_end in ((start, offset), (offset + nbytes, end)):
                if piece_end > piece_start:  # what is left of the free block on either side
                    j = bisect.bisect_left(self._offsets, piece_start)
                    self._offsets.insert(j, piece_start)
                    self._lengths.insert(j, piece_end - piece_start)
            self._used[offset] = nbytes
            self.in_use += nbytes
            self.high_water = max(self.high_water, self.in_use)
            return True

    def claim(self, offset: int, nbytes: int, what: str) -> int:
        """Take the planned block [offset, offset + nbytes), waiting for its previous occupants to
        be freed; returns offset. Back-pressure from the application, so no deadline: the
        application's own wait has one. Raises PsError once the pool is closed."""
        if self.try_claim(offset, nbytes):
            return offset
        start = time.perf_counter()
        with self._cond:
            while not self.try_claim(offset, nbytes):
                if self._closed:
                    raise PsError(f"access pool closed while {what} waited for its block")
                self._cond.wait(0.25)
        self.wait_s += time.perf_counter() - start
        return offset

    def free(self, offset: int) -> None:
        """Return the block at `offset`, merging it with free neighbours; wakes waiting allocs."""
        with self._cond:
            nbytes = self._used.pop(offset)
            self.in_use -= nbytes
            i = bisect.bisect_left(self._offsets, offset)
            self._offsets.insert(i, offset)
            self._lengths.insert(i, nbytes)
            if i + 1 < len(self._offsets) and offset + nbytes == self._offsets[i + 1]:
                self._lengths[i] += self._lengths.pop(i + 1)
                del self._offsets[i + 1]
            if i > 0 and self._offsets[i - 1] + self._lengths[i - 1] == offset:
                self._lengths[i - 1] += self._lengths.pop(i)
                del self._offsets[i]
            self._cond.notify_all()

    def free_pieces(self) -> list[tuple[int, int]]:
        """The free blocks as (offset, length), for tests and messages."""
        with self._cond:
            return list(zip(self._offsets, self._lengths, strict=True))

    def close(self) -> None:
        """Wake every waiting alloc with an error (shutdown)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class HostStore:
    """Host homes of non-resident data (pinned on a GPU): one array per key, counted."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self.arrays: dict = {}
        self.nbytes = 0

    def array(self, key, num_values: int, dtype) -> numpy.ndarray:
        """A zeroed host array for `key`, created once."""
        if key not in self.arrays:
            self.arrays[key] = self.device.host_empty(num_values, dtype)
            self.arrays[key][...] = 0
            self.nbytes += self.arrays[key].nbytes
        return self.arrays[key]
