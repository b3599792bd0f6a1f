"""HDF5Data and HDF5Output (h5py, extra `hdf5`, imported only when such a layer is built)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy

from geeps_net.errors import DataError
from geeps_net.layer import Layer, register


def _import_h5py(layer: Layer):
    try:
        import h5py
    except ImportError:
        raise layer.error("needs h5py: pip install 'geeps-net[hdf5]'") from None
    return h5py


@register("HDF5Data")
class HDF5DataLayer(Layer):
    """Rows of HDF5 datasets, one per top, named like the top: top j (N, *dataset_j.shape[1:]).

    `source` is a text file listing .h5 files, one per line (relative paths are tried from the
    working directory, then from the list's folder). Each file is loaded whole; rows are read in
    order, or in a fresh random order per file and a fresh file order per epoch with `shuffle`.
    A worker of shard (k, n) takes the rows whose stream offset is k mod n, as Caffe's Skip().
    """

    num_bottoms, num_tops = 0, (1, None)
    has_backward = False
    backward_reads = frozenset()

    def setup(self, bottoms, tops):
        p = self.layer_param.hdf5_data_param
        self.h5py = _import_h5py(self)
        if self.layer_param.HasField("transform_param"):
            raise self.error("HDF5Data does not transform data; remove transform_param")
        if p.batch_size <= 0:
            raise self.error("hdf5_data_param.batch_size must be positive")
        self.batch_size, self.shuffle = p.batch_size, p.shuffle
        self.names = [t.name for t in tops]
        self.files = self._read_list(Path(p.source))
        k, n = self.shard
        if not 0 <= k < n:
            raise self.error(f"bad data shard {k} of {n}")
        self._file_order = list(range(len(self.files)))
        if self.shuffle:
            self._file_order = self.rng.permutation(len(self.files)).tolist()
        self._records, self._file = 0, 0
        self._load(self._file_order[0])
        self.row_shapes = [a.shape[1:] for a in self._arrays]

    def _read_list(self, source: Path) -> list[Path]:
        try:
            lines = [line.strip() for line in source.read_text().splitlines()]
        except OSError as e:
            raise self._data_error(f"source {source}: {e.strerror or e}") from None
        files = [Path(line) for line in lines if line]
        if not files:
            raise self._data_error(f"source {source}: lists no HDF5 files")
        return [f if f.is_absolute() or f.exists() else source.parent / f for f in files]

    def _data_error(self, message: str) -> DataError:
        return DataError(f'layer "{self.name}" ({self.type}): {message}')

    def _load(self, index: int, row_order=None) -> None:
        """Load file `index` whole; rows in order, shuffled (a fresh permutation), or as given."""
        path = self.files[index]
        try:
            with self.h5py.File(path, "r") as f:
                missing = [name for name in self.names if name not in f]
                if missing:
                    raise self._data_error(f"{path}: no dataset {missing[0]!r} (has {sorted(f)})")
                self._arrays = [numpy.asarray(f[name][...], self.dtype) for name in self.names]
        except OSError as e:
            raise self._data_error(f"{path}: cannot read HDF5 file ({e})") from None
        rows = {a.shape[0] if a.ndim else 0 for a in self._arrays}
        if len(rows) != 1 or 0 in rows:
            raise self._data_error(f"{path}: datasets {self.names} need the same nonzero row count")
        if hasattr(self, "row_shapes") and [a.shape[1:] for a in self._arrays] != self.row_shapes:
            raise self._data_error(f"{path}: row shapes differ from those of the first file")
        self._rows = rows.pop()
        self._row = 0
        if row_order is not None:
            self._row_order = list(row_order)
        elif self.shuffle:
            self._row_order = self.rng.permutation(self._rows).tolist()
        else:
            self._row_order = list(range(self._rows))

    def reshape(self, bottoms, tops):
        for top, shape in zip(tops, self.row_shapes, strict=True):
            top.reshape((self.batch_size, *shape))

    def forward(self, xp, bottoms, tops):
        """Copy the next batch_size rows (skipping other shards' rows) into the tops."""
        k, n = self.shard
        out = [numpy.empty((self.batch_size, *s), self.dtype) for s in self.row_shapes]
        for i in range(self.batch_size):
            while self._records % n != k:
                self._next()
            for j, array in enumerate(self._arrays):
                out[j][i] = array[self._row_order[self._row]]
            self._next()
        for top, array in zip(tops, out, strict=True):
            top.data[...] = xp.asarray(array)

    def _next(self) -> None:
        """Advance one row; at a file's end move to the next file (new epoch: reshuffle files)."""
        self._records += 1
        self._row += 1
        if self._row < self._rows:
            return
        if len(self.files) > 1:
            self._file += 1
            if self._file == len(self.files):
                self._file = 0
                if self.shuffle:
                    self._file_order = self.rng.permutation(len(self.files)).tolist()
            self._load(self._file_order[self._file])
        else:
            self._row = 0
            if self.shuffle:
                self._row_order = self.rng.permutation(self._rows).tolist()

    def state(self) -> dict:
        """Read position (file, row, orders) and RNG state, JSON-friendly."""
        return copy.deepcopy(
            {
                "records": self._records,
                "file": self._file,
                "row": self._row,
                "file_order": self._file_order,
                "row_order": self._row_order,
                "rng": self.rng.bit_generator.state,
            }
        )

    def restore(self, state: dict) -> None:
        """Continue from a `state()`."""
        self._records, self._file = int(state["records"]), int(state["file"])
        self._file_order = [int(i) for i in state["file_order"]]
        self._load(self._file_order[self._file], state["row_order"])
        self._row = int(state["row"])
        self.rng.bit_generator.state = copy.deepcopy(state["rng"])


@register("HDF5Output")
class HDF5OutputLayer(Layer):
    """Appends bottom 0 to dataset "data" and bottom 1 to "label" of file_name, batch after batch.

    The file is created (truncated) at setup, as Caffe does, and flushed after every forward.
    """

    num_bottoms, num_tops = 2, 0
    has_backward = False
    backward_reads = frozenset()

    def setup(self, bottoms, tops):
        h5py = _import_h5py(self)
        self.file_name = self.layer_param.hdf5_output_param.file_name
        if not self.file_name:
            raise self.error("hdf5_output_param.file_name is required")
        try:
            self.file = h5py.File(self.file_name, "w")
        except OSError as e:
            raise DataError(f'layer "{self.name}" ({self.type}): {self.file_name}: {e}') from None

    def reshape(self, bottoms, tops):
        if bottoms[0].shape[:1] != bottoms[1].shape[:1]:
            raise self.error(f"data {bottoms[0].shape} and label {bottoms[1].shape} differ in num")

    def forward(self, xp, bottoms, tops):
        from geeps_net.backend import to_host

        for name, blob in zip(("data", "label"), bottoms, strict=True):
            value = to_host(blob.data)
            if name not in self.file:
                self.file.create_dataset(name, data=value, maxshape=(None, *value.shape[1:]))
                continue
            dataset = self.file[name]
            start = dataset.shape[0]
            dataset.resize(start + value.shape[0], axis=0)
            dataset[start:] = value
        self.file.flush()

    def close(self):
        if getattr(self, "file", None) is not None:
            self.file.close()
            self.file = None
