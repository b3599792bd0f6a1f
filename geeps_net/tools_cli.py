"""Verbs for the tools users expect beside `caffe`: convert_mnist, convert_mnist_siamese_data,
convert_cifar_data, convert_imageset, convert_db, compute_image_mean, extract_features,
upgrade_net_proto_text/_binary, upgrade_solver_proto_text, keygen, parse_log, plot_log, draw_net.

Each is a plain function over parsed arguments, registered with `command(...)` like the verbs in
geeps_net/commands.py and timing.py (their shared flags: cli_flags.py); importing this module
registers them.
"""

from __future__ import annotations

import logging

from geeps_net.cli import command, flag
from geeps_net.errors import GeepsError

log = logging.getLogger("geeps_net.cli")


def _parse_log_flags(p) -> None:
    p.add_argument("log", help="training log (Caffe's or geeps-net's glog lines)")
    p.add_argument("outdir", help="directory for <log name>.train and <log name>.test")


def parse_log(args) -> int:
    """Write the log's train and test rows as CSV, as Caffe's tools/extra/parse_log.py does."""
    from geeps_net.logparse import parse_log as parse
    from geeps_net.logparse import write_csvs

    parsed = parse(args.log)
    for path in write_csvs(parsed, args.log, args.outdir):
        log.info("Wrote %s", path)
    log.info("%d train rows, %d test rows", len(parsed.train), len(parsed.test))
    return 0


parse_log.add_flags = _parse_log_flags
command("parse_log", "parse a training log into .train and .test CSV files")(parse_log)


def _plot_log_flags(p) -> None:
    p.add_argument("log", help="training log (Caffe's or geeps-net's glog lines)")
    p.add_argument("out", help="image to write: .png, .svg or .pdf")
    flag(p, "title", default="", help="title above the plots (default: the log's file name)")


def plot_log(args) -> int:
    """Plot loss, accuracy and learning rate against iteration (needs matplotlib)."""
    from pathlib import Path

    from geeps_net.logparse import parse_log as parse
    from geeps_net.logplot import plot_log as plot

    out = plot(parse(args.log), args.out, title=args.title or Path(args.log).name)
    log.info("Wrote %s", out)
    return 0


plot_log.add_flags = _plot_log_flags
command("plot_log", "plot loss, accuracy and learning rate from a training log")(plot_log)


def _draw_net_flags(p) -> None:
    p.add_argument("net", help="net prototxt")
    p.add_argument("out", help="output: .png, .svg, .pdf (rendered by graphviz) or .dot")
    flag(p, "phase", default="TRAIN", choices=["TRAIN", "TEST", "ALL"], help="layers to draw")
    flag(p, "rankdir", default="LR", choices=["LR", "TB", "RL", "BT"], help="graph direction")


def draw_net(args) -> int:
    """Draw the net's layers and blobs (with shapes when it builds) as a graphviz graph."""
    from geeps_net.drawnet import draw_net as draw

    out = draw(args.net, args.out, phase=args.phase, rankdir=args.rankdir)
    log.info("Wrote %s", out)
    return 0


draw_net.add_flags = _draw_net_flags
command("draw_net", "draw a net prototxt as a graph (.png/.svg/.dot)")(draw_net)


# -- data tools -----------------------------------------------------------------------------------


def _convert_flags(p) -> None:
    p.add_argument("images", help="IDX image file (.gz or raw)")
    p.add_argument("labels", help="IDX label file (.gz or raw)")
    p.add_argument("output", help="database to create")
    flag(p, "backend", default="lmdb", choices=["lmdb", "leveldb"])
    flag(p, "overwrite", action="store_true")


def convert_mnist(args) -> int:
    """MNIST / Fashion-MNIST IDX files -> LMDB or LevelDB of Datum (convert_mnist_data)."""
    from geeps_net.dataset import convert_mnist as convert

    count = convert(
        args.images, args.labels, args.output, backend=args.backend, overwrite=args.overwrite
    )
    log.info("Processed %d files.", count)
    return 0


convert_mnist.add_flags = _convert_flags
command("convert_mnist", "convert MNIST-format IDX files to an LMDB")(convert_mnist)


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


convert_imageset.add_flags = _imageset_flags
command("convert_imageset", "convert a list of images to an LMDB")(convert_imageset)


def _siamese_flags(p) -> None:
    _convert_flags(p)
    p.set_defaults(backend="leveldb")  # the siamese example's net reads LevelDB
    flag(p, "seed", type=int, default=None, help="seed of the random pairs (absent: random)")


def convert_mnist_siamese_data(args) -> int:
    """MNIST-format IDX files -> image pairs for the siamese example (Caffe's tool)."""
    from geeps_net.dataset import convert_mnist_siamese as convert

    count = convert(
        args.images, args.labels, args.output, backend=args.backend, seed=args.seed,
        overwrite=args.overwrite,
    )  # fmt: skip
    log.info("Processed %d pairs.", count)
    return 0


convert_mnist_siamese_data.add_flags = _siamese_flags
command("convert_mnist_siamese_data", "make image pairs for the siamese example")(
    convert_mnist_siamese_data
)


def _cifar_flags(p) -> None:
    p.add_argument("input_folder", help="CIFAR-10's binary version (data_batch_1.bin, ...)")
    p.add_argument("output_folder", help="where cifar10_train_<db> and cifar10_test_<db> go")
    p.add_argument("db_type", nargs="?", default="lmdb", choices=["lmdb", "leveldb"])
    flag(p, "overwrite", action="store_true")


def convert_cifar_data(args) -> int:
    """CIFAR-10's binary files -> train and test databases (Caffe's convert_cifar_data)."""
    from geeps_net.dataset import convert_cifar

    counts = convert_cifar(
        args.input_folder, args.output_folder, args.db_type, overwrite=args.overwrite
    )
    log.info("Wrote %d training and %d test images.", counts["train"], counts["test"])
    return 0


convert_cifar_data.add_flags = _cifar_flags
command("convert_cifar_data", "convert CIFAR-10's binary files to databases")(convert_cifar_data)


def _convert_db_flags(p) -> None:
    p.add_argument("input", help="LMDB or LevelDB")
    p.add_argument("output", help="database to create, the same records in the other backend")
    flag(p, "backend", default="lmdb", choices=["lmdb", "leveldb"], help="of the output")
    flag(p, "overwrite", action="store_true")


def convert_db(args) -> int:
    """Copy a database's records into a new one of another backend (LevelDB -> LMDB for jobs
    of several worker processes, which LevelDB's single-process lock refuses)."""
    from geeps_net.datumdb import open_db, write_db

    with open_db(args.input) as db:
        count = write_db(args.output, db.items(), backend=args.backend, overwrite=args.overwrite)
    log.info("Copied %d records.", count)
    return 0


convert_db.add_flags = _convert_db_flags
command("convert_db", "copy an LMDB or LevelDB into a new one of either backend")(convert_db)


def _mean_flags(p) -> None:
    p.add_argument("db", help="LMDB or LevelDB of Datum")
    p.add_argument("output", help="mean .binaryproto to write")


def compute_image_mean(args) -> int:
    """Mean image of a Datum LMDB or LevelDB as a binaryproto (Caffe's compute_image_mean)."""
    from geeps_net.dataset import compute_image_mean as compute

    compute(args.db, args.output)
    return 0


compute_image_mean.add_flags = _mean_flags
command("compute_image_mean", "compute the mean image of a data set")(compute_image_mean)


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


extract_features.add_flags = _features_flags
command("extract_features", "write a trained net's blobs to databases")(extract_features)


# -- upgrades -------------------------------------------------------------------------------------


def _upgrade_flags(p) -> None:
    p.add_argument("input", help="file in a legacy (or current) format")
    p.add_argument("output", help="file to write in the current format")


def upgrade_net_proto_text(args) -> int:
    """A net prototxt with V0/V1 layers, net-level inputs or old transforms -> current text."""
    from google.protobuf import text_format

    from geeps_net.prototxt import read_net

    net = read_net(args.input).param
    _write_output(args.output, text_format.MessageToString(net).encode())
    log.info("Wrote upgraded NetParameter text proto to %s", args.output)
    return 0


def upgrade_net_proto_binary(args) -> int:
    """A binary net (.caffemodel) with V0/V1 layers -> current binary, weights kept."""
    from geeps_net.prototxt import upgrade_net
    from geeps_net.snapshot import read_net_param

    net = read_net_param(args.input)
    if net.layer and net.layers:
        raise GeepsError(f"{args.input}: has both 'layer' and legacy 'layers' entries")
    _write_output(args.output, upgrade_net(net, args.input).SerializeToString())
    log.info("Wrote upgraded NetParameter binary proto to %s", args.output)
    return 0


def upgrade_solver_proto_text(args) -> int:
    """A solver prototxt with the legacy solver_type enum -> current text (type: "...")."""
    from google.protobuf import text_format

    from geeps_net.prototxt import read_solver

    solver = read_solver(args.input)
    _write_output(args.output, text_format.MessageToString(solver).encode())
    log.info("Wrote upgraded SolverParameter text proto to %s", args.output)
    return 0


def _write_output(path, data: bytes) -> None:
    from geeps_net.fileio import write_atomic

    try:
        write_atomic(path, data)
    except OSError as e:
        raise GeepsError(f"{path}: cannot write: {e.strerror or e}") from None


for _verb, _what in (
    (upgrade_net_proto_text, "upgrade a legacy net prototxt"),
    (upgrade_net_proto_binary, "upgrade a legacy binary net (.caffemodel)"),
    (upgrade_solver_proto_text, "upgrade a legacy solver prototxt"),
):
    _verb.add_flags = _upgrade_flags
    command(_verb.__name__, _what)(_verb)


# -- keygen ---------------------------------------------------------------------------------------


def _keygen_flags(p) -> None:
    p.add_argument("directory", help="folder to write the keys into (created)")
    flag(p, "workers", type=int, default=1, help="worker key pairs to make")


def keygen(args) -> int:
    """CURVE keys for a job: one server pair and one pair per worker, laid out as the PS config
    expects (servers admit every public key in the workers' folder)."""
    from pathlib import Path

    from geeps_net.ps.curve import generate_keys

    if args.workers < 1:
        raise GeepsError(f"-workers {args.workers}: need at least one worker")
    root = Path(args.directory)
    server_public, _ = generate_keys(root, "server")
    for i in range(args.workers):
        public, secret = generate_keys(root / "workers", f"worker{i}")
        log.info(
            "worker %d: curve_server_key: %r curve_public_key: %r curve_secret_key: %r",
            i, str(server_public), str(public), str(secret),
        )  # fmt: skip
    log.info("Wrote the server pair and %d worker pairs under %s", args.workers, root)
    return 0


keygen.add_flags = _keygen_flags
command("keygen", "make CURVE key files for an authenticated job")(keygen)
