"""A 2-worker job stopped at iteration 10 and resumed with `-snapshot` ends, at iteration 20, with
exactly the parameters and solver histories of an uninterrupted job: every worker saved its own
history, data position and generators at the same clock (and with SERVER the shards' history)."""

import subprocess
import sys
from pathlib import Path

import numpy
import pytest

from geeps_net.checkpoint import read_arrays
from geeps_net.snapshot import read_net_weights, read_solverstate

from .helpers import free_base, make_lmdb, net_text, solver_text

ROOT = Path(__file__).resolve().parents[2]
BATCH = 4


def write_solver(folder: Path, lmdb: Path, kind: str, prefix: str, iters: int) -> Path:
    net = folder / "net.prototxt"
    net.write_text(net_text(lmdb, BATCH))
    text = solver_text(kind, iters, snapshot=10, snapshot_prefix=f'"{prefix}"', net=f'"{net}"')
    path = folder / f"{Path(prefix).name}.prototxt"
    path.write_text(text)
    return path


def train(solver: Path, rule: str, *extra) -> str:
    flags = ["-workers", "2", "-update_rule", rule, "-deadline_s", "20", "-heartbeat_s", "0.5"]
    flags += ["-base_port", str(free_base(2))]  # parallel tests must not race for the default
    cmd = [sys.executable, "-m", "geeps_net", "train", "-solver", str(solver), *flags, *extra]
    done = subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stderr


def history(state: Path) -> list[numpy.ndarray]:
    return read_solverstate(state)[2]


@pytest.mark.parametrize("rule,kind", [("AVERAGE", "SGD"), ("SERVER", "Adam")])
def test_two_workers_resume_bit_identically(tmp_path, rule, kind):
    lmdb = make_lmdb(tmp_path)
    whole, part = tmp_path / "whole" / "tiny", tmp_path / "part" / "tiny"
    train(write_solver(tmp_path, lmdb, kind, str(whole), 20), rule)
    log = train(
        write_solver(tmp_path, lmdb, kind, str(part), 20),
        rule,
        "-snapshot",
        f"{whole}_iter_10.solverstate",
    )
    assert "[worker 1] Restored solver state from" in log and "iteration 10" in log
    a, b = f"{whole}_iter_20", f"{part}_iter_20"
    want, got = read_net_weights(f"{a}.caffemodel"), read_net_weights(f"{b}.caffemodel")
    assert want.keys() == got.keys()
    for layer in want:
        for i, (w, g) in enumerate(zip(want[layer], got[layer], strict=True)):
            assert numpy.array_equal(w, g), f"{layer} blob {i} differs after the resume"
    for state in (".solverstate", ".worker1.solverstate"):
        for w, g in zip(history(a + state), history(b + state), strict=True):
            assert numpy.array_equal(w, g), f"{state}: the solver history differs"
    if rule == "SERVER":  # the Adam history lives on the shards, one file per hosting worker
        for state in (".solverstate", ".worker1.solverstate"):
            w, g = read_arrays(f"{a}{state}.server.npz"), read_arrays(f"{b}{state}.server.npz")
            assert w.keys() == g.keys() and w
            assert all(numpy.array_equal(w[k], g[k]) for k in w)


def test_a_snapshot_of_two_workers_is_refused_by_one(tmp_path):
    lmdb = make_lmdb(tmp_path)
    prefix = tmp_path / "snap" / "tiny"
    solver = write_solver(tmp_path, lmdb, "SGD", str(prefix), 10)
    train(solver, "AVERAGE")
    cmd = [sys.executable, "-m", "geeps_net", "train", "-solver", str(solver)]
    cmd += ["-snapshot", f"{prefix}_iter_10.solverstate"]
    done = subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True, timeout=120)
    assert done.returncode == 1
    assert "written by a 2-worker job; resume it with 2 worker(s)" in done.stderr
    assert "Traceback" not in done.stderr
