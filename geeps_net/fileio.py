"""Atomic file and directory output: a reader sees the old file or the new one, never half."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Replace `path` with `data` in one step; on failure, leave the old file and no temp file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic within one directory
    finally:
        tmp.unlink(missing_ok=True)  # already gone after a successful replace


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory output (an LMDB, say) in a temp dir next to `path`, renamed there at the
    end.

    Yields the temp dir to write into. On an exception the temp dir is removed and `path` is left
    untouched. An existing `path` is an error (as Caffe's converters refuse an existing DB) unless
    `overwrite`, in which case the old directory is moved aside just before the rename, then
    deleted.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists; remove it or choose another output")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # a leftover from a crashed run of this pid
    tmp.mkdir()
    old = path.with_name(f".{path.name}.{os.getpid()}.old")
    try:
        yield tmp
        if not path.exists():
            os.replace(tmp, path)
            return
        os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            os.replace(old, path)  # put the old output back
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone after a successful rename
        _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
