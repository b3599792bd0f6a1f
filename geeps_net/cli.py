"""The `geeps-net` command: Caffe's verbs (train, test, time, device_query) plus data tools.

Flags take one dash or two (`-solver` or `--solver`), as Caffe's gflags do. Bad input ends in one
line on stderr, `geeps-net VERB: ...`, naming the file:line, layer or peer at fault, and exit
status 1; `-debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from datetime import datetime

from geeps_net.errors import GeepsError

log = logging.getLogger("geeps_net.cli")

COMMANDS = {}


def command(name: str, help: str, flags):
    """Register a `geeps-net <name>` verb: the function takes parsed args and returns an exit
    code; `flags(parser)` adds its arguments."""

    def decorate(fn):
        COMMANDS[name] = (fn, help, flags)
        return fn

    return decorate


class GlogFormatter(logging.Formatter):
    """glog's line shape, so Caffe's log parsers read our logs: I1125 12:34:56.789012  1234
    file.py:12] msg."""

    def __init__(self, prefix: str = "") -> None:
        super().__init__(
            f"%(levelname).1s%(asctime)s %(process)5d %(filename)s:%(lineno)d] {prefix}%(message)s"
        )

    def formatTime(self, record, datefmt=None) -> str:  # noqa: N802 (logging's name)
        return datetime.fromtimestamp(record.created).strftime("%m%d %H:%M:%S.%f")


def setup_logging(debug: bool = False, prefix: str = "") -> None:
    """Install the glog-shaped handler on stderr (only the CLI installs handlers)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(GlogFormatter(prefix))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)


def flag(parser, name: str, **kwargs) -> None:
    """Add `-name` and `--name` for one option."""
    parser.add_argument(f"-{name}", f"--{name}", dest=name, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from geeps_net import commands, data_cli, timing, tools_cli  # noqa: F401  (the verbs)

    parser = argparse.ArgumentParser(
        prog="geeps-net", description="Caffe-compatible training on the GeePS parameter server"
    )
    sub = parser.add_subparsers(dest="command", metavar="command")
    for name, (_, help_text, add_flags) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        flag(p, "debug", action="store_true", help="show tracebacks and debug logs")
        add_flags(p)
    return parser


def main(argv=None) -> int:
    """Entry point of the `geeps-net` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what a launcher runs again
    if not args.command:
        parser.print_help()
        return 2
    setup_logging(args.debug, prefix=os.environ.get("GEEPS_LOG_PREFIX", ""))
    fn = COMMANDS[args.command][0]
    try:
        return fn(args) or 0
    except KeyboardInterrupt:
        print(f"geeps-net {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        print(f"geeps-net {args.command}: {one_line(e)}", file=sys.stderr)
        return 1


def one_line(error: BaseException) -> str:
    """The message of `error` on one line. GeepsError says it all; an OSError names its file; any
    other exception is a bug, reported by type with a pointer to -debug for the traceback."""
    if isinstance(error, GeepsError):
        text = str(error)
    elif isinstance(error, OSError) and error.filename is not None:
        text = f"{error.filename}: {error.strerror or error}"
    else:
        text = (
            f"internal error: {type(error).__name__}: {error} (rerun with -debug for a traceback)"
        )
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


if __name__ == "__main__":  # `python -m geeps_net.cli`: register verbs on the imported module
    from geeps_net.cli import main as _main

    sys.exit(_main())
