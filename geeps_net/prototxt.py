"""Read Caffe's text formats: nets and solvers, with FILE:LINE:COL errors and legacy upgrades.

Legacy nets are upgraded on load as Caffe does: V1 `layers { type: CONVOLUTION ... }` and V0
`layers { layer { type: "conv" } }` become `layer { type: "Convolution" }`; net-level
`input`/`input_dim`/
`input_shape` become an Input layer; data-layer transform fields move to `transform_param`;
solver_type
becomes type.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format

from geeps_net.errors import NetError, PrototxtError
from geeps_net.proto import caffe_pb2

log = logging.getLogger(__name__)


@dataclass
class NetSource:
    """A parsed net and where it came from: `where(i)` gives "FILE:LINE" of layer i for error
    messages."""

    param: caffe_pb2.NetParameter
    path: str = "<string>"
    layer_lines: list[int] = field(default_factory=list)

    def where(self, index: int) -> str:
        if 0 <= index < len(self.layer_lines):
            return f"{self.path}:{self.layer_lines[index]}"
        return self.path


def _parse(text: str, message, path: str):
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as e:
        detail = re.sub(r"^\d+:\d+ : ", "", str(e))
        detail = re.sub(r"^'.*?': ", "", detail) if len(detail) > 200 else detail
        raise PrototxtError(f"{path}:{e.GetLine()}:{e.GetColumn()}: {detail}") from None
    return message


def _read_text(path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as e:
        error = PrototxtError(f"{path}: cannot read: {e.strerror}")
        error.unreadable = True  # a file named by another file: the caller may name that one
        raise error from None
    except UnicodeDecodeError:
        raise PrototxtError(f"{path}: not a text prototxt (binary file?)") from None


def _top_level_lines(text: str, names: tuple[str, ...]) -> list[int]:
    """1-based line of every top-level `layer`/`layers` entry, skipping comments and strings."""
    lines, depth, line = [], 0, 1
    token = re.compile(r"#[^\n]*|\"(?:\\.|[^\"\\])*\"|'(?:\\.|[^'\\])*'|[{}<>]|\n|[A-Za-z_]\w*")
    for m in token.finditer(text):
        t = m.group()
        if t == "\n":
            line += 1
        elif t in "{<":
            depth += 1
        elif t in "}>":
            depth -= 1
        elif depth == 0 and t in names:
            lines.append(line)
    return lines


def parse_net(text: str, path: str = "<string>") -> NetSource:
    """Parse NetParameter text (any Caffe version) into an upgraded NetSource."""
    param = _parse(text, caffe_pb2.NetParameter(), path)
    lines = _top_level_lines(text, ("layer", "layers"))
    if param.layer and param.layers:
        line = _top_level_lines(text, ("layers",))[0]
        raise PrototxtError(
            f"{path}:{line}: mixes `layer` and legacy `layers` entries (Caffe refuses this)"
        )
    upgraded = upgrade_net(param, path)
    if len(upgraded.layer) != len(lines):  # an Input layer was prepended for legacy net inputs
        lines = [1] * (len(upgraded.layer) - len(lines)) + lines
    source = NetSource(upgraded, path, lines)
    _check_rules(source)
    return source


def _check_rules(source: NetSource) -> None:
    """Caffe's FilterNet refuses a layer with both include and exclude rules, whatever the phase:
    say so at parse time, where the layer's line is known."""
    for i, layer in enumerate(source.param.layer):
        if layer.include and layer.exclude:
            raise NetError(
                f'{source.where(i)}: layer "{layer.name}": specifies both include and exclude '
                "rules (give one kind only)"
            )


def read_net(path) -> NetSource:
    """Read and upgrade a net prototxt file."""
    return parse_net(_read_text(path), str(path))


def read_solver(path) -> caffe_pb2.SolverParameter:
    """Read a solver prototxt; legacy `solver_type` becomes `type`."""
    solver = parse_solver(_read_text(path), str(path))
    return solver


def parse_solver(text: str, path: str = "<string>") -> caffe_pb2.SolverParameter:
    """Parse SolverParameter text, upgrading the legacy solver_type enum."""
    solver = _parse(text, caffe_pb2.SolverParameter(), path)
    if solver.HasField("solver_type"):
        if solver.HasField("type") and solver.type != _SOLVER_TYPES[solver.solver_type]:
            raise PrototxtError(f"{path}: both solver_type and type are set, and they disagree")
        solver.type = _SOLVER_TYPES[solver.solver_type]
        solver.ClearField("solver_type")
        log.warning("%s: upgraded legacy solver_type to type: %s", path, solver.type)
    return solver


_SOLVER_TYPES = {0: "SGD", 1: "Nesterov", 2: "AdaGrad", 3: "RMSProp", 4: "AdaDelta", 5: "Adam"}


# -- net upgrades ---------------------------------------------------------------------------------


def upgrade_net(param: caffe_pb2.NetParameter, path: str = "<string>") -> caffe_pb2.NetParameter:
    """Return a current-format copy of `param` (Caffe's UpgradeNetAsNeeded)."""
    from geeps_net.upgrade import upgrade_v0_layer, upgrade_v1_layer

    net = caffe_pb2.NetParameter()
    net.CopyFrom(param)
    if net.layers:
        net.ClearField("layers")
        for i, v1 in enumerate(param.layers):
            if v1.HasField("layer"):
                v1 = upgrade_v0_layer(v1, f"{path}: layers[{i}]")
            net.layer.add().CopyFrom(upgrade_v1_layer(v1, f"{path}: layers[{i}]"))
        kind = "V0" if any(v1.HasField("layer") for v1 in param.layers) else "V1"
        log.warning("%s: upgraded legacy %s `layers` to `layer`", path, kind)
    _upgrade_inputs(net, path)
    for layer in net.layer:
        _upgrade_data_transform(layer)
        _upgrade_batch_norm(layer)
    return net


def _upgrade_inputs(net, path: str) -> None:
    """Net-level input/input_dim/input_shape -> a leading Input layer named "input"."""
    if not net.input:
        if net.input_dim or net.input_shape:
            raise PrototxtError(f"{path}: input_dim/input_shape given without `input` names")
        return
    layer = caffe_pb2.LayerParameter(name="input", type="Input")
    layer.top.extend(net.input)
    if net.input_shape:
        if len(net.input_shape) != len(net.input):
            raise PrototxtError(
                f"{path}: {len(net.input)} inputs but {len(net.input_shape)} input_shape"
            )
        layer.input_param.shape.extend(net.input_shape)
    elif net.input_dim:
        if len(net.input_dim) != 4 * len(net.input):
            raise PrototxtError(f"{path}: input_dim must give 4 values per input")
        for i in range(len(net.input)):
            layer.input_param.shape.add().dim.extend(net.input_dim[4 * i : 4 * i + 4])
    else:
        raise PrototxtError(f"{path}: `input` given without input_dim or input_shape")
    layers = [layer] + list(net.layer)
    for name in ("input", "input_dim", "input_shape", "layer"):
        net.ClearField(name)
    net.layer.extend(layers)


def _upgrade_data_transform(layer) -> None:
    """Legacy DataParameter scale/mean_file/crop_size/mirror -> transform_param."""
    if not layer.HasField("data_param"):
        return
    data, transform = layer.data_param, layer.transform_param
    for name in ("scale", "mean_file", "crop_size", "mirror"):
        if data.HasField(name):
            setattr(transform, name, getattr(data, name))
            data.ClearField(name)


def _upgrade_batch_norm(layer) -> None:
    """BatchNorm's three `param { lr_mult: 0 }` are dropped: its statistics are never learned."""
    if layer.type == "BatchNorm" and len(layer.param) == 3:
        if all(p.lr_mult == 0 for p in layer.param):
            layer.ClearField("param")
