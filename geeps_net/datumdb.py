"""Databases of serialized Datum on disk, LMDB or LevelDB (Caffe's two backends), behind one
interface: readers that share an open database within a process, writers that build a new one
beside its path and rename it into place only when complete.

    with open_db("train_lmdb") as db:                 # the backend from the files present
        key, value = db.first()
    write_db("out_leveldb", records, backend="leveldb")

LevelDB goes through plyvel (the `leveldb` extra); LMDB through py-lmdb.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import lmdb

from geeps_net.errors import DataError
from geeps_net.fileio import atomic_directory

BACKENDS = ("lmdb", "leveldb")
_COMMIT_EVERY = 1000  # records per write transaction / batch, as Caffe's converters


def backend_of(path) -> str | None:
    """ "lmdb" or "leveldb" from the files in directory `path`, or None if it is neither."""
    path = Path(path)
    if (path / "data.mdb").is_file():
        return "lmdb"
    if (path / "CURRENT").is_file():
        return "leveldb"
    return None


def open_db(path, who: str = "", backend: str | None = None):
    """A reader of the Datum database at `path` (LmdbDB or LevelDB); `backend` None: whichever
    the files say. DataError naming `who`'s source (or the path) if it cannot be read."""
    prefix = f"{who}: source " if who else ""  # a layer's source; a tool's argument
    found = backend_of(path)
    if found is None or (backend is not None and found != backend):
        missing = not Path(path).exists()
        want = {"lmdb": "an LMDB", "leveldb": "a LevelDB"}.get(backend, "an LMDB or LevelDB")
        what = "no such file or directory" if missing else f"not {want} directory"
        raise DataError(f"{prefix}{path}: {what}")
    return (LmdbDB if found == "lmdb" else LevelDB)(path, prefix)


def import_plyvel(who: str):
    """The plyvel module, or a DataError telling `who` to install the `leveldb` extra."""
    try:
        import plyvel
    except ImportError:
        raise DataError(f"{who}: LevelDB needs plyvel: pip install 'geeps-net[leveldb]'") from None
    return plyvel


# -- readers --------------------------------------------------------------------------------------


class _SharedDB:
    """A read-only database opened once per real path and process, counted, closed by the last
    `close()`: py-lmdb allows one Environment per path, LevelDB one holder of its lock, and
    several layers (a TRAIN and a TEST net, workers in one process) may read the same source.
    Subclasses set `_open(path, prefix)` and `_count()`; records come in key byte order."""

    _registry: dict[str, list] = {}  # real path -> [handle, users]
    _lock = threading.Lock()

    def __init__(self, path, prefix: str = "") -> None:
        self.path = Path(path)
        self._key = os.path.realpath(self.path)
        with self._lock:
            entry = self._registry.get(self._key)
            if entry is None:
                entry = self._registry[self._key] = [self._open(self._key, prefix), 0]
            entry[1] += 1
        self.handle = entry[0]
        self.size = self._count()
        if self.size == 0:
            self.close()
            raise DataError(f"{prefix}{self.path}: the database is empty")

    def first(self) -> tuple[bytes, bytes]:
        """(key, value) of the first record."""
        return next(iter(self.items()))

    def close(self) -> None:
        """Let go of the database; the last user closes it. Idempotent."""
        if self.handle is None:
            return
        with self._lock:
            entry = self._registry[self._key]
            entry[1] -= 1
            if entry[1] == 0:
                del self._registry[self._key]
                entry[0].close()
        self.handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class LmdbDB(_SharedDB):
    """A read-only LMDB of serialized Datum."""

    def _open(self, path: str, prefix: str):
        try:
            return lmdb.open(path, readonly=True, lock=False, subdir=True)
        except lmdb.Error as e:
            raise DataError(f"{prefix}{self.path}: cannot open LMDB ({e})") from None

    def _count(self) -> int:
        return self.handle.stat()["entries"]

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) in key order, once."""
        with self.handle.begin() as txn:
            yield from txn.cursor()

    def cycle(self, start: int) -> _LmdbCycle:
        """Records from index `start` on, wrapping around at the end (Caffe's DataReader)."""
        return _LmdbCycle(self.handle, start)


class _LmdbCycle:
    def __init__(self, env, start: int) -> None:
        self._txn = env.begin(buffers=False)
        self._cursor = self._txn.cursor()
        self._cursor.first()
        for _ in range(start):
            self.next()

    def next(self) -> tuple[bytes, bytes]:
        """The record under the cursor; the cursor moves on (to the first after the last)."""
        item = self._cursor.item()
        if not self._cursor.next():
            self._cursor.first()
        return item

    def close(self) -> None:
        self._txn.abort()  # read-only: nothing to commit


class LevelDB(_SharedDB):
    """A read-only LevelDB of serialized Datum (the default backend of Caffe's Data layer)."""

    def _open(self, path: str, prefix: str):
        plyvel = import_plyvel(f"{prefix}{self.path}")
        try:
            return plyvel.DB(path, create_if_missing=False)
        except (plyvel.Error, OSError) as e:
            if "lock" in str(e).lower():  # LevelDB admits one process at a time
                raise DataError(
                    f"{prefix}{self.path}: this LevelDB is open in another process (several "
                    "workers?): LevelDB admits one; give them an LMDB: geeps-net convert_db "
                    f"{self.path} OUT_lmdb"
                ) from None
            raise DataError(f"{prefix}{self.path}: cannot open LevelDB ({e})") from None

    def _count(self) -> int:
        # LevelDB keeps no count: one pass over the keys (tens of ms for 60,000 records)
        with self.handle.iterator(include_value=False) as keys:
            return sum(1 for _ in keys)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) in key order, once."""
        with self.handle.iterator() as records:
            yield from records

    def cycle(self, start: int) -> _LevelCycle:
        """Records from index `start` on, wrapping around at the end, from one snapshot."""
        return _LevelCycle(self.handle, start)


class _LevelCycle:
    def __init__(self, db, start: int) -> None:
        self._snapshot = db.snapshot()
        self._records = self._snapshot.iterator()
        for _ in range(start):
            self.next()

    def next(self) -> tuple[bytes, bytes]:
        """The next record; after the last, the first again."""
        try:
            return next(self._records)
        except StopIteration:
            self._records.close()
            self._records = self._snapshot.iterator()
            return next(self._records)

    def close(self) -> None:
        self._records.close()
        self._snapshot.close()


# -- writers --------------------------------------------------------------------------------------


def check_output(out: Path, overwrite: bool, directory: bool = True) -> None:
    """Refuse an output that cannot be written, before any input is read: an existing one (unless
    `overwrite`; a file where a directory goes, or the reverse), or one whose folder is missing."""
    if out.exists() and not overwrite:
        raise DataError(f"{out}: already exists (remove it, or use -overwrite / overwrite=True)")
    if out.exists() and out.is_dir() != directory:
        raise DataError(f"{out}: exists and is {'a file' if directory else 'a directory'}")
    if not out.absolute().parent.is_dir():
        raise DataError(f"{out}: cannot write: folder {out.parent} does not exist")


def write_db(
    out_path,
    records: Iterable[tuple[bytes, bytes]],
    *,
    backend: str = "lmdb",
    map_size: int = 1 << 26,
    overwrite: bool = False,
) -> int:
    """Write (key, value) records to a new database directory `out_path`; returns the count.

    The DB is built in a temporary directory beside `out_path` and renamed into place at the end,
    so a failure leaves no half-written DB. An LMDB's map grows (doubling) whenever it fills.
    """
    with db_writer(out_path, backend, map_size=map_size, overwrite=overwrite) as writer:
        for key, value in records:
            writer.put(key, value)
    return writer.count


def db_writer(out_path, backend: str = "lmdb", *, map_size: int = 1 << 26, overwrite=False):
    """An LmdbWriter or LevelDbWriter for a new database at `out_path`."""
    if backend.lower() not in BACKENDS:
        raise DataError(f"{out_path}: backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend.lower() == "leveldb":
        return LevelDbWriter(out_path, overwrite=overwrite)
    return LmdbWriter(out_path, map_size=map_size, overwrite=overwrite)


class _AtomicWriter:
    """A new database directory written record by record: `with Writer(path) as w: w.put(k, v)`.

    Built in a temporary directory beside the path and renamed into place when the block ends
    without an exception; after one, nothing is left. Records go in batches of 1000. `count` is
    the number of records written. Subclasses set `_open(tmp)`, `_write(chunk)`, `_close()`.
    """

    def __init__(self, out_path, *, overwrite: bool = False) -> None:
        self.out, self.overwrite = Path(out_path), overwrite
        self.count = 0
        self._chunk: list[tuple[bytes, bytes]] = []

    def __enter__(self):
        check_output(self.out, self.overwrite)
        self._atomic = atomic_directory(self.out, overwrite=self.overwrite)
        tmp = self._atomic.__enter__()
        try:
            self._open(tmp)
        except BaseException as e:
            self._atomic.__exit__(type(e), e, e.__traceback__)  # removes the temporary folder
            raise
        return self

    def put(self, key: bytes, value: bytes) -> None:
        """Add one record (written with the next batch)."""
        self._chunk.append((key, value))
        if len(self._chunk) == _COMMIT_EVERY:
            self._commit()

    def __exit__(self, kind, error, trace) -> bool:
        try:
            if kind is None:
                self._commit()
                self._sync()
        except BaseException as e:  # the last batch failed: discard the DB as for any error
            kind, error, trace = type(e), e, e.__traceback__
            raise
        finally:
            self._close()
            self._atomic.__exit__(kind, error, trace)  # renames it into place, or removes it
        return False

    def _commit(self) -> None:
        self._write(self._chunk)
        self.count += len(self._chunk)
        self._chunk = []


class LmdbWriter(_AtomicWriter):
    """A new LMDB; the map grows (doubling) whenever it fills."""

    def __init__(self, out_path, *, map_size: int = 1 << 26, overwrite: bool = False) -> None:
        super().__init__(out_path, overwrite=overwrite)
        self.map_size = max(int(map_size), 1 << 20)

    def _open(self, tmp: Path) -> None:
        self._env = lmdb.open(str(tmp), map_size=self.map_size, subdir=True, meminit=False)

    def _write(self, chunk) -> None:
        while True:
            try:
                with self._env.begin(write=True) as txn:  # aborted on any exception
                    for key, value in chunk:
                        txn.put(key, value)
                return
            except lmdb.MapFullError:
                self._env.set_mapsize(self._env.info()["map_size"] * 2)

    def _sync(self) -> None:
        self._env.sync(True)

    def _close(self) -> None:
        self._env.close()


class LevelDbWriter(_AtomicWriter):
    """A new LevelDB (plyvel, the `leveldb` extra)."""

    def __init__(self, out_path, *, overwrite: bool = False) -> None:
        super().__init__(out_path, overwrite=overwrite)
        self._plyvel = import_plyvel(str(out_path))  # before anything is made

    def _open(self, tmp: Path) -> None:
        self._db = self._plyvel.DB(str(tmp), create_if_missing=True)

    def _write(self, chunk) -> None:
        with self._db.write_batch(sync=False) as batch:  # written whole, or not at all
            for key, value in chunk:
                batch.put(key, value)

    def _sync(self) -> None:
        with self._db.write_batch(sync=True):
            pass  # an empty synced batch flushes the log

    def _close(self) -> None:
        self._db.close()
