"""upgrade_net_proto_text / _binary and upgrade_solver_proto_text: legacy files -> current ones."""

import numpy
import pytest
from google.protobuf import text_format
from numpy.testing import assert_array_equal

from geeps_net.net import Net
from geeps_net.proto import caffe_pb2
from geeps_net.prototxt import parse_net, read_net, read_solver
from geeps_net.snapshot import read_net_weights

V1_NET = """name: "LeNetV1"
input: "data" input_dim: 2 input_dim: 1 input_dim: 12 input_dim: 12
layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
  blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  convolution_param { num_output: 4 kernel_size: 5 weight_filler { type: "xavier" } } }
layers { name: "pool1" type: POOLING bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layers { name: "relu1" type: RELU bottom: "pool1" top: "pool1" }
layers { name: "ip1" type: INNER_PRODUCT bottom: "pool1" top: "ip1"
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layers { name: "prob" type: SOFTMAX bottom: "ip1" top: "prob" }
"""

V0_NET = """name: "V0"
input: "data" input_dim: 2 input_dim: 3 input_dim: 8 input_dim: 8
layers { layer { name: "conv1" type: "conv" num_output: 4 kernelsize: 3 pad: 1
  weight_filler { type: "gaussian" std: 0.01 } blobs_lr: 1 blobs_lr: 2 }
  bottom: "data" top: "conv1" }
layers { layer { name: "relu1" type: "relu" } bottom: "conv1" top: "conv1" }
layers { layer { name: "pool1" type: "pool" pool: MAX kernelsize: 2 stride: 2 }
  bottom: "conv1" top: "pool1" }
"""


@pytest.mark.parametrize("text", [V1_NET, V0_NET], ids=["V1", "V0"])
def test_net_text_upgrade_builds_the_same_net(run, tmp_path, text):
    (tmp_path / "old.prototxt").write_text(text)
    status, err = run("upgrade_net_proto_text", "old.prototxt", "new.prototxt")
    assert status == 0 and "Wrote upgraded NetParameter text proto to new.prototxt" in err
    assert f"upgraded legacy {'V0' if 'kernelsize' in text else 'V1'} `layers`" in err
    new = (tmp_path / "new.prototxt").read_text()
    assert "layers" not in new and "input_dim" not in new
    assert read_net(tmp_path / "new.prototxt").param == parse_net(text).param
    old_net, new_net = Net(text, "TEST"), Net(new, "TEST")
    assert [(p.blob.shape, p.lr_mult, p.decay_mult) for p in old_net.learnable] == [
        (p.blob.shape, p.lr_mult, p.decay_mult) for p in new_net.learnable
    ]
    assert new_net.learnable[1].lr_mult == 2.0  # blobs_lr: 2 became param { lr_mult: 2 }
    for a, b in zip(old_net.learnable, new_net.learnable):
        assert_array_equal(a.blob_init, b.blob_init)  # the same seed fills the same weights


def test_solver_text_upgrade(run, tmp_path):
    (tmp_path / "s.prototxt").write_text('net: "n.prototxt" base_lr: 0.1 solver_type: ADAGRAD\n')
    assert run("upgrade_solver_proto_text", "s.prototxt", "s2.prototxt")[0] == 0
    solver = text_format.Parse((tmp_path / "s2.prototxt").read_text(), caffe_pb2.SolverParameter())
    assert solver.type == "AdaGrad" and not solver.HasField("solver_type")
    assert read_solver(tmp_path / "s2.prototxt") == solver


def test_binary_upgrade_keeps_the_weights(run, tmp_path):
    rng = numpy.random.default_rng(0)
    w, b = rng.standard_normal((3, 4)), rng.standard_normal(3)
    net = caffe_pb2.NetParameter(name="old")
    v1 = net.layers.add(name="ip", type=caffe_pb2.V1LayerParameter.INNER_PRODUCT)
    v1.bottom.append("data")
    v1.top.append("ip")
    for array in (w, b):
        v1.blobs.add(num=1, channels=1, height=1 if array.ndim == 1 else 3,
                     width=array.shape[-1]).data.extend(array.ravel().tolist())  # fmt: skip
    (tmp_path / "old.caffemodel").write_bytes(net.SerializeToString())
    assert run("upgrade_net_proto_binary", "old.caffemodel", "new.caffemodel")[0] == 0
    upgraded = caffe_pb2.NetParameter()
    upgraded.ParseFromString((tmp_path / "new.caffemodel").read_bytes())
    assert not upgraded.layers and [(x.name, x.type) for x in upgraded.layer] == [
        ("ip", "InnerProduct")
    ]
    weights = read_net_weights(tmp_path / "new.caffemodel")
    assert_array_equal(weights["ip"][0].reshape(3, 4), w.astype(numpy.float32))
    assert_array_equal(weights["ip"][1].ravel(), b.astype(numpy.float32))


def test_bad_inputs_are_one_line(cli, tmp_path):
    (tmp_path / "net.prototxt").write_text(V1_NET)
    line = cli("upgrade_net_proto_binary", "net.prototxt", "out.caffemodel")
    assert "net.prototxt: not a binary NetParameter: text (a prototxt?)" in line
    (tmp_path / "bad.prototxt").write_text("layers { name: 3 }\n")
    assert "bad.prototxt:1:" in cli("upgrade_net_proto_text", "bad.prototxt", "out.prototxt")
    line = cli("upgrade_solver_proto_text", "net.prototxt", "nowhere/s.prototxt")
    assert "net.prototxt:" in line  # a net is no solver: the parser names the file and line
    (tmp_path / "s.prototxt").write_text("base_lr: 0.1 solver_type: SGD\n")
    line = cli("upgrade_solver_proto_text", "s.prototxt", "nowhere/s.prototxt")
    assert line.endswith("nowhere/s.prototxt: cannot write: No such file or directory")
    assert not (tmp_path / "out.caffemodel").exists() and not (tmp_path / "out.prototxt").exists()
