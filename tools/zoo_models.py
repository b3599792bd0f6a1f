"""The nets of the model zoo, written from their papers with the zoo_writer helpers.

Each builder takes a ZooNet (train_val or deploy) and writes the layers; deploy nets get an Input
layer, drop the auxiliary heads, fillers and lr specs, and end in Softmax `prob`.
"""

from __future__ import annotations

from zoo_writer import Enum, ZooNet, filler

IMAGENET_DB = "data/ilsvrc12"  # placeholder: point these at your own ImageNet LMDBs
IMAGENET_MEAN_FILE = "data/ilsvrc12/imagenet_mean.binaryproto"
BGR_MEAN = [104.0, 117.0, 123.0]  # per-channel ImageNet mean, B G R (Caffe's image order)
CIFAR_DB = "data/cifar10"
CIFAR_MEAN_FILE = "data/cifar10/mean.binaryproto"


def gaussian(std: float) -> dict:
    return filler("gaussian", std=std)


def constant(value: float) -> dict:
    return filler("constant", value=value)


# -- CIFAR-10 (Krizhevsky's cuda-convnet layouts, as in Caffe's CIFAR-10 example) ------------------


def _cifar_data(n: ZooNet) -> str:
    return n.data(
        CIFAR_DB,
        (100, 100),
        (3, 32, 32),
        {"mean_file": CIFAR_MEAN_FILE},
        1,
        splits=("cifar10_train", "cifar10_test"),
    )  # convert_cifar_data's names


def cifar10_quick(n: ZooNet) -> None:
    """Three 5x5 conv/pool stages (32, 32, 64 maps) and two inner products: 75% in minutes."""
    x = _cifar_data(n)
    x = n.conv("conv1", x, 32, 5, pad=2, weight_filler=gaussian(0.0001))
    x = n.pool("pool1", x, "MAX", 3, 2)
    n.relu("relu1", x)
    x = n.conv("conv2", x, 32, 5, pad=2, weight_filler=gaussian(0.01))
    n.relu("relu2", x)
    x = n.pool("pool2", x, "AVE", 3, 2)
    x = n.conv("conv3", x, 64, 5, pad=2, weight_filler=gaussian(0.01))
    n.relu("relu3", x)
    x = n.pool("pool3", x, "AVE", 3, 2)
    x = n.fc("ip1", x, 64, weight_filler=gaussian(0.1))
    x = n.fc("ip2", x, 10, weight_filler=gaussian(0.1))
    n.classifier(x, top5=False)


def cifar10_full(n: ZooNet) -> None:
    """cifar10_quick with LRN within channels after the first two stages and one inner product."""
    x = _cifar_data(n)
    x = n.conv("conv1", x, 32, 5, pad=2, weight_filler=gaussian(0.0001))
    x = n.pool("pool1", x, "MAX", 3, 2)
    n.relu("relu1", x)
    x = n.lrn("norm1", x, 3, 5e-05, 0.75, within=True)
    x = n.conv("conv2", x, 32, 5, pad=2, weight_filler=gaussian(0.01))
    n.relu("relu2", x)
    x = n.pool("pool2", x, "AVE", 3, 2)
    x = n.lrn("norm2", x, 3, 5e-05, 0.75, within=True)
    x = n.conv("conv3", x, 64, 5, pad=2, weight_filler=gaussian(0.01))
    n.relu("relu3", x)
    x = n.pool("pool3", x, "AVE", 3, 2)
    specs = [{"lr_mult": 1, "decay_mult": 250}, {"lr_mult": 2, "decay_mult": 0}]
    x = n.fc("ip1", x, 10, weight_filler=gaussian(0.01), param=specs)
    n.classifier(x, top5=False)


# -- AlexNet and CaffeNet (Krizhevsky, Sutskever, Hinton 2012) ------------------------------------


def _alexnet(n: ZooNet, caffenet: bool) -> None:
    """Five convs (conv2/4/5 in two groups, as the paper's two GPUs), three inner products.
    CaffeNet pools before normalising and starts the grouped layers' biases at 1."""
    one, zero = constant(1.0 if caffenet else 0.1), constant(0.0)
    x = n.data(IMAGENET_DB, (256, 50), (3, 227, 227),
               {"crop_size": 227, "mean_file": IMAGENET_MEAN_FILE}, 10)  # fmt: skip
    n.weight_filler = gaussian(0.01)

    def relu_norm_pool(stage: int, x: str) -> str:
        n.relu(f"relu{stage}", x)
        for step in ("pool", "norm") if caffenet else ("norm", "pool"):
            if step == "pool":
                x = n.pool(f"pool{stage}", x, "MAX", 3, 2)
            else:
                x = n.lrn(f"norm{stage}", x, 5, 0.0001, 0.75)
        return x

    x = relu_norm_pool(1, n.conv("conv1", x, 96, 11, 4, bias_filler=zero))
    x = relu_norm_pool(2, n.conv("conv2", x, 256, 5, pad=2, group=2, bias_filler=one))
    x = n.conv("conv3", x, 384, 3, pad=1, bias_filler=zero)
    n.relu("relu3", x)
    x = n.conv("conv4", x, 384, 3, pad=1, group=2, bias_filler=one)
    n.relu("relu4", x)
    x = n.conv("conv5", x, 256, 3, pad=1, group=2, bias_filler=one)
    n.relu("relu5", x)
    x = n.pool("pool5", x, "MAX", 3, 2)
    for i in (6, 7):
        x = n.fc(f"fc{i}", x, 4096, weight_filler=gaussian(0.005), bias_filler=one)
        n.relu(f"relu{i}", x)
        n.dropout(f"drop{i}", x, 0.5)
    x = n.fc("fc8", x, 1000, bias_filler=zero)
    n.classifier(x)


def alexnet(n: ZooNet) -> None:
    _alexnet(n, caffenet=False)


def caffenet(n: ZooNet) -> None:
    _alexnet(n, caffenet=True)


# -- VGG-16 (Simonyan & Zisserman 2014, configuration D) ------------------------------------------


def vgg16(n: ZooNet) -> None:
    """Thirteen 3x3 convs in five blocks with 2x2 max pooling, then 4096-4096-1000."""
    x = n.data(IMAGENET_DB, (64, 50), (3, 224, 224),
               {"crop_size": 224, "mean_value": BGR_MEAN}, 10)  # fmt: skip
    n.weight_filler = gaussian(0.01)
    for block, (width, count) in enumerate([(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)], 1):
        for i in range(1, count + 1):
            x = n.conv(f"conv{block}_{i}", x, width, 3, pad=1)
            n.relu(f"relu{block}_{i}", x)
        x = n.pool(f"pool{block}", x, "MAX", 2, 2)
    for i in (6, 7):
        x = n.fc(f"fc{i}", x, 4096)
        n.relu(f"relu{i}", x)
        n.dropout(f"drop{i}", x, 0.5)
    n.classifier(n.fc("fc8", x, 1000))


# -- GoogLeNet (Szegedy et al. 2014, Inception v1) -------------------------------------------------

# name: (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj), from the paper's Table 1.
INCEPTION = {
    "inception_3a": (64, 96, 128, 16, 32, 32), "inception_3b": (128, 128, 192, 32, 96, 64),
    "inception_4a": (192, 96, 208, 16, 48, 64), "inception_4b": (160, 112, 224, 24, 64, 64),
    "inception_4c": (128, 128, 256, 24, 64, 64), "inception_4d": (112, 144, 288, 32, 64, 64),
    "inception_4e": (256, 160, 320, 32, 128, 128), "inception_5a": (256, 160, 320, 32, 128, 128),
    "inception_5b": (384, 192, 384, 48, 128, 128),
}  # fmt: skip


def _conv_relu(n: ZooNet, name: str, bottom: str, num_output: int, kernel: int, stride=1, pad=0):
    x = n.conv(name, bottom, num_output, kernel, stride, pad)
    return n.relu(f"{name}/relu", x)


def inception(n: ZooNet, name: str, bottom: str) -> str:
    """Four branches (1x1; 1x1 -> 3x3; 1x1 -> 5x5; 3x3 max pool -> 1x1) joined on channels."""
    c1, c3r, c3, c5r, c5, cp = INCEPTION[name]
    a = _conv_relu(n, f"{name}/1x1", bottom, c1, 1)
    b = _conv_relu(n, f"{name}/3x3_reduce", bottom, c3r, 1)
    b = _conv_relu(n, f"{name}/3x3", b, c3, 3, pad=1)
    c = _conv_relu(n, f"{name}/5x5_reduce", bottom, c5r, 1)
    c = _conv_relu(n, f"{name}/5x5", c, c5, 5, pad=2)
    d = n.pool(f"{name}/pool", bottom, "MAX", 3, 1, pad=1)
    d = _conv_relu(n, f"{name}/pool_proj", d, cp, 1)
    return n.concat(f"{name}/output", [a, b, c, d])


def auxiliary_head(n: ZooNet, index: int, bottom: str) -> None:
    """Training-only classifier on an intermediate map, its loss weighted 0.3 (paper §5)."""
    if n.deploy:
        return
    p = f"loss{index}"
    x = n.pool(f"{p}/ave_pool", bottom, "AVE", 5, 3)
    x = _conv_relu(n, f"{p}/conv", x, 128, 1)
    x = n.fc(f"{p}/fc", x, 1024)
    n.relu(f"{p}/fc/relu", x)
    n.dropout(f"{p}/drop_fc", x, 0.7)
    x = n.fc(f"{p}/classifier", x, 1000, bias_filler=constant(0.0))
    n.classifier(x, loss_name=f"{p}/loss", weight=0.3, prefix=f"{p}/")


def googlenet(n: ZooNet) -> None:
    """Stem (7x7/2 conv, pool, LRN, 1x1 and 3x3 convs, LRN, pool), nine inception modules, 7x7
    average pool, dropout 0.4, one inner product; auxiliary heads after 4a and 4d."""
    x = n.data(IMAGENET_DB, (32, 50), (3, 224, 224),
               {"crop_size": 224, "mean_value": BGR_MEAN}, 10)  # fmt: skip
    n.bias_filler = constant(0.2)
    x = _conv_relu(n, "conv1/7x7_s2", x, 64, 7, 2, 3)
    x = n.pool("pool1/3x3_s2", x, "MAX", 3, 2)
    x = n.lrn("pool1/norm1", x, 5, 0.0001, 0.75)
    x = _conv_relu(n, "conv2/3x3_reduce", x, 64, 1)
    x = _conv_relu(n, "conv2/3x3", x, 192, 3, pad=1)
    x = n.lrn("conv2/norm2", x, 5, 0.0001, 0.75)
    x = n.pool("pool2/3x3_s2", x, "MAX", 3, 2)
    x = inception(n, "inception_3b", inception(n, "inception_3a", x))
    x = n.pool("pool3/3x3_s2", x, "MAX", 3, 2)
    x = inception(n, "inception_4a", x)
    auxiliary_head(n, 1, x)
    for name in ("inception_4b", "inception_4c", "inception_4d"):
        x = inception(n, name, x)
    auxiliary_head(n, 2, x)
    x = inception(n, "inception_4e", x)
    x = n.pool("pool4/3x3_s2", x, "MAX", 3, 2)
    x = inception(n, "inception_5b", inception(n, "inception_5a", x))
    x = n.pool("pool5/7x7_s1", x, "AVE", 7, 1)
    n.dropout("pool5/drop_7x7_s1", x, 0.4)
    x = n.fc("loss3/classifier", x, 1000, bias_filler=constant(0.0))
    n.classifier(x, loss_name="loss3/loss", weight=None if n.deploy else 1.0, prefix="loss3/")


# -- ResNet (He, Zhang, Ren, Sun 2015) -------------------------------------------------------------


def residual_block(n, name, x, in_ch, width, stride, bottleneck) -> tuple[str, int]:
    """One block: branch2 (two 3x3 convs, or 1x1-3x3-1x1 at width, 4x width out) plus a shortcut
    (identity, or a 1x1 projection with BatchNorm when the shape changes), summed, then ReLU.
    As in the authors' Caffe models, a bottleneck block strides in its first 1x1 conv."""
    out_ch = 4 * width if bottleneck else width
    if bottleneck:
        b = n.conv_bn_relu(f"{name}_branch2a", x, width, 1, stride)
        b = n.conv_bn_relu(f"{name}_branch2b", b, width, 3, 1, 1)
        b = n.conv_bn_relu(f"{name}_branch2c", b, out_ch, 1, relu=False)
    else:
        b = n.conv_bn_relu(f"{name}_branch2a", x, width, 3, stride, 1)
        b = n.conv_bn_relu(f"{name}_branch2b", b, width, 3, 1, 1, relu=False)
    shortcut = x
    if stride != 1 or in_ch != out_ch:
        shortcut = n.conv_bn_relu(f"{name}_branch1", x, out_ch, 1, stride, relu=False)
    sum_param = {"operation": Enum("SUM")}
    n.layer(name, "Eltwise", [shortcut, b], name, eltwise_param=sum_param)
    return n.relu(f"{name}/relu", name), out_ch


def _resnet(n: ZooNet, blocks: list[int], bottleneck: bool) -> None:
    x = n.data(IMAGENET_DB, (64, 50), (3, 224, 224),
               {"crop_size": 224, "mean_value": BGR_MEAN}, 1)  # fmt: skip
    n.weight_filler = filler("msra")
    x = n.conv_bn_relu("conv1", x, 64, 7, 2, 3)
    x, channels = n.pool("pool1", x, "MAX", 3, 2), 64
    for stage, (count, width) in enumerate(zip(blocks, (64, 128, 256, 512)), 2):
        for i in range(count):
            stride = 2 if i == 0 and stage > 2 else 1
            name = f"res{stage}{chr(ord('a') + i)}"
            x, channels = residual_block(n, name, x, channels, width, stride, bottleneck)
    x = n.pool("pool5", x, "AVE", global_=True)
    n.classifier(n.fc("fc1000", x, 1000, weight_filler=gaussian(0.01)))


def resnet18(n: ZooNet) -> None:
    """Basic blocks, 2-2-2-2 over widths 64-128-256-512; global average pool; 1000-way fc."""
    _resnet(n, [2, 2, 2, 2], bottleneck=False)


def resnet50(n: ZooNet) -> None:
    """Bottleneck blocks, 3-4-6-3 over widths 64-128-256-512 (outputs 4x); global pool; fc."""
    _resnet(n, [3, 4, 6, 3], bottleneck=True)


# -- SqueezeNet 1.1 (Iandola et al. 2016) ----------------------------------------------------------


def fire(n: ZooNet, name: str, x: str, squeeze: int, expand: int) -> str:
    """Fire module: 1x1 squeeze, then 1x1 and 3x3 expands side by side, concatenated."""
    s = _conv_relu(n, f"{name}/squeeze1x1", x, squeeze, 1)
    a = _conv_relu(n, f"{name}/expand1x1", s, expand, 1)
    b = _conv_relu(n, f"{name}/expand3x3", s, expand, 3, pad=1)
    return n.concat(f"{name}/concat", [a, b])


def squeezenet11(n: ZooNet) -> None:
    """3x3/2 conv, eight fire modules with max pools after conv1, fire3 and fire5, dropout, a 1x1
    conv to 1000 maps and global average pooling (no inner product)."""
    x = n.data(IMAGENET_DB, (32, 25), (3, 227, 227),
               {"crop_size": 227, "mean_value": BGR_MEAN}, 10)  # fmt: skip
    x = _conv_relu(n, "conv1", x, 64, 3, 2)
    x = n.pool("pool1", x, "MAX", 3, 2)
    plan = [(2, 16, 64), (3, 16, 64), "pool3", (4, 32, 128), (5, 32, 128), "pool5",
            (6, 48, 192), (7, 48, 192), (8, 64, 256), (9, 64, 256)]  # fmt: skip
    for step in plan:
        if isinstance(step, str):
            x = n.pool(step, x, "MAX", 3, 2)
        else:
            x = fire(n, f"fire{step[0]}", x, step[1], step[2])
    n.dropout("drop9", x, 0.5)
    x = n.conv("conv10", x, 1000, 1, weight_filler=filler("gaussian", mean=0.0, std=0.01))
    n.relu("conv10/relu", x)
    n.classifier(n.pool("pool10", x, "AVE", global_=True))


# -- MobileNet v1 (Howard et al. 2017), width 1.0 --------------------------------------------------

# (name, output channels, stride of the depthwise conv), from the paper's Table 1.
MOBILENET = [("conv2_1", 64, 1), ("conv2_2", 128, 2), ("conv3_1", 128, 1), ("conv3_2", 256, 2),
             ("conv4_1", 256, 1), ("conv4_2", 512, 2),
             *[(f"conv5_{i}", 512, 1) for i in range(1, 6)],
             ("conv5_6", 1024, 2), ("conv6", 1024, 1)]  # fmt: skip


def mobilenet(n: ZooNet) -> None:
    """3x3/2 conv, then 13 depthwise-separable pairs (3x3 depthwise = Convolution with group equal
    to its channels; 1x1 pointwise), each conv followed by BatchNorm, Scale and ReLU; global
    average pool; 1000-way inner product."""
    x = n.data(IMAGENET_DB, (64, 50), (3, 224, 224),
               {"crop_size": 224, "mean_value": [103.94, 116.78, 123.68], "scale": 0.017},
               1)  # fmt: skip
    n.weight_filler = filler("msra")
    x, channels = n.conv_bn_relu("conv1", x, 32, 3, 2, 1), 32
    for name, out, stride in MOBILENET:
        x = n.conv_bn_relu(f"{name}/dw", x, channels, 3, stride, 1, group=channels)
        x, channels = n.conv_bn_relu(f"{name}/sep", x, out, 1), out
    x = n.pool("pool6", x, "AVE", global_=True)
    n.classifier(n.fc("fc7", x, 1000, weight_filler=gaussian(0.01)))
