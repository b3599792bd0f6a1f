"""Data layers: Data (LMDB of Datum), ImageData (image list), WindowData (declined).

Data and ImageData build whole batches on a background thread (decode + transform on the host, up
to `prefetch` batches ahead) and `forward` copies the next one into the tops. A worker reads only
records whose index i has i % n == k for its shard (k, n), so n workers together see each record
once per epoch. `state()` / `restore()` give the read position and RNG state of the last batch
handed out, so a resumed run draws the same batches. HDF5Data / HDF5Output live in hdf5.py.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import queue
import threading

import numpy

from geeps_net.dataset import decode_datum, import_pillow
from geeps_net.datumdb import backend_of, open_db
from geeps_net.errors import DataError
from geeps_net.imageset import load_image, read_image_list
from geeps_net.layer import Layer, register
from geeps_net.proto import caffe_pb2
from geeps_net.transform import Transformer, transform_param_of

log = logging.getLogger(__name__)


class PrefetchingDataLayer(Layer):
    """Base of data layers that prepare batches on a thread; no bottoms, no backward.

    Subclasses set `self.source` and implement `_next_batch()` (runs on the thread, draws from
    self.rng, returns one host array per top), `_position()` / `_seek(state)` (the read position as
    a JSON-friendly dict) and optionally `_begin_reading()` / `_end_reading()` (on the thread).
    """

    num_bottoms = 0
    has_backward = False
    backward_reads = frozenset()
    deadline_s = 60.0  # every wait for a batch ends: a stuck reader becomes an error, not a hang
    prefetch = 4
    source = ""

    def __init__(self, layer_param, phase=caffe_pb2.TRAIN) -> None:
        super().__init__(layer_param, phase)
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue | None = None
        self._stopping: threading.Event | None = None  # one per thread, so a late one stays stopped
        self._consumed: dict | None = None  # state after the last batch forward handed out

    def data_error(self, message: str) -> DataError:
        """A DataError naming this layer."""
        return DataError(f'layer "{self.name}" ({self.type}): {message}')

    def forward(self, xp, bottoms, tops):
        """Copy the next prefetched batch into tops[0] (data) and tops[1] (labels)."""
        arrays, state = self._take()
        for top, array in zip(tops, arrays[: len(tops)], strict=True):  # labels unused w/o top 1
            top.data[...] = xp.asarray(array)
        self._consumed = state

    def state(self) -> dict:
        """Read position and RNG state after the last batch handed out (JSON-friendly)."""
        return copy.deepcopy(self._consumed if self._consumed is not None else self._snapshot())

    def restore(self, state: dict) -> None:
        """Continue from a `state()`: the next forward yields the batch that followed it."""
        self._stop_thread()
        self._seek(state)
        self.rng.bit_generator.state = copy.deepcopy(state["rng"])
        self._consumed = copy.deepcopy(state)

    def close(self) -> None:
        """Stop and join the prefetch thread."""
        self._stop_thread()

    # -- the thread ------------------------------------------------------------------------------

    def _snapshot(self) -> dict:
        return {**self._position(), "rng": copy.deepcopy(self.rng.bit_generator.state)}

    def _take(self):
        if self._thread is None:
            self._start_thread()
        try:
            item = self._queue.get(timeout=self.deadline_s)
        except queue.Empty:
            raise self.data_error(
                f"no batch from source {self.source} within {self.deadline_s:g} s"
            ) from None
        if isinstance(item, Exception):
            self.restore(self._consumed)  # the reader has ended; a retry reads the same records
            raise item
        return item

    def _start_thread(self) -> None:
        if self._consumed is None:
            self._consumed = self._snapshot()
        if hasattr(self, "transformer"):
            self.transformer.rng = self.rng  # in case the generator was replaced after setup
        self._queue = queue.Queue(maxsize=max(1, self.prefetch))
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(self._queue, self._stopping), name=f"prefetch {self.name}"
        )
        self._thread.start()

    @staticmethod
    def _running(stopping: threading.Event) -> bool:
        # Also end when the interpreter is shutting down, so a layer never closed cannot hang exit.
        return not stopping.is_set() and threading.main_thread().is_alive()

    def _run(self, batches: queue.Queue, stopping: threading.Event) -> None:
        try:
            self._begin_reading()
            try:
                while self._running(stopping):
                    batch = self._next_batch()
                    self._put(batches, stopping, (batch, self._snapshot()))
            finally:
                self._end_reading()
        except Exception as e:  # hand it to forward, which raises it on the caller's thread
            self._put(batches, stopping, e)

    def _put(self, batches: queue.Queue, stopping: threading.Event, item) -> None:
        while self._running(stopping):
            try:
                batches.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _stop_thread(self) -> None:
        if self._thread is None:
            return
        self._stopping.set()
        with contextlib.suppress(queue.Empty):
            self._queue.get_nowait()  # frees a put that is waiting, so the thread sees the stop now
        self._thread.join(timeout=self.deadline_s)
        if self._thread.is_alive():
            log.warning(
                'layer "%s": prefetch thread did not stop in %g s', self.name, self.deadline_s
            )
        self._thread = self._queue = self._stopping = None

    # -- hooks -------------------------------------------------------------------------------------

    def _begin_reading(self) -> None:
        """Open what the thread reads through (on the thread)."""

    def _end_reading(self) -> None:
        """Close it (on the thread)."""

    def _next_batch(self) -> tuple[numpy.ndarray, ...]:
        raise NotImplementedError

    def _position(self) -> dict:
        raise NotImplementedError

    def _seek(self, state: dict) -> None:
        raise NotImplementedError

    def _check_shard(self, size: int) -> None:
        k, n = self.shard
        if not 0 <= k < n:
            raise self.data_error(f"bad data shard {k} of {n}")
        if k >= size:
            raise self.data_error(f"shard {k} of {n} gets no records: the source has only {size}")


@register("Data")
class DataLayer(PrefetchingDataLayer):
    """Batches of Datum from an LMDB or LevelDB, transformed: tops data (N, C, H', W') and
    optional label (N,).

    Records are read in key order from a random start in [0, rand_skip), wrapping at the end.
    """

    num_tops = (1, 2)

    def setup(self, bottoms, tops):
        p = self.layer_param.data_param
        self.source = p.source
        backend = self._backend(p)
        if p.batch_size <= 0:
            raise self.error("data_param.batch_size must be positive")
        self.batch_size, self.prefetch = p.batch_size, p.prefetch
        self.db = open_db(p.source, f'layer "{self.name}" ({self.type})', backend)
        try:
            self._check_shard(self.db.size)
            self._learn_shapes(transform_param_of(self.layer_param, p))
        except DataError:
            self.close()
            raise
        self._records = int(self.rng.integers(p.rand_skip)) if p.rand_skip else 0
        self._reader = None

    def _learn_shapes(self, transform_param) -> None:
        """The first record's (C, H, W) and the transformed (C, H', W')."""
        try:
            self.transformer = Transformer(transform_param, self.phase, self.rng, self.dtype)
            key, value = self.db.first()
            self.item_shape = self._decode(key, value)[0].shape
            self.top_shape = self.transformer.output_shape(self.item_shape)
        except DataError as e:
            if str(e).startswith(f'layer "{self.name}"'):
                raise
            raise self.data_error(str(e)) from None

    def _backend(self, p) -> str:
        """The backend to read, "lmdb" or "leveldb", as data_param says; Caffe's default,
        LEVELDB, left unset over a source that is an LMDB reads it as one (with a warning), as
        this project's nets do."""
        if p.backend == caffe_pb2.DataParameter.LMDB:
            return "lmdb"
        if not p.HasField("backend") and backend_of(p.source) == "lmdb":
            log.warning(
                'layer "%s": backend defaults to LEVELDB, but %s is an LMDB: reading it as LMDB',
                self.name,
                p.source,
            )
            return "lmdb"
        return "leveldb"

    def reshape(self, bottoms, tops):
        tops[0].reshape((self.batch_size, *self.top_shape))
        if len(tops) > 1:
            tops[1].reshape((self.batch_size,))

    def close(self):
        super().close()
        if getattr(self, "db", None) is not None:
            self.db.close()
            self.db = None

    def _decode(self, key: bytes, value: bytes):
        def where() -> str:
            key_text = key.decode(errors="replace")
            return f'layer "{self.name}" ({self.type}): source {self.source} key {key_text!r}'

        t = self.transformer
        return decode_datum(value, where, force_color=t.force_color, force_gray=t.force_gray)

    def _begin_reading(self):
        self._reader = self.db.cycle(self._records % self.db.size)

    def _end_reading(self):
        self._reader.close()
        self._reader = None

    def _next_record(self) -> tuple[bytes, bytes]:
        k, n = self.shard
        while True:
            take = (self._records % self.db.size) % n == k
            record = self._reader.next()  # wraps around, as Caffe's DataLayer::Next
            self._records += 1
            if take:
                return record

    def _next_batch(self):
        pixels, labels = [], numpy.empty(self.batch_size, self.dtype)
        for i in range(self.batch_size):
            key, value = self._next_record()
            item, labels[i] = self._decode(key, value)
            if item.shape != self.item_shape:
                raise self.data_error(
                    f"source {self.source} key {key.decode(errors='replace')!r}: shape "
                    f"{item.shape} differs from the first record's {self.item_shape}"
                )
            pixels.append(item)
        return self.transformer(numpy.stack(pixels)), labels

    def _position(self):
        return {"records": self._records}

    def _seek(self, state):
        self._records = int(state["records"])


@register("ImageData")
class ImageDataLayer(PrefetchingDataLayer):
    """Batches of images named in a list file ("path label" per line), read with Pillow.

    Top data (N, C, H', W') in BGR channel order (as OpenCV reads them for Caffe), top label (N,).
    Paths are root_folder + path; images are resized to new_height x new_width when both are set;
    `shuffle` reshuffles the list every epoch.
    """

    num_tops = 2

    def setup(self, bottoms, tops):
        p = self.layer_param.image_data_param
        self.source, self.param = p.source, p
        self.image_module = import_pillow(f'layer "{self.name}" ({self.type})')
        if (p.new_height == 0) != (p.new_width == 0):
            raise self.error("new_height and new_width must be set together")
        if p.batch_size <= 0:
            raise self.error("image_data_param.batch_size must be positive")
        self.batch_size = p.batch_size
        try:
            self.lines = [(path, label) for path, label, _ in read_image_list(p.source)]
        except DataError as e:
            raise self.data_error(str(e)) from None
        self._check_shard(len(self.lines))
        self._order = self._shuffled() if p.shuffle else list(range(len(self.lines)))
        self._records = int(self.rng.integers(p.rand_skip)) if p.rand_skip else 0
        self.item_shape = self._load(self._order[0]).shape
        try:
            tp = transform_param_of(self.layer_param, p)
            self.transformer = Transformer(tp, self.phase, self.rng, self.dtype)
            self.top_shape = self.transformer.output_shape(self.item_shape)
        except DataError as e:
            raise self.data_error(str(e)) from None

    def reshape(self, bottoms, tops):
        tops[0].reshape((self.batch_size, *self.top_shape))
        tops[1].reshape((self.batch_size,))

    def _shuffled(self) -> list[int]:
        return self.rng.permutation(len(self.lines)).tolist()

    def _load(self, index: int) -> numpy.ndarray:
        p = self.param
        size = (p.new_height, p.new_width) if p.new_height else None
        path = p.root_folder + self.lines[index][0]
        try:
            return load_image(self.image_module, path, size, color=p.is_color)
        except DataError as e:
            raise self.data_error(str(e)) from None

    def _next_batch(self):
        k, n = self.shard
        items, labels = [], numpy.empty(self.batch_size, self.dtype)
        while len(items) < self.batch_size:
            j = self._records % len(self.lines)
            if j == 0 and self._records and self.param.shuffle:
                self._order = self._shuffled()  # a new epoch: Caffe's ShuffleImages
            self._records += 1
            index = self._order[j]
            if index % n != k:
                continue
            item = self._load(index)
            if item.shape != self.item_shape:
                raise self.data_error(
                    f"image {self.lines[index][0]} has shape {item.shape}, the first had "
                    f"{self.item_shape}: set new_height/new_width to resize"
                )
            labels[len(items)] = self.lines[index][1]
            items.append(item)
        return self.transformer(numpy.stack(items)), labels

    def _position(self):
        return {"records": self._records, "order": list(self._order)}

    def _seek(self, state):
        self._records, self._order = int(state["records"]), [int(i) for i in state["order"]]


@register("WindowData")
class WindowDataLayer(Layer):
    """R-CNN window files: declined by geeps-net; setup explains what to use instead."""

    num_bottoms, num_tops = 0, 2
    has_backward = False
    backward_reads = frozenset()

    def setup(self, bottoms, tops):
        raise self.error(
            "WindowData (R-CNN window files) is not supported by geeps-net; crop the windows "
            "into an LMDB (Data) or an image list (ImageData) instead"
        )
