"""Roles and ranks of a distributed job: who is worker i of N, where each server shard listens, and
how a local job is launched, supervised and stopped when one process fails.

    role = resolve_role(workers=2, worker_id=1)        # -workers 2 -worker_id 1: local, loopback
    role = resolve_role(machinefile="hosts.txt", worker_id=3)
    role = resolve_role(env=os.environ)                 # under mpirun / srun
    role.server_urls(config)      # [[url of each channel] of each server shard]
    role.server_urls(config, inproc=True)  # the same, but this worker's own shards via inproc://
    role.shards(config)           # the shards this worker hosts (shard s lives with worker s % N)

Shard s listens on the host of worker s % N at ports base_port + s * num_channels + channel.
A machine file has one host per line (worker i on line i; `host slots=K` or `host:K` stands for K
lines, as in an MPI host file; `#` starts a comment). Servers bind to loopback unless a machine
file or -bind says otherwise.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from geeps_net.errors import PsConfigError
from geeps_net.ps.curve import CurveKeys
from geeps_net.ps.peer import root_of
from geeps_net.ps.transport import LOOPBACK, shard_inproc_urls, tcp_urls

log = logging.getLogger(__name__)

LOOPBACK_HOST = "127.0.0.1"
DEFAULT_BIND = "127.0.0.1"  # Config.bind's default: anything else is an explicit -bind
# launcher, rank and size variables, and the variable saying how many ranks share this node
LAUNCHERS = (
    ("mpirun", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE"),
    ("mpirun", "PMI_RANK", "PMI_SIZE", "MPI_LOCALNRANKS"),
    ("srun", "SLURM_PROCID", "SLURM_NTASKS", None),
)


@dataclass(frozen=True)
class Role:
    """This process: worker `worker_id` of `num_workers`; `hosts[i]` is worker i's host."""

    worker_id: int
    num_workers: int
    hosts: tuple[str, ...]
    source: str = "local"  # local, machinefile, mpirun, srun

    def shards(self, config) -> list[int]:
        """The server shards this worker hosts."""
        return list(range(self.worker_id, config.num_servers, self.num_workers))

    def server_urls(self, config, inproc: bool = False) -> list[list[str]]:
        """Where workers connect: the channel URLs of every shard. inproc=True: this worker's own
        shards at their inproc:// URLs (its client shares their zmq.Context), others over TCP."""
        mine = set(self.shards(config)) if inproc else set()
        return [
            shard_inproc_urls(s, config.num_channels)
            if s in mine
            else self._urls(config, s, self.hosts[s % self.num_workers])
            for s in range(config.num_servers)
        ]

    def bind_urls(self, config, shard: int) -> list[str]:
        """Where this worker's shard binds: loopback, -bind's address, or (machine file with a
        non-loopback host) every interface."""
        return self._urls(config, shard, self.bind_host(config))

    def bind_host(self, config) -> str:
        """Config.bind if given, else loopback for a loopback host, else 0.0.0.0."""
        if config.bind != DEFAULT_BIND:
            return config.bind
        return LOOPBACK_HOST if LOOPBACK.match(self.hosts[self.worker_id]) else "0.0.0.0"

    def addresses(self, config) -> dict[int, str]:
        """How verdicts name each worker: the first URL of a shard it hosts, else its host."""
        urls = self.server_urls(config)
        return {
            w: urls[w][0] if w < config.num_servers else self.hosts[w]
            for w in range(self.num_workers)
        }

    @staticmethod
    def _urls(config, shard: int, host: str) -> list[str]:
        return tcp_urls(host, config.base_port, config.num_channels, shard * config.num_channels)


def read_machinefile(path: str | Path) -> list[str]:
    """One host per worker, in order; `host slots=K` / `host:K` count K times."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise PsConfigError(f"{path}: cannot read the machine file: {e.strerror}") from None
    hosts = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"(\S+?)(?::(\d+))?(?:\s+slots\s*=\s*(\d+))?(?:\s+\S+)*", line)
        if m is None:
            raise PsConfigError(f"{path}:{number}: expected `host`, `host:K` or `host slots=K`")
        count = int(m[2] or m[3] or 1)
        hosts += [m[1]] * count
    if not hosts:
        raise PsConfigError(f"{path}: no hosts in the machine file")
    return hosts


def launcher_rank(env=os.environ) -> tuple[str, int, int, bool] | None:
    """(launcher, rank, size, all ranks on this node) from mpirun's or srun's environment."""
    for name, rank_var, size_var, local_var in LAUNCHERS:
        if rank_var in env and size_var in env:
            rank, size = int(env[rank_var]), int(env[size_var])
            if local_var is not None:
                one_node = env.get(local_var) == env[size_var]
            else:
                one_node = env.get("SLURM_NNODES", env.get("SLURM_JOB_NUM_NODES")) == "1"
            return name, rank, size, one_node
    return None


def slurm_hosts(env=os.environ) -> list[str] | None:
    """Host of each rank under srun (block distribution), from the node list and tasks per node."""
    nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
    tasks = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
    if not nodes or not tasks:
        return None
    counts = []
    for part in tasks.split(","):  # "2(x3),1" = 2, 2, 2, 1
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if m is None:
            return None
        counts += [int(m[1])] * int(m[2] or 1)
    names = expand_hostlist(nodes)
    if len(names) != len(counts):
        return None
    return [name for name, count in zip(names, counts) for _ in range(count)]


def expand_hostlist(text: str) -> list[str]:
    """SLURM's compressed host list: "gpu[01-03,7],login1" -> gpu01 gpu02 gpu03 gpu7 login1."""
    hosts = []
    for m in re.finditer(r"([^,\[]+)(?:\[([^\]]+)\])?([^,]*)", text):
        prefix, spec, suffix = m[1], m[2], m[3]
        if spec is None:
            hosts.append(prefix + suffix)
            continue
        for item in spec.split(","):
            lo, _, hi = item.partition("-")
            for n in range(int(lo), int(hi or lo) + 1):
                hosts.append(f"{prefix}{n:0{len(lo)}d}{suffix}")
    return hosts


def resolve_role(
    workers: int = 1, worker_id: int | None = None, machinefile: str = "", env=os.environ
) -> Role | None:
    """This process's Role; None for a single-process job; LAUNCH for `-workers N` alone."""
    launcher = launcher_rank(env)
    if machinefile:
        hosts = read_machinefile(machinefile)
        if worker_id is None and launcher is not None:
            worker_id = launcher[1]
            if launcher[2] != len(hosts):
                raise PsConfigError(f"{machinefile}: {len(hosts)} hosts for {launcher[2]} ranks")
        if worker_id is None:
            raise PsConfigError(f"{machinefile}: give -worker_id (this process's line, from 0)")
        return _role(worker_id, hosts, "machinefile", workers)
    if launcher is not None and launcher[2] > 1:
        name, rank, size, one_node = launcher
        hosts = [LOOPBACK_HOST] * size if one_node else slurm_hosts(env)
        if hosts is None or len(hosts) != size:
            raise PsConfigError(
                f"{name}: {size} ranks on several nodes; give -machinefile "
                "(one host per rank, rank i on line i)"
            )
        return _role(rank, hosts, name, workers)
    if workers > 1:
        if worker_id is None:
            return LAUNCH
        return _role(worker_id, [LOOPBACK_HOST] * workers, "local", workers)
    if worker_id not in (None, 0):
        raise PsConfigError(f"-worker_id {worker_id} needs -workers N or -machinefile F")
    return None


def _role(worker_id: int, hosts: list[str], source: str, workers: int) -> Role:
    if workers > 1 and workers != len(hosts):
        raise PsConfigError(f"-workers {workers}, but the {source} names {len(hosts)} workers")
    if not 0 <= worker_id < len(hosts):
        raise PsConfigError(f"worker id {worker_id} is not in 0..{len(hosts) - 1}")
    return Role(worker_id, len(hosts), tuple(hosts), source)


LAUNCH = Role(-1, 0, (), "launch")  # resolve_role's answer to `-workers N` without -worker_id


def curve_keys(config, server: bool) -> CurveKeys | None:
    """CURVE keys from the config, or None. Servers share one key pair: curve_server_key is its
    public file, the secret next to it (`.key_secret`); they admit the public keys found in the
    directory of curve_public_key. A worker uses curve_secret_key and the server's public key."""
    if not config.curve_server_key:
        return None
    if server:
        return CurveKeys(
            Path(config.curve_server_key + "_secret"),
            authorized_dir=Path(config.curve_public_key).parent,
        )
    return CurveKeys(Path(config.curve_secret_key), Path(config.curve_server_key))


def free_base_port(host: str, count: int, start: int, tries: int = 200) -> int:
    """The first base port >= start whose `count` ports all bind on `host` now."""
    for base in range(start, start + tries * count, count):
        if base + count > 65536:
            break
        if all(port_free(host, port) for port in range(base, base + count)):
            return base
    raise PsConfigError(f"no {count} free ports from {start} on {host}: pass -base_port")


def port_free(host: str, port: int) -> bool:
    """Whether a TCP socket can bind `port` on `host` now."""
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class FailStop:
    """The policy of a training process: the first failure of a watched component (a lost peer,
    an ERROR from a peer) is printed as one line, the other components pass it on to their peers,
    and the process exits with status 1 at once (a thread blocked on the lost peer would
    otherwise wait out its own deadline)."""

    def __init__(self, label: str, exit=os._exit, stream=None) -> None:
        self.label, self._exit, self.stream = label, exit, stream
        self.components: list = []
        self.armed = True
        self._lock = threading.Lock()

    def watch(self, *components) -> None:
        """Fail-stop when one of `components` (ShardServer, RemoteShards) fails."""
        for component in components:
            self.components.append(component)
            component.on_failure(self.fail)

    def disarm(self) -> None:
        """The main thread handles errors itself from now on (it is already unwinding)."""
        self.armed = False

    def fail(self, error: BaseException) -> None:
        """Report `error`, abort the other components, exit(1); only the first call acts."""
        with self._lock:
            if not self.armed:
                return
            self.armed = False
        reason = root_of(error, self.label)  # the lost peer itself, not who passed it on
        print(f"{self.label}: {reason}", file=self.stream or sys.stderr, flush=True)
        for component in self.components:
            if component.error is None:
                component.abort(reason)
        logging.shutdown()
        self._exit(1)


def describe_exit(code: int) -> str:
    """'exit status 3' or 'killed by signal SIGKILL'."""
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


# what the workers act on (stop, snapshot: -sigint_effect, -sighup_effect); worker 0 decides
FORWARDED = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])


def supervise(commands: list[list[str]], grace_s: float, env=None, poll_s: float = 0.05) -> int:
    """Run worker i as commands[i]; 0 when all exit 0. When one exits otherwise, say which
    failed first, give the others `grace_s` to stop on their own (they report their verdicts),
    then terminate them; returns 1. SIGINT, SIGTERM and SIGHUP are passed on to the workers."""
    procs = [subprocess.Popen(cmd, env=env) for cmd in commands]
    for i, proc in enumerate(procs):
        log.info("worker %d: pid %d", i, proc.pid)
    previous = {s: signal.signal(s, _forward(procs)) for s in FORWARDED}
    try:
        return _watch(procs, grace_s, poll_s)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _forward(procs):
    def handle(signum, frame):
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    return handle


def _watch(procs, grace_s: float, poll_s: float) -> int:
    failed, stop_at, killed = None, None, False
    while any(p.poll() is None for p in procs):
        for i, proc in enumerate(procs):
            code = proc.poll()
            if failed is None and code not in (None, 0):
                failed, stop_at = i, time.monotonic() + grace_s
                log.error("worker %d (pid %d) failed first: %s", i, proc.pid, describe_exit(code))
        if stop_at is not None and time.monotonic() > stop_at:
            for i, proc in enumerate(procs):
                if proc.poll() is None:
                    log.error("worker %d (pid %d): still running; stopping it", i, proc.pid)
                    proc.send_signal(signal.SIGKILL if killed else signal.SIGTERM)
            stop_at, killed = time.monotonic() + 2.0, True
        time.sleep(poll_s)
    for i, proc in enumerate(procs):
        if failed is None and proc.returncode != 0:  # the last poll saw it exit
            failed = i
            log.error(
                "worker %d (pid %d) failed first: %s", i, proc.pid, describe_exit(proc.returncode)
            )
    return 0 if failed is None else 1
