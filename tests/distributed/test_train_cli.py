"""`geeps-net train -workers 2` end to end on a tiny LMDB: worker 0 alone tests and writes the
snapshot, which equals one worker at twice the batch; a worker killed mid-training makes the
launcher say which failed first and the job exit non-zero."""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy
import pytest

from geeps_net.snapshot import read_net_weights

from .helpers import free_base, make_lmdb, net_text, solver_param, solver_text, train_alone

ROOT = Path(__file__).resolve().parents[2]
ITERS, BATCH = 20, 4


def write_solver(folder: Path, lmdb: Path, iters: int, display: int, kind: str = "SGD") -> Path:
    (folder / "net.prototxt").write_text(net_text(lmdb, BATCH, test=True))
    where = {"snapshot_prefix": f'"{folder}/snap/tiny"', "net": f'"{folder}/net.prototxt"'}
    text = solver_text(kind, iters, display=display, test_iter=2, test_interval=10, **where)
    path = folder / "solver.prototxt"
    path.write_text(text)
    return path


def geeps(*args, **kw) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "geeps_net", "train", *map(str, args)]
    return subprocess.Popen(cmd, cwd=ROOT, text=True, stderr=subprocess.PIPE, **kw)


@pytest.mark.parametrize("rule,kind", [("AVERAGE", "SGD"), ("SERVER", "Adam")])
def test_two_workers_train_and_worker_0_snapshots(tmp_path, rule, kind):
    lmdb = make_lmdb(tmp_path)
    solver = write_solver(tmp_path, lmdb, ITERS, display=5, kind=kind)
    flags = {"-workers": 2, "-update_rule": rule, "-deadline_s": 20, "-heartbeat_s": 0.5}
    flags["-base_port"] = free_base(2)  # parallel tests must not race for the default
    proc = geeps("-solver", solver, *[str(x) for item in flags.items() for x in item])
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert re.search(r"\] \[worker 1\] Iteration 5 ", err)  # every worker logs, with its id
    tests = re.findall(r"\[worker (\d)\] +Test net output #\d: accuracy", err)
    assert tests and set(tests) == {"0"}  # worker 0 alone tests
    written = {p.name for p in (tmp_path / "snap").iterdir()}
    assert {f"tiny_iter_{ITERS}.caffemodel", f"tiny_iter_{ITERS}.solverstate"} <= written
    assert all(name.startswith(f"tiny_iter_{ITERS}.") for name in written)  # once, at the end
    saved = read_net_weights(tmp_path / "snap" / f"tiny_iter_{ITERS}.caffemodel")
    got = saved["ip1"] + saved["ip2"]
    want = train_alone(solver_param(lmdb, 2 * BATCH, kind, ITERS), ITERS)
    for i, (w, g) in enumerate(zip(want, got, strict=True)):
        numpy.testing.assert_allclose(g, w, rtol=0, atol=1e-6, err_msg=f"learnable {i}")


def test_a_killed_worker_fails_the_job_and_the_launcher_names_it(tmp_path):
    solver = write_solver(tmp_path, make_lmdb(tmp_path), 100000, display=1)
    flags = ["-workers", 2, "-deadline_s", 3, "-heartbeat_s", 0.3, "-base_port", free_base(2)]
    proc = geeps("-solver", solver, *flags)
    lines, pids = [], {}
    watchdog = threading.Timer(120, proc.kill)  # a job that never gets going ends the read below
    watchdog.start()
    try:
        for line in proc.stderr:
            lines.append(line)
            if m := re.search(r"worker (\d): pid (\d+)", line):
                pids[int(m[1])] = int(m[2])
            if "[worker 1] Iteration 5," in line:
                break
        assert len(pids) == 2, "".join(lines)
        os.kill(pids[1], signal.SIGKILL)
        started = time.monotonic()
        rest = proc.communicate(timeout=15)[1]
    finally:
        watchdog.cancel()
        proc.kill()
    took = time.monotonic() - started
    text = "".join(lines) + rest
    assert proc.returncode != 0 and took < 3 + 5, text
    assert f"worker 1 (pid {pids[1]}) failed first: killed by signal SIGKILL" in text
    verdict = (
        r"geeps-net train \[worker 0\]: (worker|server) 1 \(tcp://127\.0\.0\.1:\d+\): no heartbeat"
    )
    assert re.search(verdict + r" for [\d.]+ s; its last clock was \d+", text), text
