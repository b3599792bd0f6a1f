"""IDX reading, convert_mnist, LMDB writing, compute_image_mean and the batch Transformer."""

import gzip
import itertools
import struct

import lmdb
import numpy
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from geeps_net.dataset import (
    compute_image_mean,
    convert_mnist,
    decode_datum,
    encode_datum,
    read_idx,
)
from geeps_net.datumdb import backend_of, open_db, write_db
from geeps_net.errors import DataError
from geeps_net.proto import caffe_pb2
from geeps_net.transform import Transformer, read_mean_file
from tests.conftest import lmdb_records

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def write_idx(path, array, magic, gz=False):
    """An IDX file written by hand: big-endian magic, dims, then the uint8 bytes."""
    raw = struct.pack(">i", magic) + struct.pack(f">{array.ndim}i", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def mnist_files(tmp_path, n=7, rows=4, cols=3, gz=True, seed=0):
    rng = numpy.random.default_rng(seed)
    images = rng.integers(0, 256, (n, rows, cols), dtype=numpy.uint8)
    labels = rng.integers(0, 10, n, dtype=numpy.uint8)
    suffix = ".gz" if gz else ""
    return (
        write_idx(tmp_path / f"img-idx3-ubyte{suffix}", images, 2051, gz),
        write_idx(tmp_path / f"lbl-idx1-ubyte{suffix}", labels, 2049, gz),
        images,
        labels,
    )


def caffe_datum_bytes(pixels, label, rows, cols):
    """Datum as protobuf's wire format lays it out (fields 1-5 in order), written by hand."""

    def varint(v):
        out = b""
        while True:
            byte, v = v & 0x7F, v >> 7
            out += bytes([byte | (0x80 if v else 0)])
            if not v:
                return out

    data = pixels.tobytes()
    return (
        b"\x08\x01\x10" + varint(rows) + b"\x18" + varint(cols)
        + b"\x22" + varint(len(data)) + data + b"\x28" + varint(label)
    )  # fmt: skip


# -- IDX and convert_mnist ------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_convert_mnist_round_trip(tmp_path, gz):
    images_path, labels_path, images, labels = mnist_files(tmp_path, gz=gz)
    out = tmp_path / "db"
    assert convert_mnist(images_path, labels_path, out, progress=False) == len(images)
    records = lmdb_records(out)
    assert [k for k, _ in records] == [b"%08d" % i for i in range(len(images))]
    for i, (_, value) in enumerate(records):
        assert value == caffe_datum_bytes(images[i], int(labels[i]), 4, 3)  # Caffe's bytes exactly
        datum = caffe_pb2.Datum.FromString(value)
        assert (datum.channels, datum.height, datum.width, datum.label) == (1, 4, 3, labels[i])
        pixels, label = decode_datum(value)
        assert_array_equal(pixels, images[i][None])
        assert label == labels[i]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left


def test_read_idx_gz_and_raw_agree(tmp_path):
    a = numpy.arange(24, dtype=numpy.uint8).reshape(2, 3, 4)
    gz = read_idx(write_idx(tmp_path / "a.gz", a, 2051, gz=True), 2051)
    raw = read_idx(write_idx(tmp_path / "a", a, 2051), 2051)
    assert_array_equal(gz, a)
    assert_array_equal(raw, a)


def test_bad_magic_names_the_file(tmp_path):
    images_path, labels_path, *_ = mnist_files(tmp_path)
    with pytest.raises(DataError, match=r"lbl-idx1-ubyte.gz: IDX magic number 2049, expected 2051"):
        convert_mnist(labels_path, images_path, tmp_path / "db", progress=False)
    assert not (tmp_path / "db").exists()


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_file(tmp_path, gz):
    images_path, labels_path, *_ = mnist_files(tmp_path, gz=gz)
    raw = images_path.read_bytes()
    images_path.write_bytes(raw[: len(raw) - 5])
    with pytest.raises(DataError, match=r"img-idx3-ubyte.*truncated") as info:
        convert_mnist(images_path, labels_path, tmp_path / "db", progress=False)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "db").exists()


def test_count_mismatch(tmp_path):
    images_path, _, _, labels = mnist_files(tmp_path, gz=False)
    short = write_idx(tmp_path / "short", labels[:-1], 2049)
    with pytest.raises(DataError, match=r"7 images, but .*short has 6 labels"):
        convert_mnist(images_path, short, tmp_path / "db", progress=False)


def test_missing_input(tmp_path):
    with pytest.raises(DataError, match=r"nothing.gz: cannot read"):
        read_idx(tmp_path / "nothing.gz")


def test_refuses_to_overwrite_unless_asked(tmp_path):
    images_path, labels_path, images, _ = mnist_files(tmp_path)
    out = tmp_path / "db"
    convert_mnist(images_path, labels_path, out, progress=False)
    with pytest.raises(DataError, match="already exists"):
        convert_mnist(images_path, labels_path, out, progress=False)
    images_path, labels_path, images, _ = mnist_files(tmp_path, n=3, seed=1)
    assert convert_mnist(images_path, labels_path, out, progress=False, overwrite=True) == 3
    assert len(lmdb_records(out)) == 3


def test_failure_leaves_nothing_half_written(tmp_path):
    def records():
        for i in range(2500):  # fails after two committed chunks
            if i == 2100:
                raise RuntimeError("disk on fire")
            yield b"%08d" % i, b"x" * 10

    with pytest.raises(RuntimeError, match="disk on fire"):
        write_db(tmp_path / "db", records())
    assert list(tmp_path.iterdir()) == []


def test_a_failed_last_commit_leaves_nothing(tmp_path):
    with pytest.raises(lmdb.BadValsizeError):  # the long key fails in the commit at the end
        write_db(tmp_path / "db", [(b"a", b"1"), (b"k" * 600, b"2")])
    assert list(tmp_path.iterdir()) == []


def test_map_grows_when_full(tmp_path):
    records = ((b"%08d" % i, bytes(40_000)) for i in range(100))  # 4 MB into a 1 MB map
    assert write_db(tmp_path / "db", records, map_size=1) == 100
    assert len(lmdb_records(tmp_path / "db")) == 100


@pytest.mark.parametrize("backend", ["lmdb", "leveldb"])
def test_convert_mnist_to_either_backend(tmp_path, backend):
    if backend == "leveldb":
        pytest.importorskip("plyvel", reason="plyvel (extra 'leveldb') is not installed")
    images_path, labels_path, images, labels = mnist_files(tmp_path)
    out = tmp_path / "db"
    assert convert_mnist(images_path, labels_path, out, backend, progress=False) == len(images)
    assert backend_of(out) == backend
    with open_db(out) as db:
        got = list(db.items())
    assert [k for k, _ in got] == [b"%08d" % i for i in range(len(images))]
    for (_, value), image, label in zip(got, images, labels):
        pixels, got_label = decode_datum(value)
        assert_array_equal(pixels[0], image) and got_label == label
    with pytest.raises(DataError, match="backend 'hdf5' is not one of lmdb, leveldb"):
        convert_mnist(images_path, labels_path, tmp_path / "db2", backend="hdf5")


# -- Datum and mean file --------------------------------------------------------------------------


def test_datum_float_data_and_corrupt():
    x = numpy.arange(6, dtype=numpy.float32).reshape(1, 2, 3) / 4
    pixels, label = decode_datum(encode_datum(x, 5))
    assert_array_equal(pixels, x)
    assert label == 5
    with pytest.raises(DataError, match="k7: corrupt record"):
        decode_datum(b"\xff\xff\xff", "k7")
    short = caffe_pb2.Datum(channels=1, height=2, width=3, data=b"12345").SerializeToString()
    with pytest.raises(DataError, match=r"5 values for shape \(1, 2, 3\)"):
        decode_datum(short)


def test_compute_image_mean(tmp_path):
    rng = numpy.random.default_rng(3)
    items = rng.integers(0, 256, (5, 3, 2, 4), dtype=numpy.uint8)
    write_db(tmp_path / "db", ((b"%08d" % i, encode_datum(x, i)) for i, x in enumerate(items)))
    mean = compute_image_mean(tmp_path / "db", tmp_path / "mean.binaryproto", progress=False)
    expected = items.astype(numpy.float64).sum(0) / 5
    assert_allclose(mean, expected, rtol=1e-6)
    blob = caffe_pb2.BlobProto.FromString((tmp_path / "mean.binaryproto").read_bytes())
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 3, 2, 4)
    assert_allclose(read_mean_file(tmp_path / "mean.binaryproto"), expected, rtol=1e-6)


@pytest.mark.parametrize("backend", ["lmdb", "leveldb"])
def test_datum_db_shared_and_missing(tmp_path, backend):
    if backend == "leveldb":
        pytest.importorskip("plyvel", reason="plyvel (extra 'leveldb') is not installed")
    zero = encode_datum(numpy.zeros((1, 1, 1), numpy.uint8), 0)
    write_db(tmp_path / "db", [(b"a", zero), (b"b", zero)], backend=backend)
    # one LMDB environment / one LevelDB lock holder per process: opens are shared and counted
    first, second = open_db(tmp_path / "db"), open_db(tmp_path / "db", backend=backend)
    assert first.handle is second.handle and first.size == second.size == 2
    first.close()
    assert second.first()[0] == b"a"
    cycle = second.cycle(1)
    assert [cycle.next()[0] for _ in range(3)] == [b"b", b"a", b"b"]  # wraps around
    cycle.close()
    second.close()
    with pytest.raises(DataError, match=r"who: source .*nope: no such file"):
        open_db(tmp_path / "nope", "who")


def test_leveldb_writer_failure_leaves_nothing(tmp_path):
    pytest.importorskip("plyvel", reason="plyvel (extra 'leveldb') is not installed")

    def records():
        for i in range(1500):  # fails after one written batch
            if i == 1200:
                raise RuntimeError("disk on fire")
            yield b"%08d" % i, b"x"

    with pytest.raises(RuntimeError, match="disk on fire"):
        write_db(tmp_path / "db", records(), backend="leveldb")
    assert list(tmp_path.iterdir()) == []


# -- Transformer ----------------------------------------------------------------------------------


def transform_param(**fields):
    return caffe_pb2.TransformationParameter(**fields)


def caffe_item(x, mean, scale, crop, h_off, w_off, mirror):
    """Caffe's DataTransformer::Transform for one item, element by element."""
    c_n, h_n, w_n = x.shape
    height, width = (crop, crop) if crop else (h_n, w_n)
    out = numpy.zeros((c_n, height, width))
    for c, h, w in itertools.product(range(c_n), range(height), range(width)):
        m = 0.0 if mean is None else (mean[c, h_off + h, w_off + w] if mean.ndim == 3 else mean[c])
        out[c, h, width - 1 - w if mirror else w] = (x[c, h_off + h, w_off + w] - m) * scale
    return out


@pytest.fixture
def batch():
    return numpy.random.default_rng(7).integers(0, 256, (12, 2, 5, 6), dtype=numpy.uint8)


@pytest.fixture
def mean_file(tmp_path):
    mean = numpy.random.default_rng(8).uniform(0, 255, (2, 5, 6)).astype(numpy.float32)
    blob = caffe_pb2.BlobProto(num=1, channels=2, height=5, width=6, data=mean.reshape(-1))
    path = tmp_path / "mean.binaryproto"
    path.write_bytes(blob.SerializeToString())
    return str(path), mean


def test_transform_test_phase_centre_crop_no_mirror(batch, mean_file):
    path, mean = mean_file
    param = transform_param(crop_size=3, mirror=True, scale=0.5, mean_file=path)
    t = Transformer(param, TEST, numpy.random.default_rng(0), "float64")
    out = t(batch)
    assert out.shape == (12, 2, 3, 3)
    for i, x in enumerate(batch):  # centre: ((5-3)//2, (6-3)//2) = (1, 1); TEST never mirrors
        assert_allclose(out[i], caffe_item(x, mean, 0.5, 3, 1, 1, False), rtol=1e-6)


@pytest.mark.parametrize("crop", [0, 4])
def test_transform_train_random_crop_and_mirror(batch, mean_file, crop):
    path, mean = mean_file
    param = transform_param(crop_size=crop, mirror=True, scale=0.25, mean_file=path)
    out = Transformer(param, TRAIN, numpy.random.default_rng(1), "float64")(batch)
    seen = set()
    for i, x in enumerate(batch):  # each item is Caffe's transform for some offsets and flip
        offsets = itertools.product(range(5 - crop + 1), range(6 - crop + 1)) if crop else [(0, 0)]
        matches = [
            (h, w, m)
            for (h, w), m in itertools.product(offsets, (False, True))
            if numpy.allclose(out[i], caffe_item(x, mean, 0.25, crop, h, w, m), rtol=1e-6)
        ]
        assert matches, f"item {i} is no crop/mirror of its input"
        seen.update(matches)
    assert {m for *_, m in seen} == {False, True}  # p = 0.5 over 12 items
    if crop:
        assert len({(h, w) for h, w, _ in seen}) > 2


def test_transform_same_seed_same_batch(batch):
    param = transform_param(crop_size=3, mirror=True)
    a = Transformer(param, TRAIN, numpy.random.default_rng(5))(batch)
    b = Transformer(param, TRAIN, numpy.random.default_rng(5))(batch)
    assert a.dtype == numpy.float32
    assert_array_equal(a, b)


@pytest.mark.parametrize("values", [[10.0], [10.0, 20.0]])
def test_transform_mean_value(batch, values):
    param = transform_param(mean_value=values, scale=2.0)
    out = Transformer(param, TRAIN, numpy.random.default_rng(0), "float64")(batch)
    mean = numpy.array(values * (2 // len(values)))
    for i, x in enumerate(batch):
        assert_allclose(out[i], caffe_item(x, mean, 2.0, 0, 0, 0, False))


def test_transform_errors(batch, mean_file, tmp_path):
    path, _ = mean_file
    rng = numpy.random.default_rng(0)
    with pytest.raises(DataError, match="both mean_file and mean_value"):
        Transformer(transform_param(mean_file=path, mean_value=[1]), TRAIN, rng)
    with pytest.raises(DataError, match=r"3 mean_value\(s\) for 2 channels"):
        Transformer(transform_param(mean_value=[1, 2, 3]), TRAIN, rng)(batch)
    with pytest.raises(DataError, match=r"crop_size 6 is larger than the data \(5 x 6\)"):
        Transformer(transform_param(crop_size=6), TEST, rng)(batch)
    with pytest.raises(DataError, match=r"mean shape \(2, 5, 6\) differs from the data's"):
        Transformer(transform_param(mean_file=path), TEST, rng)(batch[:, :, :4])
    with pytest.raises(DataError, match="missing.binaryproto: cannot read"):
        Transformer(transform_param(mean_file=str(tmp_path / "missing.binaryproto")), TEST, rng)


def test_convert_mnist_siamese_pairs(tmp_path, run):
    pytest.importorskip("plyvel", reason="plyvel (extra 'leveldb') is not installed")
    from geeps_net.dataset import convert_mnist_siamese

    images_path, labels_path, images, labels = mnist_files(tmp_path, n=40)
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        status, err = run("convert_mnist_siamese_data", "-seed", seed, images_path, labels_path,
                          name)  # fmt: skip
        assert status == 0 and "Processed 40 pairs." in err
    assert backend_of(tmp_path / "a") == "leveldb"  # the example's net reads LevelDB
    pairs = {}
    for name in "abc":
        with open_db(tmp_path / name) as db:
            pairs[name] = list(db.items())
    assert pairs["a"] == pairs["b"] != pairs["c"]  # the seed fixes the pairs
    assert [k for k, _ in pairs["a"]] == [b"%08d" % i for i in range(40)]
    by_image = {image.tobytes(): int(label) for image, label in zip(images, labels)}
    same = 0
    for _, value in pairs["a"]:
        pixels, sim = decode_datum(value)
        assert pixels.shape == (2, 4, 3)
        first, second = (by_image[p.tobytes()] for p in pixels)  # both are images of the set
        assert sim == int(first == second)
        same += sim
    assert 0 < same < 40
    count = convert_mnist_siamese(images_path, labels_path, tmp_path / "l", "lmdb", progress=False)
    assert count == 40 and backend_of(tmp_path / "l") == "lmdb"


# -- CIFAR-10 -------------------------------------------------------------------------------------


@pytest.fixture
def cifar_bin(tmp_path, monkeypatch):
    """CIFAR-10's binary version in miniature: 3 records per file (the real files hold 10,000),
    record r of file f = label (f + r) % 10, then bytes counting from 7 f + r."""
    import geeps_net.dataset as dataset

    monkeypatch.setattr(dataset, "CIFAR_BATCH", 3)
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for f, name in enumerate(names):
        records = [
            bytes([(f + r) % 10]) + ((7 * f + r + numpy.arange(3072)) % 256).astype("u1").tobytes()
            for r in range(3)
        ]
        (folder / name).write_bytes(b"".join(records))
    return folder


def test_convert_cifar_as_caffe(cifar_bin, tmp_path):
    from geeps_net.dataset import convert_cifar

    out = tmp_path / "out"
    out.mkdir()
    assert convert_cifar(cifar_bin, out, progress=False) == {"train": 15, "test": 3}
    train = lmdb_records(out / "cifar10_train_lmdb")
    assert [k for k, _ in train] == [b"%05d" % i for i in range(15)]  # counting through files
    pixels, label = decode_datum(train[4][1])  # file 1, record 1
    assert label == 2 and pixels.shape == (3, 32, 32)
    assert_array_equal(pixels.ravel(), (8 + numpy.arange(3072)) % 256)  # RGB planes, as stored
    test = lmdb_records(out / "cifar10_test_lmdb")
    assert [decode_datum(v)[1] for _, v in test] == [5, 6, 7]


def test_convert_cifar_refuses_bad_input_and_writes_nothing(cifar_bin, tmp_path):
    from geeps_net.dataset import convert_cifar

    out = tmp_path / "out"
    out.mkdir()
    (out / "cifar10_test_lmdb").mkdir()  # exists: the train DB must not be left either
    with pytest.raises(DataError, match="cifar10_test_lmdb: already exists"):
        convert_cifar(cifar_bin, out, progress=False)
    assert [p.name for p in out.iterdir()] == ["cifar10_test_lmdb"]
    (cifar_bin / "data_batch_3.bin").write_bytes(b"short")
    with pytest.raises(DataError, match=r"data_batch_3.bin: 5 bytes, not 3 records of 3073"):
        convert_cifar(cifar_bin, tmp_path, progress=False)
    (cifar_bin / "data_batch_3.bin").unlink()
    with pytest.raises(DataError, match="data_batch_3.bin: no such file"):
        convert_cifar(cifar_bin, tmp_path, progress=False)


def test_convert_cifar_data_verb_leveldb(cifar_bin, tmp_path, run):
    pytest.importorskip("plyvel", reason="plyvel (extra 'leveldb') is not installed")
    status, err = run("convert_cifar_data", cifar_bin, ".", "leveldb")
    assert status == 0 and "Wrote 15 training and 3 test images." in err
    with open_db(tmp_path / "cifar10_train_leveldb") as db:
        assert db.size == 15 and db.first()[0] == b"00000"


def test_leveldb_held_by_another_process_says_what_to_do(tmp_path):
    pytest.importorskip("plyvel", reason="plyvel (extra 'leveldb') is not installed")
    import subprocess
    import sys

    write_db(tmp_path / "db", [(b"a", b"1")], backend="leveldb")
    hold = "import plyvel, sys; db = plyvel.DB(sys.argv[1]); print(1, flush=True); input()"
    holder = subprocess.Popen(  # another process holds the LevelDB's lock
        [sys.executable, "-c", hold, str(tmp_path / "db")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "1"
        with pytest.raises(DataError, match="open in another process.*geeps-net convert_db"):
            open_db(tmp_path / "db")
    finally:
        holder.communicate("\n", timeout=30)


def test_convert_db_between_backends(tmp_path, run):
    pytest.importorskip("plyvel", reason="plyvel (extra 'leveldb') is not installed")
    records = [(b"%03d" % i, b"v%d" % i) for i in range(5)]
    write_db(tmp_path / "in", records, backend="leveldb")
    status, err = run("convert_db", "in", "out")
    assert status == 0 and "Copied 5 records." in err
    assert backend_of(tmp_path / "out") == "lmdb" and lmdb_records(tmp_path / "out") == records
    assert run("convert_db", "out", "back", "-backend", "leveldb")[0] == 0
    with open_db(tmp_path / "back") as db:
        assert list(db.items()) == records
