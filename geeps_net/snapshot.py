"""`.caffemodel` and `.solverstate` files as Caffe writes them: binary protobuf, or HDF5 (`.h5`).

Binary .caffemodel: a NetParameter whose `layer` entries carry `blobs` (BlobProto: shape + packed
float data). Binary .solverstate: a SolverState (iter, learned_net, history, current_step). HDF5
variants, as Caffe's Net::ToHDF5 and SnapshotSolverStateToHDF5: "data/<layer>/<i>" (+ "diff/..."),
and "iter", "learned_net", "current_step", "history/<i>". Every write is atomic
(fileio.write_atomic) and the binary form is byte-stable: the same input gives the same bytes.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy
from google.protobuf.message import DecodeError

from geeps_net.backend import to_host
from geeps_net.errors import SnapshotError
from geeps_net.fileio import write_atomic
from geeps_net.proto import caffe_pb2

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
LEGACY_DIMS = ("num", "channels", "height", "width")


class NetWeights(dict):
    """Layer name -> list of arrays, as read from the weights file `source`, in the file's order.

    `legacy` holds (layer, i) of blobs stored with num/channels/height/width (shape 4-D as stored);
    `types` the layer type the file records. In HDF5 files a blob absent from its layer's group is
    None (Caffe writes only the owner of a shared param there).
    """

    def __init__(self, source) -> None:
        super().__init__()
        self.source = str(source)
        self.legacy: set[tuple[str, int]] = set()
        self.types: dict[str, str] = {}


# -- blobs ---------------------------------------------------------------------------------------


def _blob_proto(array, diff=None) -> caffe_pb2.BlobProto:
    """BlobProto with `shape` and packed float32 `data` (and `diff`), as Blob::ToProto writes it."""
    array = to_host(array)
    proto = caffe_pb2.BlobProto()
    proto.shape.SetInParent()  # present even for a 0-d blob, as mutable_shape() makes it
    proto.shape.dim.extend(array.shape)
    proto.data.extend(numpy.asarray(array, dtype=numpy.float32).ravel().tolist())
    if diff is not None:
        proto.diff.extend(numpy.asarray(to_host(diff), dtype=numpy.float32).ravel().tolist())
    return proto


def _blob_array(proto, where: str) -> tuple[numpy.ndarray, bool]:
    """(array, legacy) from a BlobProto: shape or num/channels/height/width; (double_)data."""
    legacy = any(proto.HasField(f) for f in LEGACY_DIMS)
    shape = tuple(getattr(proto, f) for f in LEGACY_DIMS) if legacy else tuple(proto.shape.dim)
    if len(proto.double_data):
        values = numpy.array(proto.double_data, dtype=numpy.float64)
    else:
        values = numpy.array(proto.data, dtype=numpy.float32)
    if any(d < 0 for d in shape) or values.size != math.prod(shape):
        raise SnapshotError(f"{where}: {values.size} values for shape {shape} (truncated file?)")
    return values.reshape(shape), legacy


# -- .caffemodel ---------------------------------------------------------------------------------


def _layer_proto(item, diffs) -> caffe_pb2.LayerParameter:
    """A layer entry from (name, type, bottoms, tops, arrays) or (LayerParameter, arrays)."""
    if len(item) == 2:
        source, arrays = item
        layer = caffe_pb2.LayerParameter()
        layer.CopyFrom(source)
        del layer.blobs[:]
    else:
        name, type_, bottoms, tops, arrays = item
        layer = caffe_pb2.LayerParameter(name=name, type=type_, bottom=bottoms, top=tops)
    layer_diffs = (diffs or {}).get(layer.name) or [None] * len(arrays)
    for array, diff in zip(arrays, layer_diffs, strict=True):
        layer.blobs.append(_blob_proto(array, diff))
    return layer


def caffemodel_bytes(net_name: str, layers, diffs=None) -> bytes:
    """The binary NetParameter that write_caffemodel writes (see there)."""
    net = caffe_pb2.NetParameter(name=net_name)
    for item in layers:
        net.layer.append(_layer_proto(item, diffs))
    return net.SerializeToString(deterministic=True)


def write_caffemodel(path, net_name: str, layers, diffs: dict | None = None) -> None:
    """Write a .caffemodel (HDF5 when `path` ends in .h5), atomically.

    layers: in net order, each (name, type, bottoms, tops, [arrays]) or (LayerParameter, [arrays])
    (the full layer definition, as Caffe's Net::ToProto keeps it); arrays are stored as float32.
    diffs: layer name -> diff arrays, for snapshot_diff.
    """
    if str(path).endswith(".h5"):
        _write(path, _h5_bytes(lambda f: _h5_caffemodel(f, layers, diffs)))
    else:
        _write(path, caffemodel_bytes(net_name, layers, diffs))


def _parse_binary(path, raw: bytes, message, what: str):
    """`message` parsed from `raw`; a foreign or truncated file is a SnapshotError naming `path`."""
    _refuse_foreign(path, raw, what)
    try:
        message.ParseFromString(raw)
    except DecodeError:
        raise SnapshotError(
            f"{path}: not a binary {what}: corrupt or truncated ({len(raw)} bytes)"
        ) from None
    return message


def read_net_param(path) -> caffe_pb2.NetParameter:
    """A binary NetParameter (.caffemodel, or a binary net) as stored, legacy layers included; a
    truncated or foreign file raises SnapshotError naming it."""
    return _parse_binary(path, _read(path), caffe_pb2.NetParameter(), "NetParameter")


def read_net_weights(path) -> NetWeights:
    """Layer name -> arrays from a .caffemodel: binary NetParameter (current `layer`, legacy V1/V0
    `layers`) or HDF5. A truncated or foreign file raises SnapshotError naming it."""
    raw = _read(path)
    if raw.startswith(HDF5_SIGNATURE):
        return _h5_read(path, raw, _h5_net_weights)
    net = _parse_binary(path, raw, caffe_pb2.NetParameter(), "NetParameter (.caffemodel)")
    if len(net.layer) and len(net.layers):
        raise SnapshotError(
            f"{path}: has both 'layer' and legacy 'layers' entries; Caffe refuses it"
        )
    weights = NetWeights(path)
    for name, type_, blobs in _file_layers(net):
        weights.types[name] = type_
        weights[name] = []
        for i, blob in enumerate(blobs):
            array, legacy = _blob_array(blob, f'{path}: layer "{name}" blob {i}')
            weights[name].append(array)
            if legacy:
                weights.legacy.add((name, i))
    if not any(weights.values()):
        raise SnapshotError(f"{path}: no layer with weights (truncated, or not a .caffemodel?)")
    return weights


def _file_layers(net):
    """(name, type, blobs) per layer: current, V1 (`layers`) or V0 (`layers { layer { ... } }`)."""
    for layer in net.layer:
        yield layer.name, layer.type, layer.blobs
    for v1 in net.layers:
        if v1.HasField("layer"):  # V0: everything lives in the inner message
            yield v1.layer.name, v1.layer.type, v1.layer.blobs
        else:
            yield v1.name, caffe_pb2.V1LayerParameter.LayerType.Name(v1.type), v1.blobs


def match_weights(available: dict, wanted: dict, source=None, types: dict | None = None) -> dict:
    """Caffe's CopyTrainedLayersFrom: the arrays for each wanted layer found by name in the file.

    wanted: layer -> list of blob shapes, in the net. Layers absent from the file are left out (they
    keep their fillers); layers only in the file are ignored. Blob count and shapes must match; a
    blob the file stores with num/channels/height/width matches a shape of at most 4 axes padded in
    front with 1s (Caffe's LegacyShape) and is reshaped to it. types: layer -> type, for messages
    (default: the file's).
    """
    source = source if source is not None else getattr(available, "source", "weights")
    legacy = getattr(available, "legacy", set())
    types = {**getattr(available, "types", {}), **(types or {})}
    matched = {}
    for name, shapes in wanted.items():
        if name not in available:
            continue
        where = f'layer "{name}" ({types.get(name, "?")}): {source}'
        arrays = list(available[name])
        if len(arrays) < len(shapes) and all(a is None for a in arrays[len(arrays) :]):
            arrays += [None] * (
                len(shapes) - len(arrays)
            )  # HDF5: trailing shared params not stored
        if len(arrays) != len(shapes):
            raise SnapshotError(f"{where} has {len(arrays)} blobs; the net wants {len(shapes)}")
        matched[name] = [
            _fit(a, tuple(s), (name, i) in legacy, where, i)
            for i, (a, s) in enumerate(zip(arrays, shapes, strict=True))
        ]
    return matched


def _fit(array, shape: tuple, legacy: bool, where: str, i: int):
    if array is None or array.shape == shape:
        return array
    if legacy and len(shape) <= 4 and array.shape == (1,) * (4 - len(shape)) + shape:
        return array.reshape(shape)
    what = "weights" if i == 0 else f"blob {i}"
    raise SnapshotError(f"{where} has {what} {array.shape}; the net wants {shape}")


# -- .solverstate --------------------------------------------------------------------------------


def solverstate_bytes(it: int, learned_net: str, history: list, current_step: int) -> bytes:
    """The binary SolverState that write_solverstate writes."""
    state = caffe_pb2.SolverState(iter=it, learned_net=str(learned_net), current_step=current_step)
    for h in history:
        state.history.append(_blob_proto(h))
    return state.SerializeToString(deterministic=True)


def write_solverstate(path, it: int, learned_net: str, history: list, current_step: int) -> None:
    """Write a .solverstate (HDF5 when `path` ends in .h5), atomically.

    history: in Caffe's order (the first history of every learnable param, then the second, for
    AdaDelta/Adam); learned_net: the .caffemodel written with it, as Caffe records it.
    """
    if str(path).endswith(".h5"):
        _write(
            path, _h5_bytes(lambda f: _h5_solverstate(f, it, learned_net, history, current_step))
        )
    else:
        _write(path, solverstate_bytes(it, learned_net, history, current_step))


def read_solverstate(path) -> tuple[int, str, list[numpy.ndarray], int]:
    """(iter, learned_net, history arrays, current_step) from a binary or HDF5 .solverstate.

    History blobs come back in their stored shapes (a legacy file's are 4-D); reshape them by count.
    """
    raw = _read(path)
    if raw.startswith(HDF5_SIGNATURE):
        return _h5_read(path, raw, _h5_solverstate_read)
    state = _parse_binary(path, raw, caffe_pb2.SolverState(), "SolverState (.solverstate)")
    if not state.HasField("iter"):
        raise SnapshotError(f"{path}: no iteration recorded (truncated, or not a .solverstate?)")
    history = [_blob_array(h, f"{path}: history blob {i}")[0] for i, h in enumerate(state.history)]
    return state.iter, state.learned_net, history, state.current_step


# -- HDF5 ----------------------------------------------------------------------------------------


def _h5py():
    try:
        import h5py
    except ImportError:
        raise SnapshotError("HDF5 snapshots need h5py: pip install 'geeps-net[hdf5]'") from None
    return h5py


def _h5_bytes(fill) -> bytes:
    """An HDF5 file built in memory by `fill(file)`, as bytes (then written atomically)."""
    buffer = io.BytesIO()
    with _h5py().File(buffer, "w") as f:
        fill(f)
    return buffer.getvalue()


def _h5_read(path, raw: bytes, parse):
    h5py = _h5py()
    try:
        with h5py.File(io.BytesIO(raw), "r") as f:
            return parse(path, f)
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise SnapshotError(f"{path}: unreadable HDF5 snapshot: {e}") from None


def _h5_dataset(group, name: str, array) -> None:
    group.create_dataset(name, data=numpy.asarray(to_host(array), numpy.float32), track_times=False)


def _h5_caffemodel(f, layers, diffs) -> None:
    data = f.create_group("data")
    diff = f.create_group("diff") if diffs else None
    for item in layers:
        name, arrays = (item[0].name, item[1]) if len(item) == 2 else (item[0], item[4])
        group = data.create_group(name)
        for i, array in enumerate(arrays):
            _h5_dataset(group, str(i), array)
        if diff is not None:
            group = diff.create_group(name)
            for i, d in enumerate(diffs.get(name, [])):
                _h5_dataset(group, str(i), d)


def _h5_net_weights(path, f) -> NetWeights:
    if "data" not in f:
        raise SnapshotError(f'{path}: HDF5 file without a "data" group (not a .caffemodel.h5?)')
    h5py = _h5py()
    found: dict[str, dict[int, numpy.ndarray]] = {}

    def visit(name, obj):  # nested groups only where a layer name holds "/"
        if isinstance(obj, h5py.Dataset):
            layer, _, index = name.rpartition("/")
            if index.isdigit():
                found.setdefault(layer, {})[int(index)] = obj[()]
        elif not any(isinstance(child, h5py.Group) for child in obj.values()):
            found.setdefault(name, {})

    f["data"].visititems(visit)
    weights = NetWeights(path)
    for layer, blobs in found.items():
        weights[layer] = [blobs.get(i) for i in range(max(blobs, default=-1) + 1)]
    if not any(weights.values()):
        raise SnapshotError(f"{path}: no layer with weights (truncated, or not a .caffemodel?)")
    return weights


def _h5_solverstate(f, it, learned_net, history, current_step) -> None:
    f.create_dataset("iter", data=numpy.int32(it), track_times=False)
    name = str(learned_net).encode()
    # a NUL-terminated fixed-length string, as H5LTmake_dataset_string writes it
    f.create_dataset("learned_net", data=numpy.array(name, f"S{len(name) + 1}"), track_times=False)
    f.create_dataset("current_step", data=numpy.int32(current_step), track_times=False)
    group = f.create_group("history")
    for i, h in enumerate(history):
        _h5_dataset(group, str(i), h)


def _h5_solverstate_read(path, f):
    if "iter" not in f:
        raise SnapshotError(f'{path}: HDF5 file without "iter" (not a .solverstate.h5?)')
    learned = f["learned_net"][()] if "learned_net" in f else b""
    learned = learned.decode() if isinstance(learned, bytes) else str(learned)
    step = int(f["current_step"][()]) if "current_step" in f else 0
    group = f["history"] if "history" in f else {}
    history = [group[str(i)][()] for i in range(len(group))]
    return int(f["iter"][()]), learned.rstrip("\0"), history, step


# -- files ---------------------------------------------------------------------------------------

_SIGNATURES = {  # leading bytes of files people hand over by mistake -> what they are
    b"\x89PNG\r\n\x1a\n": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"\x1f\x8b": "gzip data",
    b"PK\x03\x04": "a zip archive (.npz?)",
    b"\x93NUMPY": "a NumPy .npy file",
}


def _refuse_foreign(path, raw: bytes, kind: str) -> None:
    """Name a file of another kind (image, archive, text) before protobuf tries to parse it."""
    what = next((name for sig, name in _SIGNATURES.items() if raw.startswith(sig)), None)
    if what is None and raw and _looks_like_text(raw):
        what = "text (a prototxt?)"
    if what is not None:
        raise SnapshotError(f"{path}: not a binary {kind}: {what}")


def _looks_like_text(raw: bytes) -> bool:
    """True when the first KiB is printable UTF-8: no binary protobuf of ours starts that way
    (a serialized NetParameter begins with field tag 0x0a and a length byte)."""
    head = raw[:1024]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\t\r\n" for c in text)


def _read(path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise SnapshotError(f"{path}: cannot read: {e.strerror or e}") from None


def _write(path, data: bytes) -> None:
    try:
        write_atomic(Path(path), data)
    except OSError as e:
        raise SnapshotError(f"{path}: cannot write: {e.strerror or e}") from None
