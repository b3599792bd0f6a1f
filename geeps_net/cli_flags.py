"""The flags the verbs share: -gpu, file checks, -threads, and the PS configuration flags."""

from __future__ import annotations

import argparse
from pathlib import Path

from geeps_net.cli import flag
from geeps_net.errors import GeepsError


def gpu_index(args):
    """-gpu 0 -> device 0; absent -> CPU. Caffe's "all" takes device 0 here (one device per
    worker)."""
    if args.gpu in (None, ""):
        return None
    return 0 if args.gpu == "all" else int(args.gpu.split(",")[0])


def parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "t", "yes"):
        return True
    if text.lower() in ("0", "false", "f", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def require_files(args, *names: str) -> None:
    """Every file flag given names an existing file (-weights: each of its comma-separated list):
    a mistyped path fails here, in one line, before any net is built or data is read."""
    for name in names:
        value = getattr(args, name, None) or ""
        for path in value.split(",") if name == "weights" else [value]:
            if path and not Path(path).is_file():
                what = "is a directory, not a file" if Path(path).is_dir() else "no such file"
                raise GeepsError(f"-{name} {path}: {what}")


def ps_flags(p) -> None:
    """-ps_config FILE, -no_ps, and one flag per PsConfig field (overriding the file)."""
    from geeps_net.proto import geeps_pb2

    flag(p, "ps_config", default="", help="PS configuration file (geeps.PsConfig text)")
    flag(p, "no_ps", action="store_true", help="run without the parameter server (baseline)")
    group = p.add_argument_group(
        "PS configuration (geeps.PsConfig fields; their meanings: docs/ps_config.md)"
    )
    types = {
        "TYPE_BOOL": parse_bool,
        "TYPE_DOUBLE": float,
        "TYPE_FLOAT": float,
        "TYPE_STRING": str,
    }
    for field in geeps_pb2.PsConfig.DESCRIPTOR.fields:
        kind = _FIELD_TYPES.get(field.type, "TYPE_INT")
        shown = f"default {_default_text(field)}"
        if field.enum_type is not None:
            choices = [v.name for v in field.enum_type.values]
            flag(group, field.name, default=None, choices=choices, help=shown)
        else:
            kind_type = types.get(kind, int)
            flag(group, field.name, default=None, type=kind_type, metavar="V", help=shown)


_FIELD_TYPES = {8: "TYPE_BOOL", 1: "TYPE_DOUBLE", 2: "TYPE_FLOAT", 9: "TYPE_STRING"}


def _default_text(field) -> str:
    """A PsConfig field's proto default as a flag would spell it: SUM, true, 60, (none)."""
    value = field.default_value
    if field.enum_type is not None:
        return field.enum_type.values_by_number[value].name
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value) if value != "" else "(none)"


def ps_config(args):
    """The PS config: -ps_config file (or defaults), then every PsConfig flag given."""
    from geeps_net.proto import geeps_pb2
    from geeps_net.ps.config import Config

    config = Config.load(args.ps_config) if args.ps_config else Config()
    names = [f.name for f in geeps_pb2.PsConfig.DESCRIPTOR.fields]
    given = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    flags = " ".join(f"-{name} {value}" for name, value in given.items())
    return config.overrides(source=f"flags {flags}", **given) if given else config


def threads_flag(p) -> None:
    """-threads N: BLAS threads, set once (threadpoolctl)."""
    flag(p, "threads", type=positive, default=None, help="BLAS threads (default: the library's)")


def positive(text: str) -> int:
    """argparse type: an integer >= 1 (argparse names the flag when this raises)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return value
