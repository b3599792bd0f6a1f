"""Processes for the fault tests: `python -m tests.distributed.roles KIND ID [options]`.

KIND node: worker ID hosting shard ID (the `-workers N` layout); server: shard ID alone; worker:
worker ID alone. Workers run a one-table loop (read, add 1, clock) and print `clock T` after each
iteration; every process runs under cluster.FailStop, as `geeps-net train` does.
"""

import argparse
import logging
import sys
import time

import numpy

from geeps_net.ps import cluster
from geeps_net.ps.client import Client
from geeps_net.ps.config import Config
from geeps_net.ps.remote import RemoteShards, ShardServer


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=["node", "server", "worker"])
    p.add_argument("id", type=int)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--servers", type=int, default=2)
    p.add_argument("--base", type=int, required=True)
    p.add_argument("--deadline", type=float, default=3.0)
    p.add_argument("--heartbeat", type=float, default=0.3)
    p.add_argument("--iters", type=int, default=100000)
    p.add_argument("--pause", type=float, default=0.02)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"{a.kind} {a.id}: %(message)s")
    cfg = Config(
        deadline_s=a.deadline,
        heartbeat_s=a.heartbeat,
        num_servers=a.servers,
        base_port=a.base,
        row_size=16,
    )
    role = cluster.Role(a.id if a.kind != "server" else 0, a.workers, ("127.0.0.1",) * a.workers)
    failstop = cluster.FailStop(f"{a.kind} {a.id}")
    components = []
    if a.kind in ("node", "server"):
        # workers that host no shard have no port to name: their host then
        where = (
            role.addresses(cfg)
            if a.kind == "node"
            else dict.fromkeys(range(a.workers), "127.0.0.1")
        )
        server = ShardServer(cfg, a.id, a.workers, role.bind_urls(cfg, a.id), addresses=where)
        failstop.watch(server.start())
        components.append(server)
    if a.kind in ("node", "worker"):
        shards = RemoteShards(cfg, a.id, a.workers, role.server_urls(cfg))
        failstop.watch(shards)
        work(Client(cfg, shards, worker_id=a.id, num_workers=a.workers), a)
        shards.close()
    for server in components:
        server.join()
    return 0


def work(client, a) -> None:
    table = client.create_table("W", 40)
    if client.worker_id == 0:
        client.write_initial(table, numpy.zeros(40, "float32"))

    def iterate():
        client.read(table)
        client.post_read(table)
        delta = client.pre_update(table)
        if delta is not None:
            delta[...] = 1
        client.update(table)
        client.clock()

    with client.virtual_iteration():
        iterate()
    client.start_iterations()
    for t in range(a.iters):
        iterate()
        print(f"clock {t}", flush=True)
        time.sleep(a.pause)
    client.close()


if __name__ == "__main__":
    sys.exit(main())
