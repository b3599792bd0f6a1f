"""Verbs for the tools users expect beside `caffe`: parse_log, plot_log, draw_net.

Each is a plain function over parsed arguments, registered with `command(...)` like the verbs in
geeps_net/commands.py; importing this module registers them.
"""

from __future__ import annotations

import logging

from geeps_net.cli import command, flag

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
