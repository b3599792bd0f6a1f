"""Image lists ("path label" per line) and Caffe's convert_imageset: images -> LMDB of Datum.

    count = convert_imageset("photos/", "train.txt", "train_lmdb", resize=(256, 256), shuffle=True)

The ImageData layer reads the same list files (`read_image_list`, `load_image`). Images are read
with Pillow (the `image` extra) in OpenCV's channel order, BGR, as Caffe stores them; resizing is
Pillow's bilinear filter, which on downscaling averages more pixels than OpenCV's INTER_LINEAR.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy
from tqdm import tqdm

from geeps_net.dataset import import_pillow, pil_to_chw
from geeps_net.datumdb import check_output, write_db
from geeps_net.errors import DataError
from geeps_net.proto import caffe_pb2


def read_image_list(source) -> list[tuple[str, int, int]]:
    """(path, label, line number) per non-blank line of `source`; the label follows the last
    space, so paths may hold spaces. DataError naming `source:LINE` on a malformed line."""
    try:
        text = Path(source).read_text()
    except OSError as e:
        raise DataError(f"source {source}: {e.strerror or e}") from None
    lines = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        path, _, label = line.rstrip().rpartition(" ")
        try:
            lines.append((path, int(label), number))
        except ValueError:
            raise DataError(f'{source}:{number}: expected "path label"') from None
    if not lines:
        raise DataError(f"source {source}: the list is empty")
    return lines


def load_image(image_module, path, size: tuple[int, int] | None, color: bool) -> numpy.ndarray:
    """(C, H, W) uint8 of the image at `path`, resized to `size` = (height, width) if given; 3
    BGR channels when `color`, else 1. DataError naming the file if it cannot be read."""
    return read_image(image_module, path, size, color)[0]


def read_image(image_module, path, size, color: bool):
    """load_image's pixels, with the file as opened (its Pillow image: format, mode) and its
    bytes, read once."""
    try:
        raw = Path(path).read_bytes()
        image = image_module.open(io.BytesIO(raw))
        shaped = image.convert("RGB" if color else "L")  # then resize, as OpenCV reads for Caffe
        if size:
            shaped = shaped.resize((size[1], size[0]), image_module.Resampling.BILINEAR)
        return pil_to_chw(shaped, color=color), image, raw
    except OSError as e:
        raise DataError(f"cannot read image {path}: {e}") from None


def image_format(image_module, encode_type: str) -> str:
    """Pillow's format name for a file extension ("png", "jpg", ...); DataError if unknown."""
    formats = image_module.registered_extensions()
    name = formats.get("." + encode_type.lower().lstrip("."))
    if name is None or name not in image_module.SAVE:
        raise DataError(f"encode_type {encode_type!r}: Pillow cannot write this format")
    return name


def convert_imageset(
    root_folder,
    list_file,
    out_path,
    *,
    gray: bool = False,
    shuffle: bool = False,
    seed: int | None = None,
    resize: tuple[int, int] | None = None,
    check_size: bool = False,
    encoded: bool = False,
    encode_type: str = "",
    backend: str = "lmdb",
    progress: bool = True,
    overwrite: bool = False,
) -> int:
    """The images of `list_file` (paths relative to `root_folder`) -> a new LMDB (or LevelDB:
    `backend`) of Datum, keys
    b"%08d_<path>" in list order (shuffled first if `shuffle`, by `seed`); returns the count.

    As Caffe's convert_imageset: raw Datums hold C x H x W uint8 pixels; `encoded` stores the
    image file itself (re-encoded as `encode_type` when that differs from the file's extension or
    the image is resized); `check_size` requires every image to have the first one's shape.
    Unlike Caffe, an unreadable image is an error naming LIST:LINE, and no DB is written.
    """
    image_module = import_pillow("convert_imageset")
    out = Path(out_path)
    check_output(out, overwrite)
    lines = read_image_list(list_file)
    if resize is not None and (resize[0] == 0) != (resize[1] == 0):
        raise DataError("convert_imageset: resize_height and resize_width must be set together")
    resize = resize if resize and resize[0] else None
    fmt = image_format(image_module, encode_type) if encoded and encode_type else None
    if shuffle:
        lines = [lines[i] for i in numpy.random.default_rng(seed).permutation(len(lines))]
    reader = _DatumReader(image_module, str(root_folder), resize, not gray, encoded, fmt)

    def records() -> Iterator[tuple[bytes, bytes]]:
        first = None
        bar = tqdm(lines, desc="convert_imageset", unit="img", disable=None if progress else True)
        for index, (path, label, number) in enumerate(bar):
            where = f"{list_file}:{number}"
            try:
                datum, shape = reader.datum(path, label)
            except DataError as e:
                raise DataError(f"{where}: {e}") from None
            first = first or shape
            if check_size and shape != first:
                raise DataError(f"{where}: {path} has shape {shape}, the first image {first}")
            yield f"{index:08d}_{path}".encode(), datum.SerializeToString()

    return write_db(out, records(), backend=backend, overwrite=overwrite)


class _DatumReader:
    """One image file -> (Datum, (C, H, W)) under convert_imageset's options."""

    def __init__(self, image_module, root: str, resize, color: bool, encoded: bool, fmt) -> None:
        self.image, self.root, self.resize, self.color = image_module, root, resize, color
        self.encoded, self.fmt = encoded, fmt

    def datum(self, path: str, label: int) -> tuple[caffe_pb2.Datum, tuple[int, int, int]]:
        pixels, own, raw = read_image(self.image, self.root + path, self.resize, self.color)
        if self.encoded:
            data = self._file_bytes(own, raw, pixels)
            datum = caffe_pb2.Datum(data=data, label=label, encoded=True)
        else:
            c, h, w = pixels.shape
            datum = caffe_pb2.Datum(channels=c, height=h, width=w, label=label)
            datum.data = pixels.tobytes()
        return datum, pixels.shape

    def _file_bytes(self, own, raw: bytes, pixels: numpy.ndarray) -> bytes:
        """The file itself when its format, size and colour already are what was asked for
        (Caffe's ReadFileToDatum), else the pixels encoded in the wanted format (without
        encode_type, the file's own). Caffe keeps a colour file under -gray; this converts it."""
        fmt = self.fmt or own.format
        matches_color = (own.mode not in ("L", "1", "I;16", "I", "F")) == self.color
        if fmt == own.format and not self.resize and matches_color:
            return raw
        rgb = pixels[::-1].transpose(1, 2, 0) if self.color else pixels[0]  # BGR -> RGB
        buffer = io.BytesIO()
        self.image.fromarray(numpy.ascontiguousarray(rgb)).save(buffer, format=fmt)
        return buffer.getvalue()
