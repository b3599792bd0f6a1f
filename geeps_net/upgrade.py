"""Legacy layer formats -> current LayerParameter (Caffe's upgrade_proto, for V1 and V0 layers)."""

from __future__ import annotations

from geeps_net.errors import PrototxtError
from geeps_net.proto import caffe_pb2

V1 = caffe_pb2.V1LayerParameter

# V1 LayerType enum name -> current type string.
V1_TYPES = {
    "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DATA": "Data", "DECONVOLUTION": "Deconvolution", "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData", "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise",
    "EXP": "Exp", "FLATTEN": "Flatten", "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col", "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN", "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence",
    "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice",
    "TANH": "TanH", "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}  # fmt: skip

# Sub-messages that V1 and current layers share by name and type.
_SHARED_PARAMS = [
    f.name
    for f in V1.DESCRIPTOR.fields
    if f.name.endswith("_param") and f.name in caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
]


def upgrade_v1_layer(v1, where: str) -> caffe_pb2.LayerParameter:
    """One V1 `layers { ... }` entry as a current `layer { ... }`."""
    layer = caffe_pb2.LayerParameter(name=v1.name)
    layer.bottom.extend(v1.bottom)
    layer.top.extend(v1.top)
    layer.include.extend(v1.include)
    layer.exclude.extend(v1.exclude)
    layer.loss_weight.extend(v1.loss_weight)
    layer.blobs.extend(v1.blobs)
    type_name = V1.LayerType.Name(v1.type)
    if type_name not in V1_TYPES:
        raise PrototxtError(f'{where}: layer "{v1.name}": V1 type {type_name} has no upgrade')
    layer.type = V1_TYPES[type_name]
    count = max(len(v1.param), len(v1.blobs_lr), len(v1.weight_decay), len(v1.blob_share_mode))
    for i in range(count):
        spec = layer.param.add()
        if i < len(v1.param):
            spec.name = v1.param[i]
        if i < len(v1.blob_share_mode):
            spec.share_mode = v1.blob_share_mode[i]
        if i < len(v1.blobs_lr):
            spec.lr_mult = v1.blobs_lr[i]
        if i < len(v1.weight_decay):
            spec.decay_mult = v1.weight_decay[i]
    for name in _SHARED_PARAMS:
        if v1.HasField(name):
            getattr(layer, name).CopyFrom(getattr(v1, name))
    return layer


# V0 lower-case type names -> V1 enum names.
V0_TYPES = {
    "accuracy": "ACCURACY", "bnll": "BNLL", "concat": "CONCAT", "conv": "CONVOLUTION",
    "data": "DATA", "dropout": "DROPOUT", "euclidean_loss": "EUCLIDEAN_LOSS", "flatten": "FLATTEN",
    "hdf5_data": "HDF5_DATA", "hdf5_output": "HDF5_OUTPUT", "im2col": "IM2COL",
    "images": "IMAGE_DATA", "infogain_loss": "INFOGAIN_LOSS", "innerproduct": "INNER_PRODUCT",
    "lrn": "LRN", "multinomial_logistic_loss": "MULTINOMIAL_LOGISTIC_LOSS", "pool": "POOLING",
    "relu": "RELU", "sigmoid": "SIGMOID", "softmax": "SOFTMAX", "softmax_loss": "SOFTMAX_LOSS",
    "split": "SPLIT", "tanh": "TANH", "window_data": "WINDOW_DATA",
}  # fmt: skip


def upgrade_v0_layer(v1, where: str):
    """A V1 entry whose settings sit in a nested V0 `layer { ... }` -> a plain V1 entry."""
    v0 = v1.layer
    out = V1()
    out.CopyFrom(v1)
    out.ClearField("layer")
    out.name = v0.name or v1.name
    if v0.type not in V0_TYPES:
        raise PrototxtError(f'{where}: layer "{v0.name}": V0 type "{v0.type}" has no upgrade')
    out.type = V1.LayerType.Value(V0_TYPES[v0.type])
    out.blobs.extend(v0.blobs)
    out.blobs_lr.extend(v0.blobs_lr)
    out.weight_decay.extend(v0.weight_decay)
    kind = V0_TYPES[v0.type]
    if kind in ("CONVOLUTION", "INNER_PRODUCT"):
        sub = out.convolution_param if kind == "CONVOLUTION" else out.inner_product_param
        _copy(v0, sub, num_output="num_output", biasterm="bias_term")
        _copy(v0, sub, weight_filler="weight_filler", bias_filler="bias_filler")
        if kind == "CONVOLUTION":
            _copy_repeated(v0, sub, pad="pad", kernelsize="kernel_size", stride="stride")
            _copy(v0, sub, group="group")
    elif kind == "POOLING":
        _copy(
            v0, out.pooling_param, pool="pool", pad="pad", kernelsize="kernel_size", stride="stride"
        )
    elif kind == "DROPOUT":
        _copy(v0, out.dropout_param, dropout_ratio="dropout_ratio")
    elif kind == "LRN":
        _copy(v0, out.lrn_param, local_size="local_size", alpha="alpha", beta="beta", k="k")
    elif kind == "DATA":
        _copy(v0, out.data_param, source="source", batchsize="batch_size", rand_skip="rand_skip")
        _copy(v0, out.transform_param, scale="scale", meanfile="mean_file", cropsize="crop_size")
        _copy(v0, out.transform_param, mirror="mirror")
    elif kind == "CONCAT":
        _copy(v0, out.concat_param, concat_dim="concat_dim")
    return out


def _copy(src, dst, **names) -> None:
    for old, new in names.items():
        if src.HasField(old):
            value = getattr(src, old)
            if hasattr(value, "CopyFrom"):
                getattr(dst, new).CopyFrom(value)
            else:
                setattr(dst, new, value)


def _copy_repeated(src, dst, **names) -> None:
    for old, new in names.items():
        if src.HasField(old):
            getattr(dst, new).append(getattr(src, old))
