"""Net: the ordered layers and blobs of one NetParameter; forward/backward one layer at a time.

The Net knows nothing of the parameter server. It runs either *resident* (every blob bound to its
own array: inference, tests, the no-PS baseline) or *bound from outside* (the worker hands each
layer PS buffers before `forward_layer(i)` / `backward_layer(i)`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy

from geeps_net.backend import to_host
from geeps_net.blob import Blob
from geeps_net.errors import GeepsError, NetError
from geeps_net.graph import filter_net, insert_splits
from geeps_net.layer import TRAIN
from geeps_net.net_build import build_layers
from geeps_net.proto import caffe_pb2
from geeps_net.prototxt import NetSource, parse_net, read_net

log = logging.getLogger(__name__)

PHASES = {"TRAIN": caffe_pb2.TRAIN, "TEST": caffe_pb2.TEST}


@dataclass
class Learnable:
    """A learnable blob owned by a layer, with its solver multipliers (Caffe's learnable_params)."""

    blob: Blob
    layer_index: int
    param_index: int
    lr_mult: float = 1.0
    decay_mult: float = 1.0
    blob_init: numpy.ndarray | None = None  # filler values, drawn at build time

    @property
    def name(self) -> str:
        return self.blob.name


class Net:
    """Caffe's Net: layers in execution order, blobs by name, losses, and which layers need
    backward."""

    def __init__(
        self,
        model,
        phase=TRAIN,
        weights=None,
        *,
        level: int = 0,
        stages=(),
        seed: int | None = 0,
        xp=numpy,
        resident: bool = True,
        data_shard=(0, 1),
    ) -> None:
        """Build from a prototxt path, prototxt text, NetSource or NetParameter.

        `phase` is TRAIN/TEST (or the strings); `seed` seeds fillers and stochastic layers (None =
        random);
        `resident=False` leaves every blob unbound, for the parameter server to bind.
        """
        self.xp = xp
        self.source = _as_source(model)
        self.phase = PHASES[phase] if isinstance(phase, str) else phase
        state = caffe_pb2.NetState(phase=self.phase, level=level, stage=list(stages))
        filtered, kept = filter_net(self.source.param, state)
        try:
            self.param, split_origins = insert_splits(filtered)
        except NetError as e:
            where = self.source.where(kept[e.input_index]) if hasattr(e, "input_index") else ""
            raise NetError(f"{where}: {e}" if where else str(e)) from None
        self.origins = [kept[i] for i in split_origins]  # index of each layer in the source file
        self.name = self.param.name
        self.seed = seed
        seeds = numpy.random.SeedSequence(seed)
        self._fill_rng, layer_seeds = (
            numpy.random.default_rng(seeds),
            seeds.spawn(len(self.param.layer)),
        )
        try:
            build_layers(self, layer_seeds, data_shard)
        except GeepsError as e:
            self.close()
            raise _located(e, self) from None
        self.resident = False
        if resident:
            self.bind_resident()
        if weights:
            self.copy_from(weights)

    # -- introspection (pycaffe names) ----------------------------------------------------------

    @property
    def params(self) -> dict[str, list[Blob]]:
        """Layer name -> its learnable blobs (shared blobs appear under every layer that uses
        them)."""
        return {layer.name: layer.blobs for layer in self.layers if layer.blobs}

    @property
    def inputs(self) -> list[str]:
        """Tops of Input layers: what `forward(**inputs)` accepts."""
        return [
            t.name
            for layer, tops in zip(self.layers, self.tops)
            if layer.type == "Input"
            for t in tops
        ]

    def where(self, index: int) -> str:
        """FILE:LINE of layer `index` in the source prototxt."""
        return self.source.where(self.origins[index])

    # -- binding --------------------------------------------------------------------------------

    def all_blobs(self) -> list[Blob]:
        """Every distinct blob: activations, internals, learnable (owned) blobs."""
        seen, out = set(), []
        for blob in [
            *self.blobs.values(),
            *self.internal_blobs(),
            *(p.blob for p in self.learnable),
        ]:
            if id(blob) not in seen:
                seen.add(id(blob))
                out.append(blob)
        return out

    def internal_blobs(self) -> list[Blob]:
        return [b for layer in self.layers for b in layer.internals.values()]

    def initial_params(self) -> list[numpy.ndarray]:
        """Filler values of each learnable blob, in `learnable` order (deterministic for a seed)."""
        return [p.blob_init for p in self.learnable]

    def bind_resident(self) -> None:
        """Give every blob its own zeroed `xp` arrays and learnable blobs their filler values."""
        xp = self.xp
        for blob in self.all_blobs():
            blob.bind(xp.zeros(blob.shape, blob.dtype), xp.zeros(blob.shape, blob.dtype))
        for p in self.learnable:
            p.blob.data[...] = xp.asarray(p.blob_init)
        for i in range(len(self.layers)):
            self.set_loss_diffs(i)
        self.resident = True

    # -- running --------------------------------------------------------------------------------

    def forward_layer(self, i: int) -> float:
        """Run layer i's forward on bound blobs; its weighted loss contribution."""
        layer, bottoms, tops = self.layers[i], self.bottoms[i], self.tops[i]
        if layer.reshape_reads_data:
            self._reshape_from(i)
        layer.forward(self.xp, bottoms, tops)
        loss = 0.0
        for top, weight in zip(tops, self.loss_weights[i]):
            if weight:
                loss += weight * float(top.data.sum())
        return loss

    def set_loss_diffs(self, i: int) -> None:
        """Preset the diff of layer i's loss-weighted tops to their loss weight.

        Caffe does it once at setup; a PS-bound diff does not outlive its access, so the worker
        calls this before every backward."""
        for top, weight in zip(self.tops[i], self.loss_weights[i]):
            if weight:
                top.diff[...] = weight

    def backward_layer(self, i: int) -> None:
        """Run layer i's backward on bound blobs."""
        layer, down = self.layers[i], self.bottom_need_backward[i]
        layer.backward(self.xp, self.tops[i], down, self.bottoms[i])

    def forward(self, start: int = 0, end: int | None = None, **inputs) -> dict:
        """Resident forward from layer `start` to `end`; feeds `inputs` by blob name (an input of
        another shape reshapes the net first); returns outputs."""
        self._require_resident()
        values = {name: self.xp.asarray(value) for name, value in inputs.items()}
        reshaped = False
        for name, value in values.items():
            if name not in self.blobs:
                raise NetError(f'net "{self.name}": no blob "{name}" to feed')
            if value.shape != self.blobs[name].shape:
                self.blobs[name].reshape(value.shape)
                reshaped = True
        if reshaped:
            self.reshape()
        for name, value in values.items():
            self.blobs[name].data[...] = value
        end = len(self.layers) - 1 if end is None else end
        self.loss = sum(self.forward_layer(i) for i in range(start, end + 1))
        return {name: self.blobs[name].data for name in self.outputs}

    def backward(self) -> dict:
        """Resident backward through every layer that needs it; returns the input blobs' diffs."""
        self._require_resident()
        for i in reversed(range(len(self.layers))):
            if self.layer_need_backward[i]:
                self.backward_layer(i)
        return {name: self.blobs[name].diff for name in self.inputs}

    def forward_only(self) -> Net:
        """Mark the net as one that no backward follows (a solver's test net, `geeps-net test`,
        extract_features): layers skip what only backward reads (max pooling's argmax), and
        backward() does nothing. Returns the net."""
        self.layer_need_backward = [False] * len(self.layers)
        self.bottom_need_backward = [[False] * len(b) for b in self.bottoms]
        for layer, bottoms in zip(self.layers, self.bottoms):
            layer.propagate_down = (False,) * len(bottoms)
        return self

    def forward_backward(self) -> float:
        self.forward()
        self.backward()
        return self.loss

    def clear_param_diffs(self) -> None:
        for p in self.learnable:
            p.blob.diff[...] = 0

    def copy_from(self, weights, source: str | None = None) -> None:
        """Caffe's CopyTrainedLayersFrom on a resident net: by layer name, shapes must match.
        `weights`: a .caffemodel path (as pycaffe's copy_from), or layer name -> arrays read
        from `source`."""
        from geeps_net.snapshot import match_weights, read_net_weights

        self._require_resident()
        if isinstance(weights, (str, os.PathLike)):
            weights, source = read_net_weights(weights), str(weights)
        wanted = {
            layer.name: [b.shape for b in layer.blobs] for layer in self.layers if layer.blobs
        }
        for name, arrays in match_weights(weights, wanted, source).items():
            for blob, value in zip(self.params[name], arrays):
                blob.data[...] = self.xp.asarray(value, dtype=blob.dtype).reshape(blob.shape)

    def save(self, path) -> None:
        """Write the weights as a .caffemodel (HDF5 when `path` ends in .h5), as pycaffe's save."""
        from geeps_net.snapshot import write_caffemodel

        self._require_resident()
        weights = {layer.name: [to_host(b.data) for b in layer.blobs] for layer in self.layers}
        write_caffemodel(path, self.name, self.model_layers(weights))

    def model_layers(self, weights: dict) -> list:
        """(name, type, bottoms, tops, arrays) per layer, in order, for write_caffemodel;
        `weights`: layer name -> its arrays (layers without any get none)."""
        return [
            (layer.name, layer.type, [b.name for b in bottoms], [t.name for t in tops],
             weights.get(layer.name, []))
            for layer, bottoms, tops in zip(self.layers, self.bottoms, self.tops)
        ]  # fmt: skip

    def close(self) -> None:
        """Stop what layers hold outside blobs (data prefetch threads)."""
        for layer in getattr(self, "layers", []):
            layer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _require_resident(self) -> None:
        if not self.resident:
            raise NetError(
                f'net "{self.name}": blobs are bound by the parameter server, not resident'
            )

    def reshape(self) -> None:
        """Propagate new input shapes through every layer (pycaffe's Net.reshape, after
        `net.blobs[name].reshape(shape)`); blobs whose size changed get new zeroed arrays."""
        self._require_resident()
        self._reshape_from(0)
        for i in range(len(self.layers)):
            self.set_loss_diffs(i)

    def _reshape_from(self, start: int) -> None:
        """Re-run reshape from layer `start` on (new input or data-dependent shapes); a resident
        net rebinds the tops and internals whose size changed."""
        for i in range(start, len(self.layers)):
            layer = self.layers[i]
            before = [(b, b.shape) for b in self.tops[i]]
            layer.reshape(self.bottoms[i], self.tops[i])
            if not self.resident:
                continue
            changed = [b for b, shape in before if b.data is None or b.shape != shape]
            for blob in changed + [b for b in layer.internals.values() if b.data is None]:
                blob.bind(
                    self.xp.zeros(blob.shape, blob.dtype), self.xp.zeros(blob.shape, blob.dtype)
                )


def _as_source(model) -> NetSource:
    if isinstance(model, NetSource):
        return model
    if isinstance(model, caffe_pb2.NetParameter):
        from geeps_net.prototxt import upgrade_net

        return NetSource(upgrade_net(model), "<NetParameter>", [])
    text = str(model)
    if "{" in text or "\n" in text:
        return parse_net(text)
    return read_net(model)


def _located(error: GeepsError, net: Net) -> GeepsError:
    """Prefix an error naming a layer with that layer's FILE:LINE."""
    message = str(error)
    index = getattr(error, "layer_index", None)
    if index is not None and not message.startswith(net.source.path):
        message = f"{net.where(index)}: {message}"
    return type(error)(message)
