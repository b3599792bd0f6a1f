"""Layer test helpers, for this project's tests and for users' own layers.

`make_layer` builds one layer from prototxt text; `LayerRig` binds its blobs to resident arrays;
`forward_once` runs it; `check_gradient` compares backward with central differences in float64.
"""

from __future__ import annotations

import numpy
from google.protobuf import text_format

from geeps_net.backend import to_host
from geeps_net.blob import Blob
from geeps_net.fillers import fill
from geeps_net.layer import TRAIN, Layer, create_layer
from geeps_net.proto import caffe_pb2


def make_layer(text: str, phase: int = TRAIN) -> Layer:
    """A layer from LayerParameter text such as 'type: "ReLU" relu_param { negative_slope: 0.1
    }'."""
    param = caffe_pb2.LayerParameter()
    text_format.Parse(text, param)
    if not param.name:
        param.name = param.type.lower() or "layer"
    return create_layer(param, phase)


def _top_count(layer: Layer) -> int:
    if layer.layer_param.top:
        return len(layer.layer_param.top)
    rule = layer.num_tops
    return rule if isinstance(rule, int) else rule[0]


class LayerRig:
    """One layer set up on given inputs, every blob bound to its own resident `xp` array."""

    def __init__(self, xp, layer: Layer, inputs, dtype="float64", params=None, seed: int = 0):
        self.xp, self.layer = xp, layer
        layer.dtype = numpy.dtype(dtype)
        self.bottoms = []
        for i, x in enumerate(inputs):
            x = numpy.asarray(x)
            blob = Blob(f"bottom{i}", x.shape, dtype)
            blob.bind(xp.asarray(x, dtype=dtype), xp.zeros(x.shape, dtype=dtype))
            self.bottoms.append(blob)
        names = list(layer.layer_param.top) or [f"top{i}" for i in range(_top_count(layer))]
        # An in-place layer's top is its bottom blob, as in a Net.
        bottom_names = list(layer.layer_param.bottom)
        self.tops = [
            self.bottoms[bottom_names.index(n)] if n in bottom_names else Blob(n, (), dtype)
            for n in names
        ]
        layer.check_blob_counts(self.bottoms, self.tops)
        layer.setup(self.bottoms, self.tops)
        rng = numpy.random.default_rng(seed)
        for i, blob in enumerate(layer.blobs):
            value = fill(layer.fillers[i], blob.shape, rng, dtype)
            if params is not None and i < len(params) and params[i] is not None:
                value = numpy.asarray(params[i], dtype=dtype).reshape(blob.shape)
            blob.dtype = numpy.dtype(dtype)
            blob.bind(xp.asarray(value), xp.zeros(blob.shape, dtype=dtype))
        self.reshape()

    def reshape(self) -> None:
        """Run the layer's reshape and (re)bind tops and internals of new shapes to zeroed
        arrays."""
        self.layer.reshape(self.bottoms, self.tops)
        for blob in self.tops + list(self.layer.internals.values()):
            if blob.data is None or blob.data.shape != blob.shape:
                blob.bind(
                    self.xp.zeros(blob.shape, dtype=blob.dtype),
                    self.xp.zeros(blob.shape, dtype=blob.dtype),
                )

    def forward(self) -> list[numpy.ndarray]:
        """Forward once; the tops' data as host arrays."""
        self.layer.forward(self.xp, self.bottoms, self.tops)
        return [to_host(t.data).copy() for t in self.tops]

    def backward(self, top_diffs, propagate_down=None) -> list[numpy.ndarray]:
        """Set the tops' diff, zero bottom and param diffs, run backward; bottom diffs on the
        host."""
        for top, d in zip(self.tops, top_diffs, strict=True):
            top.diff[...] = self.xp.asarray(d, dtype=top.dtype)
        for blob in self.bottoms + self.layer.blobs:
            if blob not in self.tops:
                blob.diff[...] = 0
        if propagate_down is None:
            propagate_down = [True] * len(self.bottoms)
        self.layer.backward(self.xp, self.tops, list(propagate_down), self.bottoms)
        return [to_host(b.diff).copy() for b in self.bottoms]

    def param_diffs(self) -> list[numpy.ndarray]:
        return [to_host(b.diff).copy() for b in self.layer.blobs]


def forward_once(xp, layer: Layer, *inputs, params=None, dtype="float64"):
    """Top data after one forward pass (a single array when the layer has one top)."""
    outputs = LayerRig(xp, layer, inputs, dtype, params).forward()
    return outputs[0] if len(outputs) == 1 else outputs


def check_gradient(
    xp,
    layer: Layer,
    inputs,
    *,
    params=None,
    check_bottoms=None,
    check_params: bool = True,
    step: float = 1e-3,
    threshold: float = 1e-3,
    kink: float | None = None,
    kink_range: float = 1e-2,
    seed: int = 1701,
) -> int:
    """Compare backward with central differences of E = sum(r * tops), r fixed random weights.

    `inputs` are arrays (or shapes, filled with N(0, 1)); `check_bottoms` lists the bottoms to check
    (default: all but the layer's no-gradient bottoms). An element within `kink_range` of `kink` is
    skipped,
    as in Caffe's GradientChecker. The tolerance is threshold * max(|analytic|, |numeric|, 1).
    Returns the number of elements checked; raises AssertionError naming the first mismatch.
    """
    rng = numpy.random.default_rng(seed)
    inputs = [rng.standard_normal(x) if isinstance(x, tuple) else numpy.asarray(x) for x in inputs]
    rig = LayerRig(xp, layer, inputs, "float64", params)
    if check_bottoms is None:
        check_bottoms = [i for i in range(len(inputs)) if layer.allow_force_backward(i)]

    def run_forward():
        layer.rng = numpy.random.default_rng(seed)  # stochastic layers repeat their draws
        return rig.forward()

    outputs = run_forward()
    weights = [rng.standard_normal(o.shape) for o in outputs]
    propagate = [i in check_bottoms for i in range(len(inputs))]
    for blob in layer.blobs:
        blob.diff[...] = 0
    analytic_bottoms = rig.backward(weights, propagate)
    targets = [(f"bottom {i}", rig.bottoms[i], analytic_bottoms[i]) for i in check_bottoms]
    if check_params:
        targets += [
            (f"param {i}", b, d) for i, (b, d) in enumerate(zip(layer.blobs, rig.param_diffs()))
        ]

    def objective() -> float:
        return float(sum((w * o).sum() for w, o in zip(weights, run_forward())))

    checked = 0
    for label, blob, analytic in targets:
        flat = blob.data.reshape(-1)
        for j in range(flat.size):
            x = float(flat[j])
            if kink is not None and abs(abs(x) - kink) <= kink_range:
                continue
            flat[j] = x + step
            plus = objective()
            flat[j] = x - step
            minus = objective()
            flat[j] = x
            numeric = (plus - minus) / (2 * step)
            a = float(analytic.reshape(-1)[j])
            scale = max(abs(a), abs(numeric), 1.0)
            assert abs(a - numeric) <= threshold * scale, (
                f"{layer.type} {label} element {j}: analytic {a:.6g} vs numeric {numeric:.6g}"
            )
            checked += 1
    return checked


def check_backward_reads(xp, layer: Layer, inputs, *, params=None, seed: int = 1701) -> None:
    """Assert that backward reads no more than `layer.backward_reads` declares.

    Runs forward and backward in float64, then fills the bottom data and/or top data the layer says
    its backward does not read with NaN (as if the PS had dropped them), runs backward again and
    requires the same bottom and param diffs.
    """
    rng = numpy.random.default_rng(seed)
    inputs = [rng.standard_normal(x) if isinstance(x, tuple) else numpy.asarray(x) for x in inputs]
    rig = LayerRig(xp, layer, inputs, "float64", params)
    top_diffs = [rng.standard_normal(o.shape) for o in rig.forward()]
    propagate = [layer.allow_force_backward(i) for i in range(len(inputs))]
    want = rig.backward(top_diffs, propagate) + rig.param_diffs()
    shared = [b for b in rig.bottoms if b in rig.tops]  # in place: data is both
    if "bottom_data" not in layer.backward_reads:
        for blob in rig.bottoms:
            if blob not in shared:
                blob.data[...] = numpy.nan
    if "top_data" not in layer.backward_reads:
        for blob in rig.tops:
            if blob not in shared:
                blob.data[...] = numpy.nan
    got = rig.backward(top_diffs, propagate) + rig.param_diffs()
    for i, (a, b) in enumerate(zip(want, got, strict=True)):
        numpy.testing.assert_array_equal(b, a, err_msg=f"{layer.type}: diff {i} changed")
