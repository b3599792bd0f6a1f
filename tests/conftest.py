"""Shared fixtures: `xp` runs a test on NumPy, and on CuPy too under `-m gpu` when a GPU is
present; `run` calls the geeps-net command line in-process; `lmdb_records` reads a DB back."""

import logging
import signal
from pathlib import Path

import lmdb
import numpy
import pytest

from geeps_net.backend import gpu_available
from geeps_net.cli import main

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"


def _xp_params():
    params = [pytest.param(numpy, id="numpy")]
    marks = [pytest.mark.gpu]
    if not gpu_available():
        marks.append(pytest.mark.skip(reason="no CUDA device: the CuPy run needs a GPU"))
    params.append(pytest.param("cupy", id="cupy", marks=marks))
    return params


@pytest.fixture(params=_xp_params())
def xp(request):
    """The array module under test: numpy, or cupy on a GPU machine."""
    if request.param == "cupy":
        import cupy

        return cupy
    return request.param


@pytest.fixture
def reference():
    """Path to ../shared/reference (real Caffe files and oracle cases); skips if not laid out."""
    if not REFERENCE.is_dir():
        pytest.skip(f"reference files not found at {REFERENCE}")
    return REFERENCE


@pytest.fixture
def run(tmp_path, monkeypatch, capsys):
    """main(argv) in tmp_path, restoring what it changes (root logging, signal handlers);
    returns (status, log text)."""
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    signals = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}

    def call(*argv):
        capsys.readouterr()
        try:
            status = main([str(a) for a in argv])
        finally:
            root.handlers[:] = saved[0]
            root.setLevel(saved[1])
            for s, h in signals.items():
                signal.signal(s, h)
        return status, capsys.readouterr().err

    return call


def lmdb_records(path) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of the LMDB at `path`, in key order."""
    with lmdb.open(str(path), readonly=True, lock=False) as env, env.begin() as txn:
        return list(txn.cursor())
