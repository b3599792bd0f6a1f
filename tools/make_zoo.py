"""Write the model zoo: models/<name>/{train_val,deploy}.prototxt, solvers/<name>_solver.prototxt.

    python tools/make_zoo.py            # rewrite every file
    python tools/make_zoo.py --check    # exit 1 if a committed file differs from what this writes

The nets are written from their papers (see tools/zoo_models.py); solvers carry the published
training settings. ImageNet DB and mean paths are placeholders to point at your own data.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import zoo_models as zm
from zoo_writer import Enum, ZooNet, solver_text

ROOT = Path(__file__).resolve().parents[1]

IMAGENET_NOTE = [
    "ImageNet (ILSVRC-2012) LMDBs and mean are placeholders: build them with your own tools, or",
    "edit data_param.source / transform_param below to point at yours.",
]
CIFAR_NOTE = [
    "Data: CIFAR-10 as LMDBs of Datum (3x32x32) and their mean, made from the binary version",
    "(cifar-10-batches-bin) as Caffe's examples/cifar10/create_cifar10.sh makes them:",
    "  geeps-net convert_cifar_data cifar-10-batches-bin data/cifar10",
    "  geeps-net compute_image_mean data/cifar10/cifar10_train_lmdb data/cifar10/mean.binaryproto",
]


@dataclass
class Model:
    """One zoo entry: builder, display name, a line on what it is, notes, solver fields."""

    build: object
    title: str
    about: str
    notes: list
    solver: dict
    classes: int = 1000


def _imagenet_solver(**fields) -> dict:
    base = {"test_iter": 1000, "test_interval": 10000, "test_initialization": False,
            "display": 20, "average_loss": 20, "momentum": 0.9, "snapshot": 10000,
            "solver_mode": Enum("GPU")}  # fmt: skip
    return {**base, **fields}


MODELS = {
    "cifar10_quick": Model(zm.cifar10_quick, "CIFAR10_quick",
        "Krizhevsky's quick CIFAR-10 net: three conv stages, two inner products.", CIFAR_NOTE,
        {"test_iter": 100, "test_interval": 500, "base_lr": 0.001, "momentum": 0.9,
         "weight_decay": 0.004, "lr_policy": "multistep", "gamma": 0.1, "stepvalue": 4000,
         "display": 100, "max_iter": 5000, "snapshot": 5000, "solver_mode": Enum("CPU")},
        classes=10),
    "cifar10_full": Model(zm.cifar10_full, "CIFAR10_full",
        "Krizhevsky's CIFAR-10 net with local response normalisation (~81% test accuracy).",
        CIFAR_NOTE,
        {"test_iter": 100, "test_interval": 1000, "base_lr": 0.001, "momentum": 0.9,
         "weight_decay": 0.004, "lr_policy": "multistep", "gamma": 0.1,
         "stepvalue": [60000, 65000], "display": 200, "max_iter": 70000, "snapshot": 10000,
         "solver_mode": Enum("CPU")},
        classes=10),
    "alexnet": Model(zm.alexnet, "AlexNet",
        "AlexNet (Krizhevsky, Sutskever, Hinton, NIPS 2012), one-tower layout with groups.",
        IMAGENET_NOTE,
        _imagenet_solver(base_lr=0.01, lr_policy="step", gamma=0.1, stepsize=100000,
                         max_iter=450000, weight_decay=0.0005)),
    "caffenet": Model(zm.caffenet, "CaffeNet",
        "CaffeNet: AlexNet with pooling before normalisation, as Caffe's reference model.",
        IMAGENET_NOTE,
        _imagenet_solver(base_lr=0.01, lr_policy="step", gamma=0.1, stepsize=100000,
                         max_iter=450000, weight_decay=0.0005)),
    "vgg16": Model(zm.vgg16, "VGG_ILSVRC_16_layers",
        "VGG-16 (Simonyan & Zisserman, ICLR 2015), configuration D.", IMAGENET_NOTE,
        _imagenet_solver(base_lr=0.01, lr_policy="step", gamma=0.1, stepsize=100000,
                         max_iter=370000, weight_decay=0.0005, iter_size=4)),
    "googlenet": Model(zm.googlenet, "GoogleNet",
        "GoogLeNet (Szegedy et al., CVPR 2015): Inception v1 with LRN and two auxiliary heads.",
        IMAGENET_NOTE,
        _imagenet_solver(test_interval=4000, display=40, average_loss=40, base_lr=0.01,
                         lr_policy="poly", power=0.5, max_iter=2400000, weight_decay=0.0002,
                         snapshot=40000)),
    "resnet18": Model(zm.resnet18, "ResNet-18",
        "ResNet-18 (He et al., CVPR 2016): basic blocks, BatchNorm + Scale, projection shortcuts.",
        IMAGENET_NOTE,
        _imagenet_solver(base_lr=0.1, lr_policy="multistep", gamma=0.1,
                         stepvalue=[150000, 300000], max_iter=600000, weight_decay=0.0001,
                         iter_size=4)),
    "resnet50": Model(zm.resnet50, "ResNet-50",
        "ResNet-50 (He et al., CVPR 2016): bottleneck blocks, BatchNorm + Scale, projections.",
        IMAGENET_NOTE,
        _imagenet_solver(base_lr=0.1, lr_policy="multistep", gamma=0.1,
                         stepvalue=[150000, 300000], max_iter=600000, weight_decay=0.0001,
                         iter_size=4)),
    "squeezenet1.1": Model(zm.squeezenet11, "SqueezeNet_v1.1",
        "SqueezeNet 1.1 (Iandola et al. 2016): Fire modules, AlexNet accuracy in 1.2M params.",
        IMAGENET_NOTE,
        _imagenet_solver(test_iter=2000, test_interval=1000, display=40, average_loss=40,
                         base_lr=0.04, lr_policy="poly", power=1.0, max_iter=170000,
                         weight_decay=0.0002, iter_size=16, snapshot=1000)),
    "mobilenet": Model(zm.mobilenet, "MobileNet",
        "MobileNet v1 (Howard et al. 2017), width 1.0: depthwise-separable convolutions.",
        IMAGENET_NOTE + [
            "The paper trained with RMSProp in TensorFlow; the solver follows its settings."],
        _imagenet_solver(type="RMSProp", base_lr=0.045, rms_decay=0.9, delta=1.0, momentum=0.0,
                         lr_policy="step", gamma=0.94, stepsize=40000, max_iter=1200000,
                         weight_decay=0.00004)),
}  # fmt: skip

SOLVER_NOTES = {
    "vgg16": "batch 64 x iter_size 4 = the paper's 256",
    "resnet18": "batch 64 x iter_size 4 = the paper's 256",
    "resnet50": "batch 64 x iter_size 4 = the paper's 256",
    "squeezenet1.1": "batch 32 x iter_size 16 = 512, as the SqueezeNet 1.1 release",
    "mobilenet": "stepsize 40000 = two epochs at batch 64",
    "cifar10_quick": "lr 0.001 for 4000 iterations then 0.0001 for 1000 (Caffe's two solver files)",
    "cifar10_full": "lr 0.001 to 60000, 0.0001 to 65000, 0.00001 to 70000 (Caffe's three files)",
}


def net_text(name: str, deploy: bool) -> str:
    """The prototxt of zoo net `name` (train_val, or deploy)."""
    model = MODELS[name]
    kind = "deploy (Input layer, Softmax `prob`)" if deploy else "train_val"
    comment = [f"{model.about}", f"Written for geeps-net from the paper; {kind}.",
               "Generated by tools/make_zoo.py: edit that, not this file."]  # fmt: skip
    if deploy:
        comment.append("Training-only layers (losses, accuracies, auxiliary heads) are left out.")
    else:
        comment += model.notes
    net = ZooNet(model.title, comment, deploy)
    model.build(net)
    return net.text()


def solver_file_text(name: str) -> str:
    """The solver prototxt of zoo net `name`."""
    model = MODELS[name]
    comment = [f"{model.title}: training settings from the paper / its Caffe release."]
    if name in SOLVER_NOTES:
        comment.append(SOLVER_NOTES[name] + ".")
    comment.append("Generated by tools/make_zoo.py.")
    fields = {"net": f"models/{name}/train_val.prototxt", **model.solver,
              "snapshot_prefix": f"snapshots/{name}"}  # fmt: skip
    return solver_text(comment, fields)


def zoo_files() -> dict[Path, str]:
    """Every zoo file (path relative to the repository root) and its text."""
    files = {}
    for name in MODELS:
        files[Path("models", name, "train_val.prototxt")] = net_text(name, deploy=False)
        files[Path("models", name, "deploy.prototxt")] = net_text(name, deploy=True)
        files[Path("solvers", f"{name}_solver.prototxt")] = solver_file_text(name)
    return files


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    stale = []
    for rel, text in zoo_files().items():
        path = ROOT / rel
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(str(rel))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    if stale:
        print("out of date (run python tools/make_zoo.py):", *stale, sep="\n  ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
