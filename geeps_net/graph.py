"""Pure NetParameter passes: NetState rule filtering and Caffe's automatic Split insertion.

Each pass takes a NetParameter and returns a new one plus, for error messages, the index in the
input of
every output layer (`origins`), so a layer can always be traced back to its prototxt line.
"""

from __future__ import annotations

from collections import defaultdict

from geeps_net.errors import NetError
from geeps_net.proto import caffe_pb2


def state_meets_rule(state: caffe_pb2.NetState, rule: caffe_pb2.NetStateRule) -> bool:
    """Caffe's StateMeetsRule: phase, level range, required stages, forbidden stages."""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    return all(s in stages for s in rule.stage) and not any(s in stages for s in rule.not_stage)


def filter_net(param: caffe_pb2.NetParameter, state: caffe_pb2.NetState):
    """Layers kept for `state`: no rules -> kept; include -> any matches; exclude -> none
    matches."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    out.ClearField("layer")
    origins = []
    for i, layer in enumerate(param.layer):
        if layer.include and layer.exclude:
            raise NetError(f'layer "{layer.name}": specifies both include and exclude rules')
        if layer.include:
            kept = any(state_meets_rule(state, r) for r in layer.include)
        else:
            kept = not any(state_meets_rule(state, r) for r in layer.exclude)
        if kept:
            out.layer.add().CopyFrom(layer)
            origins.append(i)
    return out, origins


def split_layer_name(blob: str, layer: str, top_index: int) -> str:
    return f"{blob}_{layer}_{top_index}_split"


def split_blob_name(blob: str, layer: str, top_index: int, split_index: int) -> str:
    return f"{blob}_{layer}_{top_index}_split_{split_index}"


def _count_consumers(param):
    """For each bottom, the (layer, top) version it reads; for each top version, its consumer
    count."""
    last_top, source, consumers, loss_weights = {}, {}, defaultdict(int), {}
    for i, layer in enumerate(param.layer):
        for j, name in enumerate(layer.bottom):
            if name not in last_top:
                error = NetError(
                    f'layer "{layer.name}": bottom "{name}" is produced by no earlier layer'
                )
                error.input_index = i  # the caller maps it to a prototxt line
                raise error
            source[i, j] = last_top[name]
            consumers[last_top[name]] += 1
        for j, name in enumerate(layer.top):
            last_top[name] = (i, j)
        for j in range(len(layer.top)):
            weight = layer.loss_weight[j] if j < len(layer.loss_weight) else 0.0
            if weight:
                loss_weights[i, j] = weight
                consumers[i, j] += 1  # a loss counts as one consumer
    return source, consumers, loss_weights


def insert_splits(param: caffe_pb2.NetParameter):
    """Caffe's InsertSplits: a top read by several bottoms gets a Split layer right after its
    producer.

    Returns (new NetParameter, origins) where origins[k] is the input index of output layer k (a
    Split layer
    takes its producer's index).
    """
    source, consumers, loss_weights = _count_consumers(param)
    next_split = defaultdict(int)
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    out.ClearField("layer")
    origins = []
    for i, layer in enumerate(param.layer):
        new = out.layer.add()
        new.CopyFrom(layer)
        origins.append(i)
        for j, name in enumerate(layer.bottom):
            top = source[i, j]
            if consumers[top] > 1:
                producer = param.layer[top[0]].name
                new.bottom[j] = split_blob_name(name, producer, top[1], next_split[top])
                next_split[top] += 1
        for j, name in enumerate(layer.top):
            count = consumers[i, j]
            if count <= 1:
                continue
            split = caffe_pb2.LayerParameter(
                name=split_layer_name(name, layer.name, j), type="Split", bottom=[name]
            )
            split.top.extend(split_blob_name(name, layer.name, j, k) for k in range(count))
            weight = loss_weights.get((i, j), 0.0)
            if weight:
                split.loss_weight.extend([weight] + [0.0] * (count - 1))
                new.ClearField("loss_weight")  # as Caffe: the split's first top carries the loss
                next_split[i, j] += 1
            out.layer.add().CopyFrom(split)
            origins.append(i)
    return out, origins
