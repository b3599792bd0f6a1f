"""Draw a net as a graphviz graph: a box per layer (name, type, key parameters), an edge per blob.

Edges carry the blob's name and, when the net can be built for the phase, its shape. A net whose
data layers cannot open their source (the LMDB is not there) is drawn from the NetParameter alone,
without shapes. The graph is built with pydot (optional extra `plot`); rendering to PNG or SVG
needs graphviz's `dot` program (Debian: `apt-get install graphviz`); `.dot` output needs neither.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from geeps_net.errors import GeepsError
from geeps_net.fileio import write_atomic
from geeps_net.graph import filter_net
from geeps_net.proto import caffe_pb2
from geeps_net.prototxt import NetSource, read_net

log = logging.getLogger(__name__)

PHASES = {"TRAIN": caffe_pb2.TRAIN, "TEST": caffe_pb2.TEST}

# Fill colour by layer type (others: DEFAULT_COLOR); loss layers are picked out by name.
COLORS = {
    "Convolution": "#f4a582", "Deconvolution": "#f4a582", "Pooling": "#fddbc7",
    "InnerProduct": "#b2abd2", "Data": "#92c5de", "Input": "#92c5de", "ImageData": "#92c5de",
    "HDF5Data": "#92c5de", "DummyData": "#92c5de", "MemoryData": "#92c5de",
    "Concat": "#d9f0d3", "Eltwise": "#d9f0d3", "BatchNorm": "#fff7bc", "Scale": "#fff7bc",
    "LRN": "#fff7bc",
}  # fmt: skip
DEFAULT_COLOR, LOSS_COLOR = "#e0e0e0", "#f4a6a6"


def _pydot():
    try:
        import pydot
    except ImportError:
        raise GeepsError(
            "draw_net needs pydot: pip install 'geeps-net[plot]' (or pip install pydot)"
        ) from None
    return pydot


def _spatial(values, default=None, h=0, w=0) -> str:
    """A conv/pool size: `3`, `3x5` from (kernel_h, kernel_w), or '' when unset."""
    if h or w:
        return f"{h}x{w}"
    values = list(values) if not isinstance(values, int) else [values]
    if not values:
        return "" if default is None else str(default)
    return "x".join(str(v) for v in values) if len(set(values)) > 1 else str(values[0])


def _conv_params(p) -> list[str]:
    parts = [f"{p.num_output} out", f"k {_spatial(p.kernel_size, h=p.kernel_h, w=p.kernel_w)}"]
    stride = _spatial(p.stride, 1, p.stride_h, p.stride_w)
    pad = _spatial(p.pad, 0, p.pad_h, p.pad_w)
    parts += [f"s {stride}"] if stride != "1" else []
    parts += [f"p {pad}"] if pad != "0" else []
    parts += [f"group {p.group}"] if p.group > 1 else []
    dilation = _spatial(p.dilation, 1)
    parts += [f"dil {dilation}"] if dilation != "1" else []
    return parts


def _pool_params(p) -> list[str]:
    method = caffe_pb2.PoolingParameter.PoolMethod.Name(p.pool)
    if p.global_pooling:
        return [method, "global"]
    parts = [method, f"k {_spatial(p.kernel_size, h=p.kernel_h, w=p.kernel_w)}"]
    stride = _spatial(p.stride, 1, p.stride_h, p.stride_w)
    pad = _spatial(p.pad, 0, p.pad_h, p.pad_w)
    parts += [f"s {stride}"] if stride != "1" else []
    parts += [f"p {pad}"] if pad != "0" else []
    return parts


def _lrn_params(p) -> list[str]:
    region = caffe_pb2.LRNParameter.NormRegion.Name(p.norm_region)
    return [f"size {p.local_size}", f"alpha {p.alpha:g}", f"beta {p.beta:g}", region]


def _data_params(layer) -> list[str]:
    p = layer.data_param
    return [p.source or "(no source)", f"batch {p.batch_size}"]


# Layer type -> its key parameters as short strings, for the node label.
KEY_PARAMS = {
    "Convolution": lambda lp: _conv_params(lp.convolution_param),
    "Deconvolution": lambda lp: _conv_params(lp.convolution_param),
    "Pooling": lambda lp: _pool_params(lp.pooling_param),
    "InnerProduct": lambda lp: [f"{lp.inner_product_param.num_output} out"],
    "LRN": lambda lp: _lrn_params(lp.lrn_param),
    "Dropout": lambda lp: [f"ratio {lp.dropout_param.dropout_ratio:g}"],
    "Concat": lambda lp: [f"axis {lp.concat_param.axis}"],
    "Eltwise": lambda lp: [caffe_pb2.EltwiseParameter.EltwiseOp.Name(lp.eltwise_param.operation)],
    "Data": _data_params,
    "Input": lambda lp: ["x".join(str(d) for d in s.dim) for s in lp.input_param.shape],
    "ReLU": lambda lp: (
        [f"slope {lp.relu_param.negative_slope:g}"] if lp.relu_param.negative_slope else []
    ),
    "BatchNorm": lambda lp: (
        [f"global stats {str(lp.batch_norm_param.use_global_stats).lower()}"]
        if lp.batch_norm_param.HasField("use_global_stats")
        else []
    ),
    "Scale": lambda lp: ["bias"] if lp.scale_param.bias_term else [],
    "Accuracy": lambda lp: (
        [f"top {lp.accuracy_param.top_k}"] if lp.accuracy_param.top_k != 1 else []
    ),
}


def layer_label(layer: caffe_pb2.LayerParameter) -> str:
    """Node text: name, (type), then key parameters and a loss weight when given."""
    lines = [layer.name, f"({layer.type})"]
    details = KEY_PARAMS.get(layer.type, lambda lp: [])(layer)
    if layer.loss_weight:
        details.append("loss weight " + ", ".join(f"{w:g}" for w in layer.loss_weight))
    if details:
        lines.append(", ".join(details))
    return "\n".join(lines)


def _color(layer: caffe_pb2.LayerParameter) -> str:
    if "Loss" in layer.type or layer.loss_weight:
        return LOSS_COLOR
    return COLORS.get(layer.type, DEFAULT_COLOR)


def blob_shapes(source: NetSource, phase: int) -> dict[str, tuple[int, ...]]:
    """Blob name -> shape from building the net (unbound); {} when it cannot be built here."""
    from geeps_net.net import Net

    try:
        net = Net(source, phase, resident=False)
    except GeepsError as e:
        log.warning("drawing without blob shapes: the net does not build here (%s)", e)
        return {}
    try:
        return {name: tuple(blob.shape) for name, blob in net.blobs.items()}
    finally:
        net.close()


def _edge_label(blob: str, shapes: dict) -> str:
    shape = shapes.get(blob)
    return blob if shape is None else f"{blob}\n{'x'.join(map(str, shape)) or 'scalar'}"


def build_graph(param: caffe_pb2.NetParameter, shapes: dict, rankdir: str = "LR"):
    """A pydot graph of `param`'s layers (in file order), blob edges labelled by `shapes`."""
    pydot = _pydot()
    graph = pydot.Dot(graph_name=f'"{param.name or "net"}"', graph_type="digraph", rankdir=rankdir)
    graph.set_node_defaults(
        shape="box", style="filled,rounded", fontname="Helvetica", fontsize="10"
    )
    graph.set_edge_defaults(fontname="Helvetica", fontsize="8")
    producer, consumed = {}, set()  # blob name -> node id of the layer that last wrote it
    for i, layer in enumerate(param.layer):
        node = f"layer{i}"
        graph.add_node(pydot.Node(node, label=_quote(layer_label(layer)), fillcolor=_color(layer)))
        for blob in layer.bottom:
            if blob in producer:
                label = _quote(_edge_label(blob, shapes))
                graph.add_edge(pydot.Edge(producer[blob], node, label=label))
                consumed.add((producer[blob], blob))
        for blob in layer.top:
            producer[blob] = node  # in place: the next reader reads this layer's output
    for blob, node in producer.items():  # net outputs: tops nobody reads afterwards
        if (node, blob) not in consumed:
            out = f"out_{len(graph.get_nodes())}"
            graph.add_node(pydot.Node(out, label=_quote(blob), shape="plaintext", style=""))
            graph.add_edge(pydot.Edge(node, out, label=_quote(_edge_label(blob, shapes))))
    return graph


def _quote(text: str) -> str:
    """A DOT string literal (pydot passes labels through as written)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def draw_net(
    net_path: str | Path, out_path: str | Path, phase: str = "TRAIN", rankdir="LR"
) -> Path:
    """Draw the net file into `out_path`: .dot (text), or .png/.svg/.pdf rendered by `dot`.

    `phase` is TRAIN or TEST (layers filtered and shapes inferred for it) or ALL (every layer, no
    shapes), as Caffe's draw_net.py offers.
    """
    out_path = Path(out_path)
    fmt = out_path.suffix.lstrip(".").lower()
    if fmt not in ("dot", "png", "svg", "pdf"):
        raise GeepsError(f"{out_path}: draw_net writes .dot, .png, .svg or .pdf, not .{fmt or '?'}")
    if phase not in (*PHASES, "ALL"):
        raise GeepsError(f"-phase {phase}: expected TRAIN, TEST or ALL")
    source = read_net(net_path)
    if phase == "ALL":
        param, shapes = source.param, {}
    else:
        state = caffe_pb2.NetState(phase=PHASES[phase])
        param, shapes = filter_net(source.param, state)[0], blob_shapes(source, PHASES[phase])
    graph = build_graph(param, shapes, rankdir)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "dot":
        write_atomic(out_path, graph.to_string().encode())
        return out_path
    if shutil.which("dot") is None:
        dot_path = out_path.with_suffix(".dot")
        write_atomic(dot_path, graph.to_string().encode())
        raise GeepsError(
            f"graphviz's `dot` is not installed, so {out_path.name} was not rendered; wrote "
            f"{dot_path} instead: render it with `dot -T{fmt} {dot_path} -o {out_path}` after "
            "installing graphviz (Debian: apt-get install graphviz)"
        )
    write_atomic(out_path, graph.create(prog="dot", format=fmt))
    return out_path
