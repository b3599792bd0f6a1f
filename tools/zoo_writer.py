"""Write Caffe prototxt text from Python values: the building blocks of tools/make_zoo.py.

A message is a dict (field -> value); lists are repeated fields; `Enum("MAX")` is an identifier,
other strings are quoted. Short messages go on one line (`param { lr_mult: 1 decay_mult: 1 }`),
long ones over several, as people write prototxt by hand.
"""

from __future__ import annotations

INLINE_WIDTH = 96  # a message whose one-line form is longer than this is written over several lines


class Enum(str):
    """An enum value or identifier, written without quotes (MAX, TRAIN, SUM)."""


def scalar(value) -> str:
    """One field value in text format."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, float):
        return repr(value) if abs(value) >= 1e-4 or value == 0 else f"{value:g}"
    return str(value)


def _items(message: dict):
    for key, value in message.items():
        if value is None:
            continue
        for item in value if isinstance(value, list) else [value]:
            yield key, item


def inline(message: dict) -> str:
    """The one-line form of a message body: `k: v k2 { ... }`."""
    parts = []
    for key, value in _items(message):
        if isinstance(value, dict):
            parts.append(f"{key} {{ {inline(value)} }}")
        else:
            parts.append(f"{key}: {scalar(value)}")
    return " ".join(parts)


def field_lines(key: str, value, indent: str) -> list[str]:
    """Lines for one field, inline when short enough."""
    if not isinstance(value, dict):
        return [f"{indent}{key}: {scalar(value)}"]
    one = f"{indent}{key} {{ {inline(value)} }}"
    if len(one) <= INLINE_WIDTH:
        return [one]
    lines = [f"{indent}{key} {{"]
    for k, v in _items(value):
        lines += field_lines(k, v, indent + "  ")
    return lines + [f"{indent}}}"]


class NetText:
    """A NetParameter being written: header comment, name, then layers in order.

    With `deploy`, learning-rate `param` specs and fillers are left out (a deploy net is for
    inference: weights come from a .caffemodel).
    """

    FILLERS = ("weight_filler", "bias_filler", "filler")

    def __init__(self, name: str, comment: list[str], deploy: bool) -> None:
        self.deploy = deploy
        self.lines = [f"# {c}".rstrip() for c in comment] + [f'name: "{name}"']

    def layer(self, name: str, type_: str, bottom=(), top=(), **fields) -> str:
        """Append a layer; `fields` are LayerParameter fields (param, include, *_param...)."""
        if isinstance(bottom, str):
            bottom = [bottom]
        if isinstance(top, str):
            top = [top]
        body = {"name": name, "type": type_, "bottom": list(bottom), "top": list(top)}
        for key, value in fields.items():
            body[key] = self._strip(value) if self.deploy else value
        if self.deploy:
            body.pop("param", None)
        self.lines.append("layer {")
        for key, value in _items(body):
            self.lines += field_lines(key, value, "  ")
        self.lines.append("}")
        return top[0] if top else name

    def _strip(self, value):
        if not isinstance(value, dict):
            return value
        return {k: self._strip(v) for k, v in value.items() if k not in self.FILLERS}

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def solver_text(comment: list[str], fields: dict) -> str:
    """A SolverParameter file: header comment, then one field per line."""
    lines = [f"# {c}".rstrip() for c in comment]
    for key, value in _items(fields):
        lines += field_lines(key, value, "")
    return "\n".join(lines) + "\n"


# -- layer helpers ----------------------------------------------------------------------------

WEIGHT_SPEC = {"lr_mult": 1, "decay_mult": 1}
BIAS_SPEC = {"lr_mult": 2, "decay_mult": 0}
FROZEN_SPEC = {"lr_mult": 0, "decay_mult": 0}
TRAIN = {"phase": Enum("TRAIN")}
TEST = {"phase": Enum("TEST")}


def filler(type_: str, **fields) -> dict:
    """A FillerParameter: filler("gaussian", std=0.01)."""
    return {"type": type_, **fields}


class ZooNet(NetText):
    """NetText with the layers the zoo uses; fillers default to `weight_filler`/`bias_filler`."""

    def __init__(self, name, comment, deploy, weight_filler=None, bias_filler=None) -> None:
        super().__init__(name, comment, deploy)
        self.weight_filler = weight_filler or filler("xavier")
        self.bias_filler = bias_filler or filler("constant", value=0.0)

    def conv(self, name, bottom, num_output, kernel, stride=1, pad=0, *, group=1, bias=True,
             weight_filler=None, bias_filler=None) -> str:  # fmt: skip
        """Convolution `name` (top `name`); bias_term false drops the bias blob and its spec."""
        p = {"num_output": num_output, "bias_term": None if bias else False, "pad": pad or None,
             "kernel_size": kernel, "group": group if group > 1 else None,
             "stride": stride if stride > 1 else None,
             "weight_filler": weight_filler or self.weight_filler,
             "bias_filler": (bias_filler or self.bias_filler) if bias else None}  # fmt: skip
        specs = [WEIGHT_SPEC, BIAS_SPEC] if bias else [WEIGHT_SPEC]
        return self.layer(name, "Convolution", bottom, name, param=specs, convolution_param=p)

    def fc(self, name, bottom, num_output, weight_filler=None, bias_filler=None, **extra) -> str:
        """InnerProduct `name` with a weight and a bias."""
        p = {"num_output": num_output, "weight_filler": weight_filler or self.weight_filler,
             "bias_filler": bias_filler or self.bias_filler}  # fmt: skip
        specs = extra.pop("param", [WEIGHT_SPEC, BIAS_SPEC])
        return self.layer(name, "InnerProduct", bottom, name, param=specs, inner_product_param=p)

    def relu(self, name, blob) -> str:
        """ReLU in place on `blob`."""
        return self.layer(name, "ReLU", blob, blob)

    def pool(self, name, bottom, method="MAX", kernel=None, stride=None, pad=0, global_=False):
        """Pooling `name`; global_ pools the whole map (kernel from the bottom's size)."""
        p = {"pool": Enum(method), "kernel_size": kernel, "stride": stride, "pad": pad or None,
             "global_pooling": True if global_ else None}  # fmt: skip
        return self.layer(name, "Pooling", bottom, name, pooling_param=p)

    def lrn(self, name, bottom, size, alpha, beta, within=False) -> str:
        """LRN across channels (or within a channel)."""
        p = {"local_size": size, "alpha": alpha, "beta": beta,
             "norm_region": Enum("WITHIN_CHANNEL") if within else None}  # fmt: skip
        return self.layer(name, "LRN", bottom, name, lrn_param=p)

    def dropout(self, name, blob, ratio) -> str:
        """Dropout in place."""
        return self.layer(name, "Dropout", blob, blob, dropout_param={"dropout_ratio": ratio})

    def concat(self, name, bottoms) -> str:
        return self.layer(name, "Concat", bottoms, name)

    def bn_scale(self, blob) -> str:
        """BatchNorm then Scale (with bias) in place on `blob`: the ResNet/MobileNet pattern.

        The three BatchNorm blobs are statistics, never learned (lr_mult 0); in a deploy net the
        layer uses the stored statistics.
        """
        bn = {"use_global_stats": True} if self.deploy else None
        self.layer(f"{blob}/bn", "BatchNorm", blob, blob, param=[FROZEN_SPEC] * 3,
                   batch_norm_param=bn)  # fmt: skip
        return self.layer(f"{blob}/scale", "Scale", blob, blob, scale_param={"bias_term": True})

    def conv_bn_relu(self, name, bottom, num_output, kernel, stride=1, pad=0, group=1, relu=True):
        """conv (no bias) -> BatchNorm -> Scale -> ReLU, all but the conv in place."""
        top = self.conv(name, bottom, num_output, kernel, stride, pad, group=group, bias=False)
        self.bn_scale(top)
        return self.relu(f"{name}/relu", top) if relu else top

    def classifier(self, bottom, top5=True, loss_name="loss", weight=None, prefix="") -> None:
        """train_val: SoftmaxWithLoss and TEST accuracies; deploy: Softmax `prob`."""
        if self.deploy:
            self.layer("prob", "Softmax", bottom, "prob")
            return
        self.layer(loss_name, "SoftmaxWithLoss", [bottom, "label"], loss_name, loss_weight=weight)
        self.layer(f"{prefix}accuracy", "Accuracy", [bottom, "label"], f"{prefix}accuracy",
                   include=TEST)  # fmt: skip
        if top5:
            self.layer(f"{prefix}accuracy_top5", "Accuracy", [bottom, "label"],
                       f"{prefix}accuracy_top5", include=TEST,
                       accuracy_param={"top_k": 5})  # fmt: skip

    def data(self, db: str, batch: tuple[int, int], shape: tuple[int, int, int], transform: dict,
             deploy_batch: int, splits=("train", "val")) -> str:  # fmt: skip
        """train_val: a Data layer per phase reading `<db>/<split>_lmdb` (mirrored in TRAIN when
        the transform crops); deploy: an Input layer of (deploy_batch, *shape)."""
        if self.deploy:
            shape = {"dim": [deploy_batch, *shape]}
            return self.layer("data", "Input", [], "data", input_param={"shape": shape})
        for phase, name, size in zip((TRAIN, TEST), splits, batch):
            t = dict(transform)
            if phase is TRAIN and t.get("crop_size"):
                t = {"mirror": True, **t}
            source = {"source": f"{db}/{name}_lmdb", "batch_size": size, "backend": Enum("LMDB")}
            self.layer("data", "Data", [], ["data", "label"], include=phase, transform_param=t,
                       data_param=source)  # fmt: skip
        return "data"
