"""Bad binary input through the `geeps-net` CLI: weights, solver states, LMDBs, IDX files, and
a wire frame of another version. Each case makes its files in tmp_path; the `cli` fixture
(conftest.py) checks the one-line error contract and that nothing half-written is left.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import DATA_NET, GOOD, NET, SOLVER, datum_lmdb, files_under

# -- weights and solver states ---------------------------------------------------------------------


def png_bytes() -> bytes:
    """A valid 1x1 grey PNG."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0\0")) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.9])
@pytest.mark.parametrize("verb", ["train", "test"])
def test_truncated_caffemodel(cli, tmp_path, trained, verb, fraction):
    raw = trained["model"].read_bytes()
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(raw[: int(len(raw) * fraction)])
    if verb == "train":
        line = cli("train", "-solver", SOLVER, "-no_ps", "-weights", cut)
    else:
        line = cli("test", "-model", NET, "-weights", cut, "-iterations", "1")
    assert f"{cut}: " in line and ("truncated" in line or "corrupt" in line)


@pytest.mark.parametrize(
    "name, content, what",
    [
        ("lenet.png", png_bytes(), "a PNG image"),
        ("train_val.prototxt", (GOOD / "tiny_net.prototxt").read_bytes(), "text"),
        ("weights.npz", b"PK\x03\x04" + bytes(60), "zip"),
        ("random.caffemodel", bytes(range(256)) * 2, "corrupt"),
    ],
    ids=["png", "prototxt", "npz", "random"],
)
def test_foreign_weights(cli, tmp_path, name, content, what):
    path = tmp_path / name
    path.write_bytes(content)
    line = cli("train", "-solver", SOLVER, "-no_ps", "-weights", path)
    assert f"{path}: not a binary NetParameter (.caffemodel)" in line and what in line


@pytest.mark.parametrize("kind", ["png", "text", "caffemodel", "truncated"])
def test_foreign_solverstate(cli, tmp_path, trained, kind):
    path = tmp_path / "resume.solverstate"
    content = {
        "png": png_bytes(),
        "text": b"iter: 500\n",
        "caffemodel": trained["model"].read_bytes(),
        "truncated": trained["state"].read_bytes()[:-9],
    }[kind]
    path.write_bytes(content)
    line = cli("train", "-solver", SOLVER, "-no_ps", "-snapshot", path)
    assert f"{path}: " in line


def test_weights_of_the_wrong_shape(cli, tmp_path):
    import numpy

    from geeps_net.snapshot import write_caffemodel

    path = tmp_path / "other.caffemodel"
    weights = [numpy.zeros((3, 20), numpy.float32), numpy.zeros(3, numpy.float32)]
    write_caffemodel(path, "other", [("ip", "InnerProduct", ["data"], ["ip"], weights)])
    for argv in (
        ["train", "-solver", SOLVER, "-no_ps", "-weights", path],
        ["test", "-model", NET, "-weights", path, "-iterations", "1"],
    ):
        line = cli(*argv)
        assert 'layer "ip" (InnerProduct)' in line and str(path) in line
        assert "(3, 20)" in line and "(3, 16)" in line


def test_failed_resume_leaves_earlier_snapshots(cli, tmp_path, trained):
    """A run that fails (a solver state of another solver type) leaves the snapshots alone."""
    import shutil

    snap = tmp_path / "snap"
    snap.mkdir()
    for path in (trained["model"], trained["state"]):
        shutil.copy(path, snap / path.name)
    solver = tmp_path / "adam.prototxt"
    text = (GOOD / "tiny_solver.prototxt").read_text()
    solver.write_text(text.replace("tiny_net.prototxt", NET) + 'type: "Adam"\n')
    before = files_under(snap)
    line = cli("train", "-solver", solver, "-no_ps", "-snapshot", snap / "tiny_iter_2.solverstate")
    assert "tiny_iter_2.solverstate" in line and "history" in line
    assert files_under(snap) == before


# -- data sets -------------------------------------------------------------------------------------


def test_corrupt_record_in_compute_image_mean(cli, tmp_path):
    datum_lmdb(tmp_path / "db", garbage_at=3)
    line = cli("compute_image_mean", "db", "mean.binaryproto")
    assert "db key '00000003': corrupt record" in line
    assert not (tmp_path / "mean.binaryproto").exists()


def test_odd_record_shape_in_compute_image_mean(cli, tmp_path):
    datum_lmdb(tmp_path / "db", odd_shape_at=4)
    line = cli("compute_image_mean", "db", "mean.binaryproto")
    assert "key '00000004'" in line and "(1, 5, 5)" in line
    assert not (tmp_path / "mean.binaryproto").exists()


@pytest.mark.parametrize("fault", ["garbage_at", "odd_shape_at"])
def test_bad_record_in_data_layer(cli, tmp_path, fault):
    datum_lmdb(tmp_path / "db", **{fault: 3})
    (tmp_path / "net.prototxt").write_text(DATA_NET.replace("SOURCE", "db"))
    line = cli("test", "-model", "net.prototxt", "-iterations", "3")
    assert "layer \"data\" (Data): source db key '00000003'" in line


def test_bad_record_mid_training_keeps_snapshots(cli, tmp_path):
    """Iteration 1 snapshots, the batch of iteration 2 holds the bad record: the run stops with
    one line and the snapshot it wrote is whole."""
    from geeps_net.snapshot import read_net_weights, read_solverstate

    datum_lmdb(tmp_path / "db", garbage_at=3)
    (tmp_path / "net.prototxt").write_text(DATA_NET.replace("SOURCE", "db"))
    solver = (GOOD / "tiny_solver.prototxt").read_text().replace("tiny_net", "net")
    (tmp_path / "solver.prototxt").write_text(solver.replace("max_iter: 2", "max_iter: 4"))
    line = cli("train", "-solver", "solver.prototxt", "-no_ps")
    assert "key '00000003': corrupt record" in line
    assert read_solverstate(tmp_path / "snap" / "tiny_iter_1.solverstate")[0] == 1
    assert "ip" in read_net_weights(tmp_path / "snap" / "tiny_iter_1.caffemodel")


def idx_files(tmp_path: Path) -> tuple[Path, Path]:
    import struct

    images = struct.pack(">IIII", 2051, 3, 4, 4) + bytes(48)
    (tmp_path / "images.idx").write_bytes(images)
    (tmp_path / "labels.idx").write_bytes(struct.pack(">II", 2049, 3) + bytes([0, 1, 2]))
    return tmp_path / "images.idx", tmp_path / "labels.idx"


@pytest.mark.parametrize("fault", ["truncated_gzip", "short_images", "label_count", "swapped"])
def test_bad_idx_leaves_no_lmdb(cli, tmp_path, fault):
    import gzip

    images, labels = idx_files(tmp_path)
    if fault == "truncated_gzip":
        images.write_bytes(gzip.compress(images.read_bytes())[:-10])
    elif fault == "short_images":
        images.write_bytes(images.read_bytes()[:-5])
    elif fault == "label_count":
        labels.write_bytes(labels.read_bytes()[:-1].replace(b"\0\0\0\x03", b"\0\0\0\x02"))
    else:
        images, labels = labels, images
    line = cli("convert_mnist", images, labels, "out_lmdb")
    assert str(images) in line
    assert not (tmp_path / "out_lmdb").exists()


def test_convert_mnist_without_labels(cli, tmp_path):
    images, labels = idx_files(tmp_path)
    labels.unlink()
    assert f"{labels}: cannot read" in cli("convert_mnist", images, labels, "out_lmdb")
    assert not (tmp_path / "out_lmdb").exists()


def test_failed_lmdb_write_leaves_nothing(tmp_path):
    """A record source that fails after a committed chunk: no DB, no temp directory."""
    from geeps_net.dataset import write_db
    from geeps_net.errors import DataError

    def records():
        for i in range(1500):  # past the first 1000-record commit
            yield b"%08d" % i, b"x"
        raise DataError("images.idx: record 1500 is unreadable")

    with pytest.raises(DataError, match="record 1500"):
        write_db(tmp_path / "out_lmdb", records())
    assert not list(tmp_path.iterdir())


def test_convert_mnist_keeps_an_existing_db(cli, tmp_path):
    images, labels = idx_files(tmp_path)
    datum_lmdb(tmp_path / "out_lmdb")
    before = files_under(tmp_path / "out_lmdb")
    line = cli("convert_mnist", images, labels, "out_lmdb")
    assert "out_lmdb: already exists" in line
    assert files_under(tmp_path / "out_lmdb") == before


def test_outputs_into_missing_folders(cli, tmp_path):
    images, labels = idx_files(tmp_path)
    assert "nowhere/out_lmdb: cannot write" in cli(
        "convert_mnist", images, labels, "nowhere/out_lmdb"
    )
    datum_lmdb(tmp_path / "db")
    assert "nowhere/mean: cannot write" in cli("compute_image_mean", "db", "nowhere/mean")


# -- the wire (unit level: a peer of another version) ---------------------------------------------


def test_wire_version_names_the_peer():
    from geeps_net.errors import WireError
    from geeps_net.ps import wire

    frames = wire.encode(wire.Header(wire.MsgType.HEARTBEAT, sender=1, clock=3))
    head = bytearray(frames[0])
    head[4:6] = (wire.VERSION + 1).to_bytes(2, "little")
    peer = "tcp://127.0.0.1:5571"
    with pytest.raises(WireError) as caught:
        wire.decode([bytes(head)], senders={1}, peer=peer)
    message = str(caught.value)
    assert "\n" not in message and peer in message
    assert f"version {wire.VERSION + 1}" in message and f"we speak {wire.VERSION}" in message
