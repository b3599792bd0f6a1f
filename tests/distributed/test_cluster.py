"""Roles and ranks: machine files, mpirun/srun environments, where shards listen, CURVE key
files, the fail-stop policy and the supervisor of local workers."""

import io
import logging
import sys
import time
from pathlib import Path

import pytest

from geeps_net.errors import PsConfigError, PsError
from geeps_net.ps import cluster
from geeps_net.ps.cluster import LAUNCH, Role, read_machinefile, resolve_role
from geeps_net.ps.config import Config
from geeps_net.ps.peer import RemoteFailure


def test_machinefile_lines_slots_and_comments(tmp_path):
    path = tmp_path / "hosts"
    path.write_text(
        "# the job\nnode1\n\nnode2 slots=2  # two ranks\nnode3:3\n10.0.0.9 max_slots=4\n"
    )
    assert read_machinefile(path) == [
        "node1",
        "node2",
        "node2",
        "node3",
        "node3",
        "node3",
        "10.0.0.9",
    ]
    path.write_text("# nothing\n")
    with pytest.raises(PsConfigError, match=r"hosts: no hosts in the machine file"):
        read_machinefile(path)
    with pytest.raises(PsConfigError, match=r"nope: cannot read the machine file"):
        read_machinefile(tmp_path / "nope")


def test_launcher_environments():
    assert cluster.launcher_rank({}) is None
    ompi = {"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4"}
    assert cluster.launcher_rank(ompi) == ("mpirun", 3, 4, False)
    assert cluster.launcher_rank({**ompi, "OMPI_COMM_WORLD_LOCAL_SIZE": "4"})[3] is True
    pmi = {"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALNRANKS": "2"}
    assert cluster.launcher_rank(pmi) == ("mpirun", 1, 2, True)
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "6", "SLURM_NNODES": "3"}
    assert cluster.launcher_rank(slurm) == ("srun", 5, 6, False)


def test_slurm_host_lists():
    assert cluster.expand_hostlist("gpu[01-03,7],login1,a[9-10]x") == [
        "gpu01",
        "gpu02",
        "gpu03",
        "gpu7",
        "login1",
        "a9x",
        "a10x",
    ]
    env = {"SLURM_JOB_NODELIST": "n[1-2],m", "SLURM_TASKS_PER_NODE": "2(x2),1"}
    assert cluster.slurm_hosts(env) == ["n1", "n1", "n2", "n2", "m"]
    env = {"SLURM_PROCID": "3", "SLURM_NTASKS": "5", "SLURM_NNODES": "3", **env}
    role = resolve_role(env=env)
    assert (role.worker_id, role.num_workers, role.hosts[3], role.source) == (3, 5, "n2", "srun")


def test_roles_from_flags_files_and_launchers(tmp_path):
    assert resolve_role(env={}) is None
    assert resolve_role(workers=3, env={}) is LAUNCH
    role = resolve_role(workers=3, worker_id=2, env={})
    assert role == Role(2, 3, ("127.0.0.1",) * 3, "local")
    hosts = tmp_path / "hosts"
    hosts.write_text("a\nb\nc\n")
    assert resolve_role(machinefile=hosts, worker_id=1, env={}).hosts == ("a", "b", "c")
    ompi = {"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "3"}
    assert resolve_role(machinefile=hosts, env=ompi).worker_id == 2
    local = {**ompi, "OMPI_COMM_WORLD_LOCAL_SIZE": "3"}
    assert resolve_role(env=local) == Role(2, 3, ("127.0.0.1",) * 3, "mpirun")
    problems = [
        (dict(env=ompi), r"mpirun: 3 ranks on several nodes; give -machinefile"),
        (dict(machinefile=hosts, env={}), r"hosts: give -worker_id"),
        (dict(machinefile=hosts, worker_id=3, env={}), r"worker id 3 is not in 0..2"),
        (dict(machinefile=hosts, workers=2, worker_id=0, env={}), r"-workers 2, but the machine"),
        (dict(worker_id=1, env={}), r"-worker_id 1 needs -workers N or -machinefile F"),
        (dict(machinefile=hosts, env={**ompi, "OMPI_COMM_WORLD_SIZE": "4"}), r"3 hosts for 4"),
    ]
    for kwargs, message in problems:
        with pytest.raises(PsConfigError, match=message):
            resolve_role(**kwargs)


def test_where_shards_listen():
    cfg = Config(num_servers=3, num_channels=2, base_port=6000)
    role = Role(0, 2, ("127.0.0.1", "b.example"), "machinefile")
    assert role.shards(cfg) == [0, 2] and Role(1, 2, role.hosts).shards(cfg) == [1]
    assert role.server_urls(cfg) == [
        ["tcp://127.0.0.1:6000", "tcp://127.0.0.1:6001"],
        ["tcp://b.example:6002", "tcp://b.example:6003"],
        ["tcp://127.0.0.1:6004", "tcp://127.0.0.1:6005"],
    ]
    assert role.bind_urls(cfg, 2) == ["tcp://127.0.0.1:6004", "tcp://127.0.0.1:6005"]
    assert role.server_urls(cfg, inproc=True) == [  # its own shards 0 and 2: same process
        ["inproc://geeps-shard0-0", "inproc://geeps-shard0-1"],
        ["tcp://b.example:6002", "tcp://b.example:6003"],
        ["inproc://geeps-shard2-0", "inproc://geeps-shard2-1"],
    ]
    other = Role(1, 2, role.hosts, "machinefile")
    assert other.bind_urls(cfg, 1) == ["tcp://0.0.0.0:6002", "tcp://0.0.0.0:6003"]
    assert other.bind_host(cfg.overrides(bind="10.1.2.3")) == "10.1.2.3"
    assert role.addresses(cfg) == {0: "tcp://127.0.0.1:6000", 1: "tcp://b.example:6002"}
    assert Role(0, 4, ("h",) * 4).addresses(cfg)[3] == "h"  # hosts no shard


def test_curve_key_files():
    cfg = Config(
        curve_server_key="k/server.key",
        curve_public_key="k/workers/w3.key",
        curve_secret_key="k/workers/w3.key_secret",
    )
    server = cluster.curve_keys(cfg, server=True)
    assert server.secret_file == Path("k/server.key_secret")
    assert server.authorized_dir == Path("k/workers")
    worker = cluster.curve_keys(cfg, server=False)
    assert (worker.secret_file, worker.server_public_file) == (
        Path("k/workers/w3.key_secret"),
        Path("k/server.key"),
    )
    assert cluster.curve_keys(Config(), server=True) is None


class FakeComponent:
    def __init__(self, error=None):
        self.error, self.hooks, self.aborted = error, [], None

    def on_failure(self, hook):
        self.hooks.append(hook)

    def abort(self, reason):
        self.aborted = reason


def test_failstop_prints_the_root_cause_aborts_the_rest_and_exits_once():
    exits, out = [], io.StringIO()
    stop = cluster.FailStop("geeps-net train [worker 0]", exit=exits.append, stream=out)
    a, b = FakeComponent(), FakeComponent()
    stop.watch(a, b)
    a.error = PsError("worker 1 (tcp://h:1): no heartbeat for 2.0 s; its last clock was 7")
    relayed = RemoteFailure(str(a.error), "server 1 (tcp://h:1)")
    a.hooks[0](relayed)
    b.hooks[0](PsError("later"))
    assert exits == [1]
    assert out.getvalue() == (
        "geeps-net train [worker 0]: worker 1 (tcp://h:1): no heartbeat for 2.0 s; "
        "its last clock was 7\n"
    )
    assert a.aborted is None and b.aborted.startswith("worker 1 (tcp://h:1)")
    quiet = cluster.FailStop("x", exit=exits.append, stream=out)
    quiet.watch(FakeComponent())
    quiet.disarm()
    quiet.fail(PsError("ignored"))
    assert exits == [1]


def python(code):
    return [sys.executable, "-c", code]


def test_supervise_reports_the_first_failure_and_stops_the_rest(caplog):
    with caplog.at_level(logging.INFO, logger="geeps_net.ps.cluster"):
        start = time.monotonic()
        code = cluster.supervise(
            [python("import time; time.sleep(30)"), python("import sys; sys.exit(3)")],
            grace_s=0.5,
        )
    assert code == 1 and time.monotonic() - start < 10
    text = caplog.text
    assert "worker 1 (pid" in text and "failed first: exit status 3" in text
    assert "worker 0 (pid" in text and "still running; stopping it" in text
    assert cluster.supervise([python("pass"), python("pass")], grace_s=0.5) == 0


def test_exit_descriptions():
    assert cluster.describe_exit(3) == "exit status 3"
    assert cluster.describe_exit(-9) == "killed by signal SIGKILL"
    assert cluster.describe_exit(-99) == "killed by signal 99"


def test_free_base_port_skips_taken_ports():
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        base = cluster.free_base_port("127.0.0.1", 2, port)
        assert base >= port + 2
