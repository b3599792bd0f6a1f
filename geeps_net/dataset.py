"""Data sets as Caffe keeps them: IDX in, serialized Datum out, mean files.

`convert_mnist` turns MNIST / Fashion-MNIST IDX files into the LMDB (or LevelDB) that Caffe's
convert_mnist_data writes (keys b"%08d", Datum 1 x 28 x 28 uint8 + label); `compute_image_mean`
writes the binaryproto mean of such a DB; `encode_datum` / `decode_datum` make and read records.
The databases themselves are `geeps_net.datumdb`'s, the batch Transformer `geeps_net.transform`'s
(both re-exported here).
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import math
import struct
import zlib
from pathlib import Path

import numpy
from google.protobuf.message import DecodeError
from tqdm import tqdm

from geeps_net.datumdb import (  # noqa: F401  (re-exported)
    check_output,
    db_writer,
    open_db,
    write_db,
)
from geeps_net.errors import DataError
from geeps_net.fileio import write_atomic
from geeps_net.proto import caffe_pb2
from geeps_net.transform import Transformer, read_mean_file  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049  # IDX: 0x0803 = uint8 x 3 dims, 0x0801 = uint8 x 1 dim
_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


# -- IDX ----------------------------------------------------------------------------------------


def read_idx(path, magic: int | None = None) -> numpy.ndarray:
    """The array stored in an IDX file (gzip-compressed or raw), checking `magic` when given.

    Layout (big-endian): 2 zero bytes, a type byte (0x08 = uint8 ...), a dimension count, one int32
    per dimension, then the elements row-major. Raises DataError naming the file on any mismatch.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None
    if raw[:2] == b"\x1f\x8b":  # gzip magic: decide by content, not by the file name
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: corrupt or truncated gzip data ({e})") from None
    if len(raw) < 4:
        raise DataError(f"{path}: truncated IDX file ({len(raw)} bytes, no header)")
    found = int.from_bytes(raw[:4], "big")
    if magic is not None and found != magic:
        raise DataError(f"{path}: IDX magic number {found}, expected {magic}")
    dtype, ndim = _IDX_DTYPES.get(raw[2]), raw[3]
    if raw[:2] != b"\0\0" or dtype is None or ndim == 0:
        raise DataError(f"{path}: not an IDX file (magic number {found})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    need = math.prod(dims) * numpy.dtype(dtype).itemsize
    if len(raw) - header != need:
        raise DataError(
            f"{path}: header says {'x'.join(map(str, dims))} ({need} bytes of data), "
            f"file has {len(raw) - header}{' (truncated)' if len(raw) - header < need else ''}"
        )
    return numpy.frombuffer(raw, dtype, offset=header).reshape(dims)


# -- Datum ----------------------------------------------------------------------------------------


def encode_datum(pixels: numpy.ndarray, label: int) -> bytes:
    """Serialized Datum for a (C, H, W) array: uint8 -> `data` bytes, float -> `float_data`."""
    pixels = numpy.asarray(pixels)
    if pixels.ndim != 3:
        raise ValueError(f"encode_datum wants a (C, H, W) array, got shape {pixels.shape}")
    c, h, w = pixels.shape
    datum = caffe_pb2.Datum(channels=c, height=h, width=w, label=int(label))
    if pixels.dtype == numpy.uint8:
        datum.data = pixels.tobytes()
    else:
        datum.float_data.extend(pixels.astype(numpy.float32).reshape(-1).tolist())
    return datum.SerializeToString()


def decode_datum(value: bytes, where="datum", *, force_color=False, force_gray=False):
    """(pixels (C, H, W) uint8 or float32, label) from a serialized Datum; DataError naming `where`
    (a string, or a function that makes it: a reader of many records pays for it only on error).

    Encoded (JPEG/PNG) data is decoded with Pillow into BGR channel order, as OpenCV gives Caffe.
    """
    datum = caffe_pb2.Datum()
    try:
        datum.ParseFromString(value)
    except DecodeError:
        raise DataError(f"{_text(where)}: corrupt record (not a serialized Datum)") from None
    if datum.encoded:
        return _decode_encoded(datum.data, _text(where), force_color, force_gray), datum.label
    shape = (datum.channels, datum.height, datum.width)
    count = math.prod(shape)
    if datum.data:
        pixels = numpy.frombuffer(datum.data, numpy.uint8)
    else:
        pixels = numpy.asarray(datum.float_data, numpy.float32)
    if pixels.size != count or count == 0:
        message = f"corrupt record ({pixels.size} values for shape {shape})"
        raise DataError(f"{_text(where)}: {message}")
    return pixels.reshape(shape), datum.label


def _text(where) -> str:
    return where() if callable(where) else where


def _decode_encoded(data: bytes, where, force_color, force_gray) -> numpy.ndarray:
    import io

    image_module = import_pillow(where)
    try:
        image = image_module.open(io.BytesIO(data))
        image.load()
    except Exception as e:  # Pillow raises several types for bad bytes
        raise DataError(f"{where}: cannot decode the encoded image ({e})") from None
    return pil_to_chw(image, color=force_color or (not force_gray and image.mode != "L"))


def import_pillow(who: str):
    """PIL.Image, or a DataError telling `who` to install the `image` extra."""
    try:
        from PIL import Image
    except ImportError:
        raise DataError(
            f"{who}: reading images needs Pillow: pip install 'geeps-net[image]'"
        ) from None
    return Image


def pil_to_chw(image, color: bool) -> numpy.ndarray:
    """(C, H, W) uint8 of a Pillow image: 3 channels in BGR order (OpenCV's) when color, else 1."""
    if color:
        return numpy.asarray(image.convert("RGB"))[:, :, ::-1].transpose(2, 0, 1).copy()
    return numpy.asarray(image.convert("L"))[None].copy()


# -- LMDB -----------------------------------------------------------------------------------------


# -- tools ----------------------------------------------------------------------------------------


def read_idx_pair(images_path, labels_path) -> tuple[numpy.ndarray, numpy.ndarray]:
    """(images (N, rows, cols), labels (N,)) of an MNIST-format pair of IDX files; DataError if
    their counts differ."""
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{images_path}: {images.shape[0]} images, "
            f"but {labels_path} has {labels.shape[0]} labels"
        )
    return images, labels


def convert_mnist(
    images_path,
    labels_path,
    out_path,
    backend: str = "lmdb",
    progress: bool = True,
    overwrite: bool = False,
) -> int:
    """IDX images + labels -> LMDB (or LevelDB) of Datum (1, rows, cols, uint8, label), keys
    b"%08d". Returns the record count.

    The same records, byte for byte, as Caffe's convert_mnist_data.
    """
    out = Path(out_path)
    check_output(out, overwrite)
    images, labels = read_idx_pair(images_path, labels_path)
    n, rows, cols = images.shape

    def records():
        datum = caffe_pb2.Datum(channels=1, height=rows, width=cols)
        bar = tqdm(range(n), desc="convert_mnist", unit="img", disable=None if progress else True)
        for i in bar:
            datum.data = images[i].tobytes()
            datum.label = int(labels[i])
            yield b"%08d" % i, datum.SerializeToString()

    # Room for every record plus LMDB's page overhead; the writer grows the map if this is short.
    size = 2 * n * (rows * cols + 64)
    return write_db(out, records(), backend=backend, map_size=size, overwrite=overwrite)


def convert_mnist_siamese(
    images_path,
    labels_path,
    out_path,
    backend: str = "leveldb",
    seed: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> int:
    """IDX images + labels -> pairs for Caffe's siamese example, as its convert_mnist_siamese_data:
    record i (key b"%08d") holds two images drawn at random (by `seed`) as the channels of one
    Datum (2, rows, cols) and label 1 if their classes match, else 0. One pair per image; LevelDB
    by default, as the example's net reads. Returns the record count."""
    out = Path(out_path)
    check_output(out, overwrite)
    images, labels = read_idx_pair(images_path, labels_path)
    n, rows, cols = images.shape
    pairs = numpy.random.default_rng(seed).integers(0, n, (n, 2))

    def records():
        datum = caffe_pb2.Datum(channels=2, height=rows, width=cols)
        bar = tqdm(pairs, desc="convert_mnist_siamese", unit="pair",
                   disable=None if progress else True)  # fmt: skip
        for k, (i, j) in enumerate(bar):
            datum.data = images[i].tobytes() + images[j].tobytes()
            datum.label = int(labels[i] == labels[j])
            yield b"%08d" % k, datum.SerializeToString()

    size = 2 * n * (2 * rows * cols + 64)
    return write_db(out, records(), backend=backend, map_size=size, overwrite=overwrite)


CIFAR_RECORD = 1 + 3 * 32 * 32  # label byte, then 1024 R, 1024 G, 1024 B bytes (row-major)
CIFAR_BATCH = 10_000  # records per file of the binary version
CIFAR_FILES = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}


def convert_cifar(
    input_folder, output_folder, backend: str = "lmdb", progress: bool = True, overwrite=False
) -> dict[str, int]:
    """CIFAR-10's binary version (data_batch_1..5.bin, test_batch.bin) -> databases
    cifar10_train_<backend> and cifar10_test_<backend> in `output_folder`, as Caffe's
    convert_cifar_data writes them: Datum 3 x 32 x 32 (the file's RGB planes) + label, keys b"%05d"
    counting through the five training files. Both are written, or neither. Returns the counts."""
    folder, out = Path(input_folder), Path(output_folder)
    files = {split: [folder / name for name in names] for split, names in CIFAR_FILES.items()}
    for path in (p for paths in files.values() for p in paths):
        if not path.is_file():
            raise DataError(f"{path}: no such file (want CIFAR-10's binary version)")
        if path.stat().st_size != CIFAR_BATCH * CIFAR_RECORD:
            raise DataError(
                f"{path}: {path.stat().st_size} bytes, not {CIFAR_BATCH} records of {CIFAR_RECORD}"
            )
    counts = {}
    with contextlib.ExitStack() as stack:
        for split, paths in files.items():
            db = out / f"cifar10_{split}_{backend.lower()}"
            writer = stack.enter_context(db_writer(db, backend, overwrite=overwrite))
            bar = tqdm(total=len(paths) * CIFAR_BATCH, desc=f"convert_cifar {split}", unit="img",
                       disable=None if progress else True)  # fmt: skip
            for i, path in enumerate(paths):
                records = numpy.fromfile(path, numpy.uint8).reshape(CIFAR_BATCH, CIFAR_RECORD)
                for j, record in enumerate(records):
                    datum = caffe_pb2.Datum(channels=3, height=32, width=32, label=int(record[0]))
                    datum.data = record[1:].tobytes()
                    writer.put(b"%05d" % (i * CIFAR_BATCH + j), datum.SerializeToString())
                bar.update(CIFAR_BATCH)
            bar.close()
            counts[split] = len(paths) * CIFAR_BATCH
    return counts


def compute_image_mean(db_path, out_path, progress: bool = True) -> numpy.ndarray:
    """Mean of every Datum in an LMDB or LevelDB, written as a BlobProto (1, C, H, W) binaryproto.

    Returns the mean (C, H, W).

    As Caffe's compute_image_mean: pixel sums divided by the record count in float32.
    """
    check_output(Path(out_path), overwrite=True, directory=False)
    db = open_db(db_path)
    total, shape = None, None
    try:
        bar = tqdm(
            db.items(),
            total=db.size,
            desc="compute_image_mean",
            unit="img",
            disable=None if progress else True,
        )
        for key, value in bar:
            where = f"{db.path} key {key.decode(errors='replace')!r}"
            pixels, _ = decode_datum(value, where)
            if total is None:
                shape, total = pixels.shape, numpy.zeros(pixels.shape, numpy.float64)
            elif pixels.shape != shape:
                raise DataError(f"{where}: shape {pixels.shape} differs from the first {shape}")
            total += pixels
        count = db.size
    finally:
        db.close()
    mean = total.astype(numpy.float32) / numpy.float32(count)
    blob = caffe_pb2.BlobProto(num=1, channels=shape[0], height=shape[1], width=shape[2])
    blob.data.extend(mean.reshape(-1).tolist())
    try:
        write_atomic(out_path, blob.SerializeToString())
    except OSError as e:
        raise DataError(f"{out_path}: cannot write: {e.strerror or e}") from None
    for c in range(shape[0]):
        log.info("mean_value channel [%d]: %g", c, float(mean[c].mean()))
    return mean
