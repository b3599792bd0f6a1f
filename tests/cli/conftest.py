"""Fixtures and helpers of the bad-input tests (test_bad_inputs.py, test_bad_binaries.py).

The error contract they check (STYLE.md, "Errors that point"): exit status 1; on stderr, glog
lines from before the failure and then exactly one line `geeps-net VERB: ...`; no traceback
(unless -debug); and nothing half-written left behind.
"""

from __future__ import annotations

import logging
import re
import signal
from pathlib import Path

import pytest

from geeps_net.cli import main

CORPUS = Path(__file__).resolve().parent.parent / "bad_inputs"
GOOD = CORPUS / "good"
GLOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d{6} ")  # cli.GlogFormatter's line prefix
SOLVER = str(GOOD / "tiny_solver.prototxt")
NET = str(GOOD / "tiny_net.prototxt")


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """Run `geeps-net ARGV` in-process in an empty tmp_path; return its single error line.

    Asserts the error contract on the way (see the module docstring) and restores what main
    changes in the process: root logging handlers and signal handlers.
    """
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    saved_logging = (root.handlers[:], root.level)
    signals = [s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s]
    saved_signals = {s: signal.getsignal(s) for s in signals}

    def run(*argv: str) -> str:
        try:
            rc = main([str(a) for a in argv])
        finally:
            root.handlers[:], _ = saved_logging
            root.setLevel(saved_logging[1])
            for s, handler in saved_signals.items():
                signal.signal(s, handler)
        err = capsys.readouterr().err
        assert rc == 1, f"exit status {rc}; stderr:\n{err}"
        return error_line(argv[0], err, tmp_path)

    return run


def error_line(verb: str, stderr: str, workdir: Path) -> str:
    """The one error line of a failed run, after checking the contract."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    *before, last = lines
    assert last.startswith(f"geeps-net {verb}: "), stderr
    # log records may span lines (the PS plan table): their continuation lines are indented
    stray = [line for line in before if not GLOG.match(line) and not line[:1].isspace()]
    assert not stray, f"stderr lines that are neither log lines nor the error: {stray}"
    assert not leftovers(workdir), leftovers(workdir)
    return last


def leftovers(workdir: Path) -> list[Path]:
    """Temp files or directories (fileio's `.NAME.PID.tmp` / `.old`) anywhere under workdir."""
    return [p for p in workdir.rglob("*") if p.name.endswith((".tmp", ".old"))]


def files_under(path: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every file under `path` (to show nothing changed)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A real .caffemodel/.solverstate pair of good/tiny_net.prototxt (two iterations)."""
    from geeps_net.solver import load_solver

    out = tmp_path_factory.mktemp("trained")
    solver = load_solver(GOOD / "tiny_solver.prototxt")
    solver.param.snapshot_prefix = str(out / "tiny")
    try:
        solver.solve()
    finally:
        solver.close()
    return {"model": out / "tiny_iter_2.caffemodel", "state": out / "tiny_iter_2.solverstate"}


def datum_lmdb(path: Path, garbage_at: int | None = None, odd_shape_at: int | None = None):
    """A 6-record LMDB of 1x4x4 Datum, with one garbage value or one 1x5x5 record if asked."""
    import numpy

    from geeps_net.dataset import encode_datum, write_db

    records = []
    for i in range(6):
        pixels = numpy.full((1, 5, 5) if i == odd_shape_at else (1, 4, 4), i, numpy.uint8)
        value = b"\x07not a datum\xff\xff" if i == garbage_at else encode_datum(pixels, i % 3)
        records.append((b"%08d" % i, value))
    write_db(path, records)


DATA_NET = """name: "lmdb"
layer { name: "data" type: "Data" top: "data" top: "label"
        data_param { source: "SOURCE" batch_size: 2 backend: LMDB } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 3 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""
