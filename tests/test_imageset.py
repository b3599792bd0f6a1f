"""convert_imageset: image lists -> LMDB (or LevelDB) of Datum, read back and by a Data layer."""

import numpy
import pytest
from numpy.testing import assert_array_equal

from geeps_net.dataset import decode_datum
from geeps_net.datumdb import open_db
from geeps_net.errors import DataError
from geeps_net.imageset import convert_imageset, read_image_list
from geeps_net.proto import caffe_pb2
from geeps_net.testing import LayerRig, make_layer
from tests.conftest import lmdb_records

pil = pytest.importorskip("PIL.Image", reason="Pillow (extra 'image') is not installed")

SHAPES = [(6, 4), (6, 4), (6, 4), (5, 7)]  # (height, width); the last differs


@pytest.fixture
def images(tmp_path):
    """(root, list file, RGB arrays): PNGs under root/, one with a space in its name, listed with
    a blank line in between; the last image has another size."""
    rng = numpy.random.default_rng(3)
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    names, rgbs = ["a.png", "sub/b c.png", "d.png", "e.png"], []
    for name, shape in zip(names, SHAPES):
        rgb = rng.integers(0, 256, (*shape, 3), dtype=numpy.uint8)
        pil.fromarray(rgb).save(root / name)
        rgbs.append(rgb)
    lines = [f"{name} {label}" for name, label in zip(names, (3, 1, 4, 1))]
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:]) + "\n")
    return f"{root}/", listing, rgbs


def datum(value: bytes) -> caffe_pb2.Datum:
    d = caffe_pb2.Datum()
    d.ParseFromString(value)
    return d


def bgr(rgb):
    return rgb[:, :, ::-1].transpose(2, 0, 1)


def test_list_parsing_names_the_line(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("x y.png 2\n\nno_label\n")
    with pytest.raises(DataError, match=r'list.txt:3: expected "path label"'):
        read_image_list(listing)
    listing.write_text("x y.png 2\n")
    assert read_image_list(listing) == [("x y.png", 2, 1)]


def test_raw_pixels_keys_and_labels_as_caffe(images, tmp_path):
    root, listing, rgbs = images
    assert convert_imageset(root, listing, tmp_path / "db", progress=False) == 4
    got = lmdb_records(tmp_path / "db")
    assert [k for k, _ in got] == [b"00000000_a.png", b"00000001_sub/b c.png", b"00000002_d.png",
                                   b"00000003_e.png"]  # fmt: skip
    for (_, value), rgb, label in zip(got, rgbs, (3, 1, 4, 1)):
        d = datum(value)
        assert not d.encoded and (d.channels, d.height, d.width) == (3, *rgb.shape[:2])
        pixels, got_label = decode_datum(value)
        assert_array_equal(pixels, bgr(rgb))
        assert got_label == label


def test_gray_and_resize(images, tmp_path):
    root, listing, rgbs = images
    convert_imageset(root, listing, tmp_path / "db", gray=True, resize=(3, 2), progress=False)
    for (_, value), rgb in zip(lmdb_records(tmp_path / "db"), rgbs):
        pixels, _ = decode_datum(value)
        want = pil.fromarray(rgb).convert("L").resize((2, 3), pil.Resampling.BILINEAR)
        assert_array_equal(pixels, numpy.asarray(want)[None])
    with pytest.raises(DataError, match="resize_height and resize_width must be set together"):
        convert_imageset(root, listing, tmp_path / "db2", resize=(3, 0), progress=False)


def test_shuffle_is_a_seeded_permutation(images, tmp_path):
    root, listing, _ = images
    orders = []
    for i, seed in enumerate((5, 5, 6)):
        convert_imageset(root, listing, tmp_path / f"db{i}", shuffle=True, seed=seed,
                         progress=False)  # fmt: skip
        keys = [k.decode() for k, _ in lmdb_records(tmp_path / f"db{i}")]
        assert [k[:9] for k in keys] == [f"{j:08d}_" for j in range(4)]
        orders.append([k[9:] for k in keys])
    assert sorted(orders[0]) == ["a.png", "d.png", "e.png", "sub/b c.png"]
    assert orders[0] == orders[1]
    assert orders[0] != orders[2]  # seed 6 orders them otherwise (checked once)


def test_encoded_stores_the_file_or_re_encodes(images, tmp_path):
    root, listing, rgbs = images
    convert_imageset(root, listing, tmp_path / "as_is", encoded=True, progress=False)
    for (key, value), rgb in zip(lmdb_records(tmp_path / "as_is"), rgbs):
        d = datum(value)
        assert d.encoded
        assert d.data == (tmp_path / "root" / key.decode()[9:]).read_bytes()  # the file itself
        assert_array_equal(decode_datum(value)[0], bgr(rgb))
    convert_imageset(root, listing, tmp_path / "bmp", encoded=True, encode_type="bmp",
                     progress=False)  # fmt: skip
    for (_, value), rgb in zip(lmdb_records(tmp_path / "bmp"), rgbs):
        assert datum(value).data[:2] == b"BM"
        assert_array_equal(decode_datum(value)[0], bgr(rgb))  # BMP is lossless
    convert_imageset(root, listing, tmp_path / "gray", encoded=True, gray=True, progress=False)
    for (_, value), rgb in zip(lmdb_records(tmp_path / "gray"), rgbs):
        want = numpy.asarray(pil.fromarray(rgb).convert("L"))[None]
        assert_array_equal(decode_datum(value)[0], want)  # re-encoded grey, not the colour file
    with pytest.raises(DataError, match="encode_type 'xyz': Pillow cannot write this format"):
        convert_imageset(root, listing, tmp_path / "x", encoded=True, encode_type="xyz")


def test_leveldb_backend(images, tmp_path):
    pytest.importorskip("plyvel", reason="plyvel (extra 'leveldb') is not installed")
    root, listing, rgbs = images
    convert_imageset(root, listing, tmp_path / "db", backend="leveldb", progress=False)
    with open_db(tmp_path / "db", backend="leveldb") as db:
        got = list(db.items())
    assert [k for k, _ in got][:1] == [b"00000000_a.png"]
    assert_array_equal(decode_datum(got[0][1])[0], bgr(rgbs[0]))


def test_bad_images_name_the_list_line_and_write_nothing(images, tmp_path):
    root, listing, _ = images
    with pytest.raises(DataError, match=r"list.txt:5: e.png has shape \(3, 5, 7\), the first"):
        convert_imageset(root, listing, tmp_path / "db", check_size=True, progress=False)
    listing.write_text("a.png 0\nmissing.png 1\n")
    with pytest.raises(DataError, match=r"list.txt:2: cannot read image .*missing.png"):
        convert_imageset(root, listing, tmp_path / "db", progress=False)
    assert not (tmp_path / "db").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["list.txt", "root"]  # no temporary


def test_data_layer_trains_on_the_converted_db(images, tmp_path):
    root, listing, rgbs = images
    listing.write_text("a.png 3\nsub/b c.png 1\nd.png 4\n")  # one size, as a batch needs
    convert_imageset(root, listing, tmp_path / "db", encoded=True, progress=False)
    layer = make_layer(
        f'name: "d" type: "Data" top: "data" top: "label" data_param {{ source: "{tmp_path}/db" '
        "batch_size: 2 backend: LMDB } transform_param { scale: 0.5 }"
    )
    rig = LayerRig(numpy, layer, [], "float64")
    try:
        data, labels = rig.forward()
        assert_array_equal(data, 0.5 * numpy.stack([bgr(rgbs[0]), bgr(rgbs[1])]))
        assert_array_equal(labels, [3, 1])
    finally:
        layer.close()


def test_cli_verb(images, tmp_path, run):
    root, listing, _ = images
    status, err = run("convert_imageset", "-resize_height", "4", "-resize_width", "4", "-shuffle",
                      "-seed", "1", root, listing, "out_lmdb")  # fmt: skip
    assert status == 0 and "Processed 4 files." in err
    shapes = {decode_datum(v)[0].shape for _, v in lmdb_records(tmp_path / "out_lmdb")}
    assert shapes == {(3, 4, 4)}
    status, err = run("convert_imageset", root, listing, "out_lmdb")
    assert status == 1 and "out_lmdb: already exists" in err
