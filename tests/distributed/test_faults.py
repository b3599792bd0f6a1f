"""A process killed (kill -9) or stopped (SIGSTOP) mid-training: every other process exits non-zero
within deadline_s + 5 s, printing one line that names the lost peer, its address and its last
clock. Processes run tests/distributed/roles.py (deadline 3 s, heartbeat 0.3 s)."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .helpers import free_base

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 3.0
VERDICT = (
    r"(worker|server) {peer} \((tcp://127\.0\.0\.1:\d+|127\.0\.0\.1)\): (no heartbeat|never heard)"
)


class Job:
    """Processes of tests/distributed/roles.py with their output in files."""

    def __init__(self, tmp_path, base, specs, workers):
        self.procs, self.logs = {}, {}
        for kind, i in specs:
            name = f"{kind}{i}"
            self.logs[name] = tmp_path / f"{name}.log"
            with open(self.logs[name], "wb") as out:
                cmd = [
                    sys.executable,
                    "-m",
                    "tests.distributed.roles",
                    kind,
                    str(i),
                    "--base",
                    str(base),
                    "--deadline",
                    str(DEADLINE),
                    "--workers",
                    str(workers),
                    "--servers",
                    str(workers),
                ]
                self.procs[name] = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=out)

    def text(self, name):
        return self.logs[name].read_text(errors="replace")

    def wait_for_clock(self, name, clock, deadline_s=20.0):
        end = time.monotonic() + deadline_s
        while f"clock {clock}\n" not in self.text(name):
            assert time.monotonic() < end, f"{name} never reached clock {clock}:\n{self.text(name)}"
            assert self.procs[name].poll() is None, f"{name} exited:\n{self.text(name)}"
            time.sleep(0.05)

    def wait_exit(self, names, deadline_s):
        end = time.monotonic() + deadline_s
        for name in names:
            try:
                self.procs[name].wait(max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"{name} still running after {deadline_s} s:\n{self.text(name)}")

    def kill_all(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


@pytest.fixture
def job(tmp_path):
    jobs = []

    def make(specs, workers):
        jobs.append(Job(tmp_path, free_base(workers), specs, workers))
        return jobs[-1]

    yield make
    for j in jobs:
        j.kill_all()


def check_survivors(j, survivors, peer, started):
    j.wait_exit(survivors, DEADLINE + 5.0)
    assert time.monotonic() - started < DEADLINE + 5.0
    for name in survivors:
        text = j.text(name)
        assert j.procs[name].returncode == 1, text
        assert re.search(VERDICT.format(peer=peer) + r".*; its last clock was \d+", text), text


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGSTOP])
def test_a_lost_node_stops_every_other_node(job, signum):
    """`-workers 3` layout: node i is worker i and shard i."""
    j = job([("node", i) for i in range(3)], 3)
    j.wait_for_clock("node0", 5)
    os.kill(j.procs["node1"].pid, signum)
    started = time.monotonic()
    check_survivors(j, ["node0", "node2"], 1, started)
    if signum == signal.SIGSTOP:
        assert "no heartbeat" in j.text("node0") + j.text("node2")


@pytest.mark.parametrize("victim", ["server1", "worker1"])
def test_a_lost_server_or_worker_stops_the_rest(job, victim):
    """Two server processes and two worker processes."""
    specs = [("server", 0), ("server", 1), ("worker", 0), ("worker", 1)]
    j = job(specs, 2)
    j.wait_for_clock("worker0", 5)
    os.kill(j.procs[victim].pid, signal.SIGKILL)
    started = time.monotonic()
    survivors = [f"{k}{i}" for k, i in specs if f"{k}{i}" != victim]
    check_survivors(j, survivors, 1, started)
    if victim == "server1":  # the workers saw it themselves; the other server heard from them
        assert re.search(r"server 1 \(tcp://127\.0\.0\.1:\d+\): no heartbeat", j.text("worker0"))
