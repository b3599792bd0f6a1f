"""Verbs for the tools users expect beside `caffe`: parse_log, plot_log, draw_net,
upgrade_net_proto_text/_binary, upgrade_solver_proto_text, keygen (the data tools are
data_cli.py's).

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


@command("parse_log", "parse a training log into .train and .test CSV files", _parse_log_flags)
def parse_log(args) -> int:
    """Write the log's train and test rows as CSV, as Caffe's tools/extra/parse_log.py does."""
    from geeps_net.logparse import parse_log as parse
    from geeps_net.logparse import write_csvs

    parsed = parse(args.log)
    for path in write_csvs(parsed, args.log, args.outdir):
        log.info("Wrote %s", path)
    log.info("%d train rows, %d test rows", len(parsed.train), len(parsed.test))
    return 0


def _plot_log_flags(p) -> None:
    p.add_argument("log", help="training log (Caffe's or geeps-net's glog lines)")
    p.add_argument("out", help="image to write: .png, .svg or .pdf")
    flag(p, "title", default="", help="title above the plots (default: the log's file name)")


@command("plot_log", "plot loss, accuracy and learning rate from a training log", _plot_log_flags)
def plot_log(args) -> int:
    """Plot loss, accuracy and learning rate against iteration (needs matplotlib)."""
    from pathlib import Path

    from geeps_net.logparse import parse_log as parse
    from geeps_net.logplot import plot_log as plot

    out = plot(parse(args.log), args.out, title=args.title or Path(args.log).name)
    log.info("Wrote %s", out)
    return 0


def _draw_net_flags(p) -> None:
    p.add_argument("net", help="net prototxt")
    p.add_argument("out", help="output: .png, .svg, .pdf (rendered by graphviz) or .dot")
    flag(p, "phase", default="TRAIN", choices=["TRAIN", "TEST", "ALL"], help="layers to draw")
    flag(p, "rankdir", default="LR", choices=["LR", "TB", "RL", "BT"], help="graph direction")


@command("draw_net", "draw a net prototxt as a graph (.png/.svg/.dot)", _draw_net_flags)
def draw_net(args) -> int:
    """Draw the net's layers and blobs (with shapes when it builds) as a graphviz graph."""
    from geeps_net.drawnet import draw_net as draw

    out = draw(args.net, args.out, phase=args.phase, rankdir=args.rankdir)
    log.info("Wrote %s", out)
    return 0


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
    command(_verb.__name__, _what, _upgrade_flags)(_verb)


# -- keygen ---------------------------------------------------------------------------------------


def _keygen_flags(p) -> None:
    p.add_argument("directory", help="folder to write the keys into (created)")
    flag(p, "workers", type=int, default=1, help="worker key pairs to make")


@command("keygen", "make CURVE key files for an authenticated job", _keygen_flags)
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
