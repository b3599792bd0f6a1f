"""The construction passes of `Net`: layers and blobs, loss weights, shared params, need_backward.

Split from net.py so each pass reads on its own; every pass follows Caffe's Net::Init.
"""

from __future__ import annotations

import math

import numpy

from geeps_net.blob import Blob
from geeps_net.errors import GeepsError, NetError
from geeps_net.fillers import fill
from geeps_net.layer import create_layer


def build_layers(net, layer_seeds, data_shard) -> None:
    """Run every pass, setting net.layers/bottoms/tops/blobs/learnable/... in place."""
    net.layers, net.bottoms, net.tops, net.blobs = [], [], [], {}
    for i, layer_param in enumerate(net.param.layer):
        try:
            _append_layer(net, layer_param, layer_seeds[i], data_shard)
        except GeepsError as e:
            e.layer_index = i
            raise
        except (ValueError, IndexError) as e:  # a kernel's shape check: name the layer
            error = NetError(f'layer "{layer_param.name}" ({layer_param.type}): {e}')
            error.layer_index = i
            raise error from None
    _set_loss_weights(net)
    _collect_params(net)
    _mark_backward(net)
    consumed = {b.name for bottoms in net.bottoms for b in bottoms}
    net.outputs = [name for name in net.blobs if name not in consumed]


def _append_layer(net, layer_param, seed, data_shard) -> None:
    layer = create_layer(layer_param, net.phase)
    layer.rng = numpy.random.default_rng(seed)
    layer.shard = tuple(data_shard)
    bottoms = []
    for name in layer_param.bottom:
        if name not in net.blobs:
            raise layer.error(f'bottom "{name}" is produced by no earlier layer')
        bottoms.append(net.blobs[name])
    tops = []
    for name in layer_param.top:
        if name in net.blobs and name not in layer_param.bottom:
            raise layer.error(f'top "{name}" is already produced by an earlier layer')
        if name in (t.name for t in tops):
            raise layer.error(f'top "{name}" listed twice')
        tops.append(net.blobs[name] if name in layer_param.bottom else Blob(name))
    layer.check_blob_counts(bottoms, tops)
    layer.setup(bottoms, tops)
    layer.reshape(bottoms, tops)
    for top in tops:
        net.blobs[top.name] = top
    net.layers.append(layer)
    net.bottoms.append(bottoms)
    net.tops.append(tops)


def _set_loss_weights(net) -> None:
    """loss_weight per top: as given (one per top), else 1 on top 0 of loss layers, else 0."""
    net.loss_weights = []
    for layer, tops in zip(net.layers, net.tops):
        given = list(layer.layer_param.loss_weight)
        if given and len(given) != len(tops):
            raise _error(net, layer, f"{len(given)} loss_weight values for {len(tops)} tops")
        if not given:
            given = [1.0 if (layer.is_loss and j == 0) else 0.0 for j in range(len(tops))]
        net.loss_weights.append(given)


def _collect_params(net) -> None:
    """Owned learnable blobs in layer order; blobs named alike by ParamSpec.name are shared."""
    from geeps_net.net import Learnable

    net.learnable, owners = [], {}
    rng = net._fill_rng
    for li, layer in enumerate(net.layers):
        specs = layer.layer_param.param
        if len(specs) > len(layer.blobs):
            raise _error(
                net, layer, f"{len(specs)} param specs for {len(layer.blobs)} learnable blobs"
            )
        for pi, blob in enumerate(list(layer.blobs)):
            spec = specs[pi] if pi < len(specs) else None
            init = fill(layer.fillers[pi], blob.shape, rng, blob.dtype)
            name = spec.name if spec is not None else ""
            if name and name in owners:
                owner = owners[name]
                _check_shared(net, layer, owner.blob, blob, spec, name)
                layer.blobs[pi] = owner.blob
                continue
            lr = spec.lr_mult if spec is not None else 1.0
            decay = spec.decay_mult if spec is not None else 1.0
            entry = Learnable(blob, li, pi, lr, decay, init)
            net.learnable.append(entry)
            if name:
                owners[name] = entry


def _check_shared(net, layer, owned: Blob, blob: Blob, spec, name: str) -> None:
    permissive = spec.share_mode == spec.PERMISSIVE
    same = (
        math.prod(owned.shape) == math.prod(blob.shape) if permissive else owned.shape == blob.shape
    )
    if not same:
        raise _error(
            net,
            layer,
            f'shared param "{name}" has shape {owned.shape}, this layer wants {blob.shape}',
        )


def _mark_backward(net) -> None:
    """Caffe's need_backward: forward propagation, pruning of what feeds no loss, force_backward."""
    blob_needs, owned_lr = set(), {id(p.blob): p.lr_mult for p in net.learnable}
    net.layer_need_backward, net.bottom_need_backward = [], []
    for layer, bottoms, tops in zip(net.layers, net.bottoms, net.tops):
        down = list(layer.layer_param.propagate_down)
        if down and len(down) != len(bottoms):
            raise _error(
                net, layer, f"{len(down)} propagate_down values for {len(bottoms)} bottoms"
            )
        need = any(b.name in blob_needs for b in bottoms)
        need |= any(owned_lr.get(id(b), 0.0) != 0 for b in layer.blobs)
        bottom_need = [
            (b.name in blob_needs) if not down else bool(down[j]) for j, b in enumerate(bottoms)
        ]
        need = need and layer.has_backward
        net.layer_need_backward.append(need)
        net.bottom_need_backward.append(bottom_need)
        if need:
            blob_needs.update(t.name for t in tops)
    _prune(net)
    if net.param.force_backward:
        for i, layer in enumerate(net.layers):
            if not layer.has_backward:
                continue
            net.layer_need_backward[i] = True
            net.bottom_need_backward[i] = [
                need or layer.allow_force_backward(j)
                for j, need in enumerate(net.bottom_need_backward[i])
            ]
    for i, layer in enumerate(net.layers):
        if not net.layer_need_backward[i] or not layer.has_backward:
            net.bottom_need_backward[i] = [False] * len(net.bottoms[i])
        else:
            net.bottom_need_backward[i] = [
                need and layer.allow_force_backward(j)
                for j, need in enumerate(net.bottom_need_backward[i])
            ]
        layer.propagate_down = tuple(net.bottom_need_backward[i])


def _prune(net) -> None:
    """Walk backwards: layers that feed no loss, or whose tops all skip backprop, need no
    backward."""
    under_loss, skip = set(), set()
    for i in reversed(range(len(net.layers))):
        tops = net.tops[i]
        contributes = any(w != 0 for w in net.loss_weights[i]) or any(
            t.name in under_loss for t in tops
        )
        skip_down = all(t.name in skip for t in tops)
        if net.layer_need_backward[i] and skip_down:
            net.layer_need_backward[i] = False
            net.bottom_need_backward[i] = [False] * len(net.bottoms[i])
        if not contributes:
            net.layer_need_backward[i] = False
        for j, bottom in enumerate(net.bottoms[i]):
            if contributes:
                under_loss.add(bottom.name)
            else:
                net.bottom_need_backward[i][j] = False
            if not net.bottom_need_backward[i][j]:
                skip.add(bottom.name)


def _error(net, layer, message: str) -> NetError:
    error = layer.error(message)
    error.layer_index = net.layers.index(layer) if layer in net.layers else len(net.layers)
    return error
