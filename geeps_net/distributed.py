"""The multi-worker `train` (DESIGN §5-6): one process per worker, each hosting its server shards.

    geeps-net train -solver S -workers 4                    # launch 4 local workers, supervise
    geeps-net train -solver S -workers 4 -worker_id 2       # one of them (what the launcher runs)
    geeps-net train -solver S -machinefile hosts -worker_id 2
    mpirun -np 4 geeps-net train -solver S                  # rank and size from the environment

Worker i reads data shard (i, N); worker 0 alone writes initial values, tests and snapshots (after
waiting for every worker's updates, PsTrainer.settle). With update_rule SERVER the shards run the
solver (ServerSideRule) and workers push mean gradients. The first failure anywhere ends every
process with status 1 and one line naming the lost peer (ps/cluster.py's FailStop).
"""

from __future__ import annotations

import logging
import os
import re
import sys

import numpy
import zmq

from geeps_net import checkpoint
from geeps_net.errors import GeepsError, PsConfigError, PsError
from geeps_net.ps import cluster
from geeps_net.ps.peer import HWM, root_of, silence_s
from geeps_net.ps.remote import RemoteShards, ShardServer
from geeps_net.ps.transport import Options
from geeps_net.solvers import LrState, create_update_rule, learning_rate

log = logging.getLogger("geeps_net.cli")


HISTORY_NAME = re.compile(r"t(?P<t>\d+)_r(?P<r>\d+)_h(?P<k>\d+)")  # ServerSideRule.save's names


class ServerSideRule:
    """update_rule SERVER: the solver's rule run by a shard on its master copy (a ps ServerRule).

    Created before the net exists (the shard needs it at once); `bind` gives it the solver
    parameters, each table's params as (offset, count, lr_mult, decay_mult) and the iteration of
    clock 0. Called as rule(table, range, master, mean_gradient, clock): regularize, compute the
    update, master -= update, with the solver history of the range kept here.
    """

    def __init__(self) -> None:
        self.rule = self.param = self.layout = None
        self.first_iter = 0
        self.history: dict[tuple[int, int], list[numpy.ndarray]] = {}
        self.rates: dict[int, float] = {}
        self._lr_state, self._next = LrState(), 0

    def bind(self, param, layout, first_iter: int = 0, current_step: int = 0) -> None:
        """Solver parameters, table layout (PsTrainer.layout()) and where the run starts."""
        self.rule, self.param, self.layout = create_update_rule(param), param, layout
        self.first_iter = self._next = first_iter
        self._lr_state = LrState(current_step)

    def __call__(self, table: int, rng, master, mean, clock: int) -> None:
        if self.layout is None:
            raise PsError("update_rule SERVER: an update arrived before the solver was built")
        if table >= len(self.layout):  # the job-control table (geeps_net/control.py): no solver
            master += mean
            return
        it = self.first_iter + clock
        rate = self._rate(it)
        key = (table, rng.row_start)
        if key not in self.history:
            self.history[key] = [numpy.zeros_like(master) for _ in range(self.rule.num_history)]
        history = self.history[key]
        if any(h.shape != master.shape for h in history):
            raise PsError(
                f"table {table} rows {rng.row_start}..: the restored history has "
                f"another shape; resume with the snapshot's -num_servers"
            )
        for offset, count, lr_mult, decay_mult in self.layout[table]:
            lo, hi = max(offset, rng.value_start), min(offset + count, rng.value_stop)
            if lo < hi:  # the part of this param inside the range (every rule is elementwise)
                part = slice(lo - rng.value_start, hi - rng.value_start)
                self.rule.update(
                    numpy,
                    it,
                    rate,
                    lr_mult,
                    decay_mult,
                    master[part],
                    mean[part],
                    [h[part] for h in history],
                    then="subtract",
                )

    def save(self, path: str) -> None:
        """The history of the ranges served here, as `t<table>_r<row>_h<k>` arrays (.npz)."""
        arrays = {
            f"t{table}_r{row}_h{k}": h
            for (table, row), history in self.history.items()
            for k, h in enumerate(history)
        }
        checkpoint.write_arrays(path, arrays)

    def load(self, path: str) -> None:
        """Put back what `save` wrote (before the first update arrives)."""
        n, history = self.rule.num_history, {}
        for name, values in checkpoint.read_arrays(path).items():
            m = HISTORY_NAME.fullmatch(name)
            if m is None or int(m["k"]) >= n:
                history = None
                break
            history.setdefault((int(m["t"]), int(m["r"])), [None] * n)[int(m["k"])] = values
        if history is None or any(h is None for entry in history.values() for h in entry):
            raise PsError(f"{path}: not the history of a {self.param.type or 'SGD'} solver")
        self.history = history

    def _rate(self, it: int) -> float:
        """learning_rate in iteration order (multistep keeps state), once per iteration."""
        while self._next <= it:
            self.rates[self._next] = learning_rate(self.param, self._next, self._lr_state)
            self.rates.pop(self._next - 1000, None)
            self._next += 1
        return self.rates[it]


def resolve(args, config):
    """The Role of this process (cluster.resolve_role), None for a one-process run."""
    role = cluster.resolve_role(args.workers, args.worker_id, args.machinefile)
    if role is not None and config is None:
        raise PsConfigError("-no_ps trains in one process; drop -workers/-machinefile")
    return role


def with_servers(config, role, workers: int, num_servers_given: bool):
    """The config of a multi-worker job: one server shard per worker unless set explicitly."""
    if role is None or num_servers_given or config.num_servers != 1:
        return config
    return config.overrides(num_servers=role.num_workers if role.num_workers else workers)


def launch(args, config) -> int:
    """`-workers N`: run N workers of this command on this machine and supervise them."""
    n = args.workers
    argv = list(getattr(args, "argv", None) or sys.argv[1:])
    count = config.num_servers * config.num_channels
    base = config.base_port
    if args.base_port is None:  # the default: move on if another job holds it
        base = cluster.free_base_port(cluster.LOOPBACK_HOST, count, config.base_port)
    elif not all(cluster.port_free(cluster.LOOPBACK_HOST, p) for p in range(base, base + count)):
        raise PsConfigError(f"-base_port {base}: ports {base}..{base + count - 1} are not all free")
    if base != config.base_port:
        log.info("ports %d.. are taken: using -base_port %d", config.base_port, base)
    command = [sys.executable, "-m", "geeps_net", *argv, "-base_port", str(base)]
    command += ["-num_servers", str(config.num_servers)]
    commands = [[*command, "-worker_id", str(i)] for i in range(n)]
    env = worker_env(n)
    log.info(
        "launching %d workers (servers on ports %d..%d, %s BLAS/OpenMP threads each)",
        n,
        base,
        base + count - 1,
        env["OMP_NUM_THREADS"],
    )
    code = cluster.supervise(commands, grace_s=config.deadline_s + 2.0, env=env)
    if code:
        raise PsError(f"{n} workers: a worker failed (see above)")
    return 0


THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def worker_env(n: int) -> dict:
    """The environment of `n` local workers: unless the user chose, the cores are shared out
    (BLAS pools of all workers spinning on the same cores are many times slower)."""
    env = dict(os.environ)
    threads = env.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // n))
    for name in THREAD_VARIABLES:
        env.setdefault(name, threads)
    return env


def run_worker(args, role, config, xp, solve) -> int:
    """Be worker role.worker_id: host its shards, connect to every shard, train, shut down.

    `solve(factory, data_shard, is_root, prepare)` builds the Solver and trains (commands.py)."""
    from geeps_net.cli import setup_logging
    from geeps_net.worker import ps_trainer_factory

    i, n = role.worker_id, role.num_workers
    setup_logging(args.debug, prefix=f"[worker {i}] ")
    log.info(
        "worker %d of %d (%s); PS shards %s; %s rule, slack %d; peers silent for %.3g s are lost",
        i,
        n,
        role.source,
        role.shards(config) or "none",
        config.update_rule,
        config.slack,
        silence_s(config),
    )
    failstop = cluster.FailStop(f"geeps-net train [worker {i}]")
    rule = ServerSideRule() if config.update_rule == "SERVER" else None
    servers, components = [], []  # the shards we host; those and our RemoteShards
    ctx = zmq.Context()  # shared: our client reaches our own shards over inproc://
    try:
        servers = start_servers(role, config, rule, ctx)
        components += servers
        failstop.watch(*servers)
        keys = cluster.curve_keys(config, server=False)
        options = Options(heartbeat_s=config.heartbeat_s, hwm=HWM, curve=keys)
        urls = role.server_urls(config, inproc=True)
        shards = RemoteShards(config, i, n, urls, options=options, ctx=ctx)
        components.append(shards)
        failstop.watch(shards)
    except BaseException as e:
        _abort(failstop, components, e, i)
        raise

    def prepare(solver, resume: str | None) -> None:
        if rule is None:
            return
        trainer, state = solver.trainer, solver.lr_state
        rule.bind(solver.param, trainer.layout(), solver.iter, state.current_step)
        if resume:  # the history of our shards, saved with this worker's part of the snapshot
            rule.load(checkpoint.worker_state_path(resume, i) + checkpoint.SERVER_STATE)
        solver.snapshot_hooks.append(lambda state: rule.save(state + checkpoint.SERVER_STATE))

    factory = ps_trainer_factory(config, xp=xp, worker_id=i, num_workers=n, shards=shards)
    try:
        solve(factory, data_shard=(i, n), is_root=i == 0, prepare=prepare)
    except BaseException as e:
        _abort(failstop, components, e, i)
        raise
    shards.close()  # SHUTDOWN after the last updates (the solver closed its client)
    for server in servers:
        server.join()  # until every worker left
    ctx.term()  # every socket is closed by now: waits only for their linger
    return 0


def start_servers(role, config, rule, ctx=None) -> list[ShardServer]:
    """Start the shards this worker hosts, bound as Role.bind_urls says; given the zmq.Context
    of this process's client, also at inproc:// URLs (Role.server_urls(inproc=True))."""
    keys = cluster.curve_keys(config, server=True)
    servers = []
    for shard in role.shards(config):
        # Beyond loopback without keys only when asked for with -bind (the endpoint then warns):
        # a machine file of remote hosts alone is not consent to unauthenticated peers.
        insecure = config.bind != cluster.DEFAULT_BIND
        options = Options(
            heartbeat_s=config.heartbeat_s,
            hwm=HWM,
            strict=False,
            curve=keys,
            allow_insecure=insecure,
        )
        server = ShardServer(
            config,
            shard,
            role.num_workers,
            role.bind_urls(config, shard),
            server_rule=rule,
            addresses=role.addresses(config),
            options=options,
            ctx=ctx,
            inproc=ctx is not None,
        )
        servers.append(server.start())
    return servers


def _abort(failstop, components, error: BaseException, worker: int) -> None:
    """The main thread failed (or was interrupted): tell every peer, then let the error go on."""
    failstop.disarm()
    who = f"worker {worker}"
    reason = root_of(error, who) if isinstance(error, GeepsError) else f"{who} stopped: {error!r}"
    for component in components:
        component.abort(reason)
