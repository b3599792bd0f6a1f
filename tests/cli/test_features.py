"""extract_features: a trained net's blobs, image by image, into LMDBs a Data layer reads back."""

import numpy
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from geeps_net import snapshot
from geeps_net.dataset import decode_datum, read_mean_file
from geeps_net.datumdb import open_db
from geeps_net.proto import caffe_pb2
from tests.cli.conftest import datum_lmdb
from tests.conftest import lmdb_records

NET = """name: "feat"
layer { name: "data" type: "Data" top: "data" top: "label"
        data_param { source: "db" batch_size: 2 backend: LMDB } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 3 } }
layer { name: "relu" type: "ReLU" bottom: "ip" top: "ip" }
"""
RNG = numpy.random.default_rng(2)
W, B = RNG.standard_normal((3, 16)).astype(numpy.float32), numpy.float32([0.5, -40.0, 1.0])


@pytest.fixture
def job(tmp_path, run):
    """tmp_path holding db (6 records of 1x4x4, pixel value = index), net.prototxt and
    ip.caffemodel; returns `run` (main(argv) -> (status, stderr)) in it."""
    datum_lmdb(tmp_path / "db")
    (tmp_path / "net.prototxt").write_text(NET)
    snapshot.write_caffemodel(tmp_path / "ip.caffemodel", "feat", [("ip", "InnerProduct", [], [],
                              [W, B])])  # fmt: skip
    return run


def test_features_per_image_as_caffe_writes_them(job, tmp_path):
    status, err = job("extract_features", "ip.caffemodel", "net.prototxt", "ip,data",
                      "ip_lmdb,data_lmdb", 4, "lmdb", "CPU")  # fmt: skip
    assert status == 0, err
    assert "Extracted features of 8 query images for feature blob ip" in err
    assert "Successfully extracted the features!" in err
    order = [0, 1, 2, 3, 4, 5, 0, 1]  # 4 batches of 2 wrap around the 6 records
    ip, data = lmdb_records(tmp_path / "ip_lmdb"), lmdb_records(tmp_path / "data_lmdb")
    assert [k for k, _ in ip] == [b"%010d" % i for i in range(8)] == [k for k, _ in data]
    for (_, value), (_, pixels), i in zip(ip, data, order):
        datum = caffe_pb2.Datum()
        datum.ParseFromString(value)
        assert (datum.channels, datum.height, datum.width, datum.label) == (3, 1, 1, 0)
        want = numpy.maximum(W @ numpy.full(16, i, numpy.float32) + B, 0)  # after the in-place ReLU
        assert_allclose(numpy.ravel(datum.float_data), want, rtol=1e-6)
        assert_array_equal(decode_datum(pixels)[0], numpy.full((1, 4, 4), i, numpy.float32))


def test_bad_requests_are_one_line_and_write_nothing(cli, tmp_path):
    datum_lmdb(tmp_path / "db")
    (tmp_path / "net.prototxt").write_text(NET.replace('source: "db"', f'source: "{tmp_path}/db"'))
    snapshot.write_caffemodel(tmp_path / "ip.caffemodel", "feat", [("ip", "InnerProduct", [], [],
                              [W, B])])  # fmt: skip
    args = ["extract_features", tmp_path / "ip.caffemodel", tmp_path / "net.prototxt"]
    line = cli(*args, "ip,fc7", "a_lmdb,b_lmdb", 2)
    assert line.endswith('net "feat": no blob "fc7" to extract (TEST phase)')
    assert "2 feature blobs but 1 dataset names" in cli(*args, "ip,data", "a_lmdb", 2)
    assert "must be at least 1" in cli(*args, "ip", "a_lmdb", 0)
    assert "no such file" in cli("extract_features", "none.caffemodel", *args[2:], "ip", "a", 1)
    assert not list(tmp_path.glob("*_lmdb")) and not (tmp_path / "a").exists()


def test_leveldb_end_to_end(job, tmp_path):
    """Caffe's default backend through the tools: extract features into a LevelDB, take its
    mean with compute_image_mean, read it with a Data layer left at the default backend."""
    pytest.importorskip("plyvel", reason="plyvel (extra 'leveldb') is not installed")
    status, err = job("extract_features", "ip.caffemodel", "net.prototxt", "ip", "ip_leveldb", 3,
                      "leveldb")  # fmt: skip
    assert status == 0, err
    assert (tmp_path / "ip_leveldb" / "CURRENT").is_file()
    status, err = job("compute_image_mean", "ip_leveldb", "mean.binaryproto")
    assert status == 0, err
    with open_db(tmp_path / "ip_leveldb") as db:
        features = numpy.stack([decode_datum(v)[0] for _, v in db.items()])
    assert features.shape == (6, 3, 1, 1)
    assert_allclose(read_mean_file(tmp_path / "mean.binaryproto"), features.mean(0), rtol=1e-5)
