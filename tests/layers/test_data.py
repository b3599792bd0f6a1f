"""Data, ImageData, HDF5Data, HDF5Output and WindowData layers on tiny synthetic sources."""

import json
import sys
import threading
import time

import numpy
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from geeps_net.dataset import encode_datum, write_db
from geeps_net.errors import DataError, LayerError
from geeps_net.layer import TEST, TRAIN
from geeps_net.testing import LayerRig, make_layer

N_RECORDS, SHAPE = 10, (2, 4, 5)


def items(n=N_RECORDS, shape=SHAPE):
    """Record i: pixels (i * 7 + position) mod 256, so every batch row says which record it is."""
    size = int(numpy.prod(shape))
    return [
        ((i * 7 + numpy.arange(size)) % 256).astype(numpy.uint8).reshape(shape) for i in range(n)
    ]


@pytest.fixture(params=["lmdb", "leveldb"])
def db(tmp_path, request):
    """The records of items() in an LMDB (tmp_path/db_lmdb) or a LevelDB (db_leveldb)."""
    if request.param == "leveldb":
        pytest.importorskip("plyvel", reason="plyvel (extra 'leveldb') is not installed")
    path = tmp_path / f"db_{request.param}"
    records = ((b"%08d" % i, encode_datum(x, i)) for i, x in enumerate(items()))
    write_db(path, records, backend=request.param)
    return path


def data_layer(source, batch=4, phase=TRAIN, extra="", transform="", seed=0, shard=(0, 1), top=2):
    tops = ' top: "data" top: "label"' if top == 2 else ' top: "data"'
    backend = "LEVELDB" if str(source).endswith("leveldb") else "LMDB"
    text = (
        f'name: "d" type: "Data"{tops} data_param {{ source: "{source}" batch_size: {batch} '
        f"backend: {backend} {extra} }} transform_param {{ {transform} }}"
    )
    layer = make_layer(text, phase)
    layer.rng, layer.shard = numpy.random.default_rng(seed), shard
    return layer


@pytest.fixture
def rigs():
    made = []

    def build(layer, dtype="float64", xp=numpy):
        made.append(layer)
        return LayerRig(xp, layer, [], dtype)

    yield build
    for layer in made:
        layer.close()


def labels_of(rig, n):
    return [int(v) for _ in range(n) for v in rig.forward()[1]]


def test_batches_in_order_wrapping(db, rigs, xp):
    rig = rigs(data_layer(db, transform="scale: 0.5"), xp=xp)
    assert rig.tops[0].shape == (4, *SHAPE) and rig.tops[1].shape == (4,)
    data, labels = rig.forward()
    assert_array_equal(labels, [0, 1, 2, 3])
    assert_allclose(data, numpy.stack(items()[:4]) * 0.5)
    assert labels_of(rig, 2) == [4, 5, 6, 7, 8, 9, 0, 1]  # wraps at the end, as Caffe


def test_data_top_only_and_test_phase_crop(db, rigs):
    rig = rigs(data_layer(db, phase=TEST, top=1, transform="crop_size: 3 mirror: true"))
    (data,) = rig.forward()
    assert data.shape == (4, 2, 3, 3)
    assert_array_equal(data, numpy.stack(items()[:4])[:, :, 0:3, 1:4])  # centre, never mirrored


def test_shards_are_disjoint_and_cover(db, rigs):
    seen = []
    for k in range(3):
        rig = rigs(data_layer(db, batch=1, shard=(k, 3)))
        mine = labels_of(rig, len(range(k, N_RECORDS, 3)))
        assert all(label % 3 == k for label in mine)
        seen += mine
        assert labels_of(rig, 1) == [k]  # the next epoch starts again at the shard's first record
    assert sorted(seen) == list(range(N_RECORDS))


def test_rand_skip_reproducible(db, rigs):
    starts = []
    for seed in range(8):
        first = [
            rigs(data_layer(db, extra="rand_skip: 7", seed=seed)).forward()[1][0] for _ in "ab"
        ]
        assert first[0] == first[1]  # the same seed skips the same records
        starts.append(int(first[0]))
    assert all(0 <= s < 7 for s in starts) and len(set(starts)) > 1


def test_close_joins_the_prefetch_thread(db, rigs):
    layer = data_layer(db, extra="prefetch: 2")
    rigs(layer).forward()
    thread = layer._thread
    assert thread.is_alive() and not thread.daemon
    layer.close()
    assert not thread.is_alive()
    assert not [t for t in threading.enumerate() if t.name.startswith("prefetch")]


def test_state_restore_continues_identically(db, rigs):
    transform = "crop_size: 3 mirror: true scale: 0.1"
    rig = rigs(data_layer(db, batch=3, transform=transform, extra="rand_skip: 5", seed=4))
    for _ in range(2):
        rig.forward()
    state = json.loads(json.dumps(rig.layer.state()))  # a checkpoint must survive JSON
    expected = [rig.forward() for _ in range(4)]
    resumed = rigs(data_layer(db, batch=3, transform=transform, extra="rand_skip: 5", seed=99))
    resumed.layer.restore(state)
    for want in expected:
        got = resumed.forward()
        assert_array_equal(got[0], want[0])
        assert_array_equal(got[1], want[1])
    rig.layer.restore(state)  # restoring a running reader rewinds it too
    assert_array_equal(rig.forward()[0], expected[0][0])


def test_missing_source_and_wrong_backend(tmp_path, db):
    with pytest.raises(DataError, match=r'layer "d" \(Data\): source .*nowhere: no such file'):
        LayerRig(numpy, data_layer(tmp_path / "nowhere"), [])
    other = "LMDB" if db.name.endswith("leveldb") else "LEVELDB"
    wrong = make_layer(f'name: "d" type: "Data" top: "data" data_param {{ source: "{db}" '
                       f"batch_size: 1 backend: {other} }}")  # fmt: skip
    want = "an LMDB" if other == "LMDB" else "a LevelDB"
    with pytest.raises(DataError, match=f"source .*{db.name}: not {want} directory"):
        LayerRig(numpy, wrong, [])


def test_caffe_default_backend_is_leveldb(tmp_path, db, rigs):
    """No backend field: LEVELDB, as in Caffe; over an LMDB it reads the LMDB (and warns)."""
    layer = make_layer(f'name: "d" type: "Data" top: "data" top: "label" data_param {{ '
                       f'source: "{db}" batch_size: 4 }}')  # fmt: skip
    assert_array_equal(rigs(layer).forward()[1], [0, 1, 2, 3])


def test_leveldb_without_plyvel_names_the_extra(tmp_path, monkeypatch):
    (tmp_path / "db").mkdir()
    (tmp_path / "db" / "CURRENT").write_text("MANIFEST-000001\n")
    monkeypatch.setitem(sys.modules, "plyvel", None)
    layer = make_layer(f'name: "d" type: "Data" top: "data" data_param {{ '
                       f'source: "{tmp_path}/db" batch_size: 1 }}')  # fmt: skip
    with pytest.raises(
        DataError, match=r"LevelDB needs plyvel: pip install 'geeps-net\[leveldb\]'"
    ):
        LayerRig(numpy, layer, [])


def test_corrupt_record_names_source_and_key(tmp_path, rigs):
    good = encode_datum(items()[0], 0)
    bad = b"\xff\xfe junk"
    write_db(tmp_path / "db", [(b"00000000", good), (b"00000001", bad), (b"00000002", good)])
    rig = rigs(data_layer(tmp_path / "db", batch=2))
    for _ in range(2):  # a retry reads the same records and fails the same way
        with pytest.raises(DataError, match=r"source .*db key '00000001': corrupt record"):
            rig.forward()
    assert rig.layer.state()["records"] == 0


def test_legacy_data_param_transform_fields(db, rigs):
    # The deprecated copies of transform fields in data_param still apply, as after Caffe's upgrade.
    rig = rigs(data_layer(db, phase=TEST, extra="scale: 0.25 crop_size: 2"))
    data = rig.forward()[0]
    assert_allclose(data, numpy.stack(items()[:4])[:, :, 1:3, 1:3] * 0.25)


def test_transform_error_names_the_layer(db):
    with pytest.raises(DataError, match=r'layer "d" \(Data\): crop_size 9 is larger than the data'):
        LayerRig(numpy, data_layer(db, transform="crop_size: 9"), [])


def test_record_of_another_shape(tmp_path, rigs):
    records = [encode_datum(items()[0], 0), encode_datum(items(shape=(1, 4, 5))[0], 1)]
    write_db(tmp_path / "db", [(b"%08d" % i, v) for i, v in enumerate(records)])
    with pytest.raises(DataError, match=r"key '00000001': shape \(1, 4, 5\) differs"):
        rigs(data_layer(tmp_path / "db", batch=2)).forward()


def test_forward_deadline(db, rigs, monkeypatch):
    layer = data_layer(db)
    rig = rigs(layer)
    layer.deadline_s = 0.2
    monkeypatch.setattr(layer, "_next_batch", lambda: time.sleep(1) or ())
    with pytest.raises(DataError, match=r'"d" \(Data\): no batch from source .*db within 0.2 s'):
        rig.forward()


def test_float_and_encoded_datums(tmp_path, rigs):
    pil = pytest.importorskip("PIL.Image", reason="Pillow (extra 'image') is not installed")
    import io

    rgb = numpy.random.default_rng(2).integers(0, 256, (4, 5, 3), dtype=numpy.uint8)
    png = io.BytesIO()
    pil.fromarray(rgb).save(png, format="PNG")
    from geeps_net.proto import caffe_pb2

    encoded = caffe_pb2.Datum(data=png.getvalue(), encoded=True, label=3).SerializeToString()
    write_db(tmp_path / "enc", [(b"0", encoded)])
    data, labels = rigs(data_layer(tmp_path / "enc", batch=1)).forward()
    assert_array_equal(data[0], rgb[:, :, ::-1].transpose(2, 0, 1))  # BGR, as OpenCV decodes
    floats = numpy.linspace(-1, 1, 40).reshape(2, 4, 5)
    write_db(tmp_path / "flt", [(b"0", encode_datum(floats, 1))])
    data, _ = rigs(data_layer(tmp_path / "flt", batch=1)).forward()
    assert_allclose(data[0], floats, rtol=1e-6)


# -- ImageData ------------------------------------------------------------------------------------


@pytest.fixture
def image_list(tmp_path):
    pil = pytest.importorskip("PIL.Image", reason="Pillow (extra 'image') is not installed")
    rng = numpy.random.default_rng(5)
    (tmp_path / "img").mkdir()
    images, lines = [], []
    for i in range(5):
        rgb = rng.integers(0, 256, (6, 4, 3), dtype=numpy.uint8)
        pil.fromarray(rgb).save(tmp_path / "img" / f"im {i}.png")  # a space in the name
        images.append(rgb)
        lines.append(f"im {i}.png {10 + i}")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    return tmp_path, images


def image_layer(root, extra="", seed=0):
    text = (
        f'name: "im" type: "ImageData" top: "data" top: "label" image_data_param {{ '
        f'source: "{root}/list.txt" root_folder: "{root}/img/" batch_size: 2 {extra} }}'
    )
    layer = make_layer(text)
    layer.rng = numpy.random.default_rng(seed)
    return layer


def test_image_data_bgr_labels_wrap(image_list, rigs):
    root, images = image_list
    rig = rigs(image_layer(root))
    data, labels = rig.forward()
    assert data.shape == (2, 3, 6, 4)
    assert_array_equal(labels, [10, 11])
    assert_array_equal(data[1], images[1][:, :, ::-1].transpose(2, 0, 1))
    assert labels_of(rig, 2) == [12, 13, 14, 10]


def test_image_data_gray_resize_shuffle(image_list, rigs):
    root, images = image_list
    rig = rigs(image_layer(root, "is_color: false new_height: 3 new_width: 2 shuffle: true"))
    assert rig.tops[0].shape == (2, 1, 3, 2)
    epochs = labels_of(rig, 10)  # four epochs of five images
    orders = [tuple(epochs[i : i + 5]) for i in range(0, 20, 5)]
    assert all(sorted(order) == list(range(10, 15)) for order in orders)
    assert len(set(orders)) > 1  # reshuffled every epoch
    state = rig.layer.state()
    nxt = rig.forward()
    rig.layer.restore(state)
    assert_array_equal(rig.forward()[0], nxt[0])


def test_image_data_errors(image_list, tmp_path, monkeypatch):
    root, _ = image_list
    (root / "list.txt").write_text("missing.png 1\n")
    once = r'^layer "im" \(ImageData\): cannot read image .*missing.png'  # prefixed once
    with pytest.raises(DataError, match=once):
        LayerRig(numpy, image_layer(root), [])
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(DataError, match=r"needs Pillow: pip install 'geeps-net\[image\]'"):
        LayerRig(numpy, image_layer(root), [])


# -- HDF5 -----------------------------------------------------------------------------------------


@pytest.fixture
def h5_files(tmp_path):
    h5py = pytest.importorskip("h5py", reason="h5py (extra 'hdf5') is not installed")
    rows = []
    for f, n in enumerate((3, 4)):
        data = numpy.arange(n * 6, dtype=numpy.float32).reshape(n, 2, 3) + 100 * f
        label = numpy.arange(n, dtype=numpy.float32) + 10 * f
        with h5py.File(tmp_path / f"part{f}.h5", "w") as out:
            out["data"], out["label"] = data, label
        rows += list(zip(data, label, strict=True))
    (tmp_path / "list.txt").write_text("part0.h5\npart1.h5\n")  # relative to the list's folder
    return tmp_path, rows


def hdf5_layer(root, batch=3, extra="", seed=0):
    text = (
        f'name: "h" type: "HDF5Data" top: "data" top: "label" hdf5_data_param {{ '
        f'source: "{root}/list.txt" batch_size: {batch} {extra} }}'
    )
    layer = make_layer(text)
    layer.rng = numpy.random.default_rng(seed)
    return layer


def test_hdf5_data_across_files(h5_files, xp):
    root, rows = h5_files
    rig = LayerRig(xp, hdf5_layer(root), [], "float64")
    assert rig.tops[0].shape == (3, 2, 3) and rig.tops[1].shape == (3,)
    got = [rig.forward() for _ in range(3)]  # 9 rows: 7 and 2 of the next epoch
    data = numpy.concatenate([g[0] for g in got])
    assert_array_equal(data, [rows[i % 7][0] for i in range(9)])
    assert_array_equal(numpy.concatenate([g[1] for g in got]), [rows[i % 7][1] for i in range(9)])


def test_hdf5_data_shuffle_state_restore(h5_files):
    root, rows = h5_files
    rig = LayerRig(numpy, hdf5_layer(root, batch=7, extra="shuffle: true"), [], "float64")
    labels = rig.forward()[1]
    assert sorted(labels) == sorted(r[1] for r in rows)  # one epoch: every row once
    in_file_order = ([0, 1, 2, 10, 11, 12, 13], [10, 11, 12, 13, 0, 1, 2])
    assert list(labels) not in in_file_order  # rows shuffled within the files too
    state = json.loads(json.dumps(rig.layer.state()))
    want = [rig.forward() for _ in range(2)]
    other = LayerRig(numpy, hdf5_layer(root, batch=7, extra="shuffle: true", seed=9), [], "float64")
    other.layer.restore(state)
    for w in want:
        assert_array_equal(other.forward()[0], w[0])


def test_hdf5_data_shard(h5_files):
    root, rows = h5_files
    layer = hdf5_layer(root, batch=2)
    layer.shard = (1, 2)
    rig = LayerRig(numpy, layer, [], "float64")
    assert_array_equal(rig.forward()[1], [rows[1][1], rows[3][1]])


def test_hdf5_data_errors(h5_files, monkeypatch):
    root, _ = h5_files
    bad = make_layer(f'name: "h" type: "HDF5Data" top: "pixels" hdf5_data_param {{ '
                     f'source: "{root}/list.txt" batch_size: 1 }}')  # fmt: skip
    with pytest.raises(DataError, match=r"part0.h5: no dataset 'pixels'"):
        LayerRig(numpy, bad, [])
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(LayerError, match=r"needs h5py: pip install 'geeps-net\[hdf5\]'"):
        LayerRig(numpy, hdf5_layer(root), [])


def test_hdf5_output_appends(tmp_path):
    h5py = pytest.importorskip("h5py", reason="h5py (extra 'hdf5') is not installed")
    path = tmp_path / "out.h5"
    layer = make_layer(f'type: "HDF5Output" bottom: "a" bottom: "b" '
                       f'hdf5_output_param {{ file_name: "{path}" }}')  # fmt: skip
    x, y = numpy.ones((2, 3)), numpy.array([1.0, 2.0])
    rig = LayerRig(numpy, layer, [x.copy(), y])
    rig.forward()
    rig.bottoms[0].data[...] = 2
    rig.forward()
    layer.close()
    with h5py.File(path, "r") as f:
        assert_array_equal(f["data"][...], numpy.concatenate([x, 2 * x]))
        assert_array_equal(f["label"][...], numpy.concatenate([y, y]))


def test_window_data_declined():
    layer = make_layer('name: "w" type: "WindowData" top: "data" top: "label"')
    with pytest.raises(
        LayerError, match=r'"w" \(WindowData\): .*R-CNN window files.*not supported'
    ):
        LayerRig(numpy, layer, [])
