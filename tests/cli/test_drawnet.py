"""draw_net: layers as boxes with their key parameters, blobs as edges labelled with shapes."""

import re
import shutil
from pathlib import Path

import pytest

import geeps_net.tools_cli  # noqa: F401  (registers draw_net)
from geeps_net.cli import main
from geeps_net.drawnet import layer_label
from geeps_net.prototxt import parse_net

pytest.importorskip("pydot", reason="draw_net needs pydot (extra `plot`)")

ROOT = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

SMALL_NET = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } shape { dim: 2 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 stride: 2 pad: 1 group: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: AVE global_pooling: true } }
layer { name: "ip" type: "InnerProduct" bottom: "pool1" top: "ip"
        inner_product_param { num_output: 5 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc"
        include { phase: TEST } }
"""


NODE = re.compile(r'^(\w+) \[label="((?:[^"\\]|\\.)*)"', re.M)
EDGE = re.compile(r'^(\w+) -> (\w+) \[label="((?:[^"\\]|\\.)*)"\];$', re.M)


def _dot(tmp_path, text, *flags) -> str:
    net = tmp_path / "net.prototxt"
    net.write_text(text)
    out = tmp_path / "net.dot"
    assert main(["draw_net", str(net), str(out), *flags]) == 0
    return out.read_text()


def _edges(dot: str) -> dict[tuple[str, str], str]:
    """(from layer name, to layer name or output) -> edge label (`\\n` kept as written)."""
    names = {node: label.split("\\n")[0] for node, label in NODE.findall(dot)}
    return {(names[a], names[b]): label for a, b, label in EDGE.findall(dot)}


def test_edges_carry_blob_shapes_and_in_place_chains(tmp_path):
    edges = _edges(_dot(tmp_path, SMALL_NET, "-phase", "TRAIN"))
    assert edges[("data", "conv1")] == "data\\n2x3x8x8"
    assert edges[("conv1", "relu1")] == "conv1\\n2x4x4x4"
    assert edges[("relu1", "pool1")] == "conv1\\n2x4x4x4"  # the reader of an in-place top
    assert edges[("pool1", "ip")] == "pool1\\n2x4x1x1"
    assert edges[("data", "loss")] == "label\\n2"
    assert edges[("loss", "loss")] == "loss\\nscalar"  # the net's output node
    assert ("ip", "acc") not in edges  # TEST-only layer left out of TRAIN


def test_test_phase_and_all_phase(tmp_path):
    assert ("ip", "acc") in _edges(_dot(tmp_path, SMALL_NET, "-phase", "TEST"))
    edges = _edges(_dot(tmp_path, SMALL_NET, "-phase", "ALL"))
    assert edges[("ip", "acc")] == "ip"  # ALL: every layer, no shapes


def test_rankdir_is_passed_to_graphviz(tmp_path):
    assert "rankdir=TB;" in _dot(tmp_path, SMALL_NET, "-rankdir", "TB")


def test_layer_labels_name_key_parameters():
    net = parse_net(SMALL_NET).param
    labels = {layer.name: layer_label(layer) for layer in net.layer}
    assert labels["conv1"] == "conv1\n(Convolution)\n4 out, k 3, s 2, p 1"
    assert labels["pool1"] == "pool1\n(Pooling)\nAVE, global"
    assert labels["ip"] == "ip\n(InnerProduct)\n5 out"
    assert labels["data"] == "data\n(Input)\n2x3x8x8, 2"
    assert labels["relu1"] == "relu1\n(ReLU)"


def test_net_whose_data_is_missing_is_drawn_without_shapes(tmp_path, capsys):
    data = 'layer { name: "data" type: "Data" top: "data" top: "label"\n'
    data += f'  data_param {{ source: "{tmp_path}/missing_lmdb" batch_size: 4 }} }}'
    body = SMALL_NET.split("\n", 4)[4]  # everything after the Input layer
    edges = _edges(_dot(tmp_path, f'name: "nodb"\n{data}\n{body}'))
    assert edges[("data", "conv1")] == "data" and edges[("conv1", "relu1")] == "conv1"
    assert "without blob shapes" in capsys.readouterr().err


def test_zoo_googlenet_draws_with_concat_fan_in(tmp_path):
    out = tmp_path / "googlenet.dot"
    assert main(["draw_net", str(ROOT / "models/googlenet/deploy.prototxt"), str(out)]) == 0
    edges = _edges(out.read_text())
    into_concat = [k for k in edges if k[1] == "inception_3a/output"]
    assert len(into_concat) == 4
    assert edges[("inception_5b/output", "pool5/7x7_s1")] == "inception_5b/output\\n10x1024x7x7"


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz's dot is not installed")
def test_png_and_svg_render(tmp_path):
    net = tmp_path / "net.prototxt"
    net.write_text(SMALL_NET)
    assert main(["draw_net", str(net), str(tmp_path / "net.png")]) == 0
    data = (tmp_path / "net.png").read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000
    assert main(["draw_net", str(net), str(tmp_path / "net.svg"), "-rankdir", "TB"]) == 0
    assert b"<svg" in (tmp_path / "net.svg").read_bytes()


def test_without_dot_binary_writes_dot_and_says_how(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    net = tmp_path / "net.prototxt"
    net.write_text(SMALL_NET)
    assert main(["draw_net", str(net), str(tmp_path / "net.png")]) == 1
    err = capsys.readouterr().err.strip()
    assert "dot -Tpng" in err and "apt-get install graphviz" in err and "\n" not in err
    assert (tmp_path / "net.dot").is_file() and not (tmp_path / "net.png").exists()


def test_bad_output_extension(tmp_path, capsys):
    net = tmp_path / "net.prototxt"
    net.write_text(SMALL_NET)
    assert main(["draw_net", str(net), str(tmp_path / "net.jpg")]) == 1
    assert "not .jpg" in capsys.readouterr().err
