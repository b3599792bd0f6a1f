"""Verbs for Caffe's data tools: convert_mnist, convert_mnist_siamese_data, convert_cifar_data,
convert_imageset, convert_db, compute_image_mean, extract_features.

Each is a plain function over parsed arguments, registered with `command(...)` like the verbs in
geeps_net/commands.py and tools_cli.py; the work is in dataset.py, imageset.py, datumdb.py and
features.py. Importing this module registers them.
"""

from __future__ import annotations

import logging

from geeps_net.cli import command, flag

log = logging.getLogger("geeps_net.cli")


def _convert_flags(p) -> None:
    p.add_argument("images", help="IDX image file (.gz or raw)")
    p.add_argument("labels", help="IDX label file (.gz or raw)")
    p.add_argument("output", help="database to create")
    flag(p, "backend", default="lmdb", choices=["lmdb", "leveldb"])
    flag(p, "overwrite", action="store_true")


@command("convert_mnist", "convert MNIST-format IDX files to a database", _convert_flags)
def convert_mnist(args) -> int:
    """MNIST / Fashion-MNIST IDX files -> LMDB or LevelDB of Datum (convert_mnist_data)."""
    from geeps_net.dataset import convert_mnist as convert

    count = convert(
        args.images, args.labels, args.output, backend=args.backend, overwrite=args.overwrite
    )
    log.info("Processed %d files.", count)
    return 0


def _imageset_flags(p) -> None:
    p.add_argument("root_folder", help="folder the list's paths are relative to (ends with /)")
    p.add_argument("list_file", help='one "path label" per line')
    p.add_argument("output", help="database to create")
    flag(p, "gray", action="store_true", help="store one grey channel")
    flag(p, "shuffle", action="store_true", help="shuffle the list first")
    flag(p, "seed", type=int, default=None, help="seed of -shuffle (absent: random)")
    flag(p, "backend", default="lmdb", choices=["lmdb", "leveldb"])
    flag(p, "resize_height", type=int, default=0, help="with -resize_width: resize every image")
    flag(p, "resize_width", type=int, default=0)
    flag(p, "check_size", action="store_true", help="every image must have the first's shape")
    flag(p, "encoded", action="store_true", help="store the image files, not their pixels")
    flag(p, "encode_type", default="", help="with -encoded: re-encode as png, jpg, ...")
    flag(p, "overwrite", action="store_true")


@command("convert_imageset", "convert a list of images to a database", _imageset_flags)
def convert_imageset(args) -> int:
    """Images named in a list file -> LMDB of Datum (Caffe's convert_imageset)."""
    from geeps_net.imageset import convert_imageset as convert

    count = convert(
        args.root_folder,
        args.list_file,
        args.output,
        gray=args.gray,
        shuffle=args.shuffle,
        seed=args.seed,
        resize=(args.resize_height, args.resize_width),
        check_size=args.check_size,
        encoded=args.encoded,
        encode_type=args.encode_type,
        backend=args.backend,
        overwrite=args.overwrite,
    )
    log.info("Processed %d files.", count)
    return 0


def _siamese_flags(p) -> None:
    _convert_flags(p)
    p.set_defaults(backend="leveldb")  # the siamese example's net reads LevelDB
    flag(p, "seed", type=int, default=None, help="seed of the random pairs (absent: random)")


@command("convert_mnist_siamese_data", "make image pairs for the siamese example", _siamese_flags)
def convert_mnist_siamese_data(args) -> int:
    """MNIST-format IDX files -> image pairs for the siamese example (Caffe's tool)."""
    from geeps_net.dataset import convert_mnist_siamese as convert

    count = convert(
        args.images, args.labels, args.output, backend=args.backend, seed=args.seed,
        overwrite=args.overwrite,
    )  # fmt: skip
    log.info("Processed %d pairs.", count)
    return 0


def _cifar_flags(p) -> None:
    p.add_argument("input_folder", help="CIFAR-10's binary version (data_batch_1.bin, ...)")
    p.add_argument("output_folder", help="where cifar10_train_<db> and cifar10_test_<db> go")
    p.add_argument("db_type", nargs="?", default="lmdb", choices=["lmdb", "leveldb"])
    flag(p, "overwrite", action="store_true")


@command("convert_cifar_data", "convert CIFAR-10's binary files to databases", _cifar_flags)
def convert_cifar_data(args) -> int:
    """CIFAR-10's binary files -> train and test databases (Caffe's convert_cifar_data)."""
    from geeps_net.dataset import convert_cifar

    counts = convert_cifar(
        args.input_folder, args.output_folder, args.db_type, overwrite=args.overwrite
    )
    log.info("Wrote %d training and %d test images.", counts["train"], counts["test"])
    return 0


def _convert_db_flags(p) -> None:
    p.add_argument("input", help="LMDB or LevelDB")
    p.add_argument("output", help="database to create, the same records in the other backend")
    flag(p, "backend", default="lmdb", choices=["lmdb", "leveldb"], help="of the output")
    flag(p, "overwrite", action="store_true")


@command(
    "convert_db", "copy an LMDB or LevelDB into a new one of either backend", _convert_db_flags
)
def convert_db(args) -> int:
    """Copy a database's records into a new one of another backend (LevelDB -> LMDB for jobs
    of several worker processes, which LevelDB's single-process lock refuses)."""
    from geeps_net.datumdb import open_db, write_db

    with open_db(args.input) as db:
        count = write_db(args.output, db.items(), backend=args.backend, overwrite=args.overwrite)
    log.info("Copied %d records.", count)
    return 0


def _mean_flags(p) -> None:
    p.add_argument("db", help="LMDB or LevelDB of Datum")
    p.add_argument("output", help="mean .binaryproto to write")


@command("compute_image_mean", "compute the mean image of a data set", _mean_flags)
def compute_image_mean(args) -> int:
    """Mean image of a Datum LMDB or LevelDB as a binaryproto (Caffe's compute_image_mean)."""
    from geeps_net.dataset import compute_image_mean as compute

    compute(args.db, args.output)
    return 0


def _features_flags(p) -> None:
    p.add_argument("weights", help="trained .caffemodel")
    p.add_argument("model", help="net prototxt (TEST phase, with its data layer)")
    p.add_argument("blobs", help="comma-separated blob names to extract")
    p.add_argument("datasets", help="comma-separated databases to create, one per blob")
    p.add_argument("num_mini_batches", type=int, help="forward passes to run")
    p.add_argument("db_type", nargs="?", default="lmdb", choices=["lmdb", "leveldb"])
    p.add_argument("mode", nargs="?", default="CPU", choices=["CPU", "GPU"])
    p.add_argument("device_id", nargs="?", type=int, default=0)
    flag(p, "overwrite", action="store_true")


@command("extract_features", "write a trained net's blobs to databases", _features_flags)
def extract_features(args) -> int:
    """Blobs of a trained net, image by image, into databases (Caffe's extract_features)."""
    from geeps_net.backend import array_module
    from geeps_net.cli_flags import require_files
    from geeps_net.features import extract_features as extract

    require_files(args, "weights", "model")
    xp = array_module(args.device_id if args.mode == "GPU" else None)
    extract(
        args.weights,
        args.model,
        args.blobs.split(","),
        args.datasets.split(","),
        args.num_mini_batches,
        backend=args.db_type,
        xp=xp,
        overwrite=args.overwrite,
    )
    return 0
