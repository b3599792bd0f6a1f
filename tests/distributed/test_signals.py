"""Signals to a 2-worker job (SSP with SUM, BSP with SERVER): SIGHUP snapshots and goes on, SIGINT
snapshots and stops, every worker at the same clock (worker 0 decides through the PS,
geeps_net/control.py), and the job exits 0."""

import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy
import pytest

from geeps_net.control import JobControl
from geeps_net.snapshot import read_solverstate

from .helpers import free_base, make_lmdb, net_text, solver_text

ROOT = Path(__file__).resolve().parents[2]


def start_job(tmp_path: Path, slack: int, rule: str = "SUM") -> subprocess.Popen:
    lmdb = make_lmdb(tmp_path)
    net = tmp_path / "net.prototxt"
    net.write_text(net_text(lmdb, 4))
    prefix = f'"{tmp_path}/snap/tiny"'
    solver = tmp_path / "solver.prototxt"
    solver.write_text(solver_text("SGD", 10**7, display=1, snapshot_prefix=prefix, net=f'"{net}"'))
    flags = ["-workers", "2", "-slack", str(slack), "-update_rule", rule]
    flags += ["-deadline_s", "20", "-heartbeat_s", "0.5"]
    flags += ["-base_port", str(free_base(2))]  # parallel tests must not race for the default
    cmd = [sys.executable, "-m", "geeps_net", "train", "-solver", str(solver), *flags]
    return subprocess.Popen(cmd, cwd=ROOT, text=True, stderr=subprocess.PIPE)


def read_until(proc, lines: list[str], pattern: str, count: int = 1) -> None:
    """Collect stderr lines until `pattern` has matched `count` lines."""
    seen = 0
    for line in proc.stderr:
        lines.append(line)
        seen += bool(re.search(pattern, line))
        if seen == count:
            return
    raise AssertionError("the job ended early:\n" + "".join(lines))


@pytest.mark.parametrize("slack,rule", [(1, "SUM"), (0, "SERVER")])
def test_hup_snapshots_and_int_stops_every_worker_at_one_clock(tmp_path, slack, rule):
    proc = start_job(tmp_path, slack, rule)
    lines: list[str] = []
    watchdog = threading.Timer(120, proc.kill)
    watchdog.start()
    try:
        read_until(proc, lines, r"\[worker 1\] Iteration 5,")
        proc.send_signal(signal.SIGHUP)
        read_until(proc, lines, r"Snapshotting solver state", count=2)
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=60)[1]
    finally:
        watchdog.cancel()
        proc.kill()
    text = "".join(lines) + rest
    assert proc.returncode == 0, text
    assert text.count("Optimization stopped early") == 2, text
    assert "[worker 1] " in text and "worker 0 decides for the job" in text
    snaps = sorted((tmp_path / "snap").glob("*.solverstate"))
    iterations = sorted({int(re.search(r"_iter_(\d+)", p.name)[1]) for p in snaps})
    assert len(iterations) == 2, snaps  # the SIGHUP snapshot, then the one at the stop
    for it in iterations:  # each written by both workers, at the same clock
        for name in (f"tiny_iter_{it}.solverstate", f"tiny_iter_{it}.worker1.solverstate"):
            assert read_solverstate(tmp_path / "snap" / name)[0] == it


def test_targets_are_agreed_and_slots_reused():
    """Worker 0's votes, as the PS would carry them (AVERAGE over 2 workers, slack 1)."""
    root, other = JobControl(0, 2, 1, "AVERAGE"), JobControl(1, 2, 1, "AVERAGE")
    table = numpy.zeros(2, numpy.float32)
    root.request("snapshot")
    other.request("stop")  # not worker 0's: ignored
    for clock in range(12):
        for control in (root, other):
            control.observe(table, clock)
            if clock == 6:
                root.request("snapshot")  # the slot is free again after the first one
        table += root.delta(clock) / numpy.float32(2)  # the server averages
        table += other.delta(clock) / numpy.float32(2)
        done = clock + 1
        assert root.due(done) == other.due(done) == (["snapshot"] if done in (3, 9) else [])
    assert not table.any()
