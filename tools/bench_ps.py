"""Bandwidth of the PS transport against raw pyzmq: a worker process sends to a server over tcp.

    python tools/bench_ps.py                  # 64 MiB float32 payloads, 10 timed messages each way
    python tools/bench_ps.py --mib 16 --iters 20

raw:  a DEALER sends [small header, array] with copy=False; the ROUTER receives with copy=False.
wire: ClientEndpoint.send(UPDATE) (encode: header + CRC-32C of the payload) -> ServerEndpoint.recv
      (decode: every check and the CRC-32C again), the path PS updates and pushes take.
nocrc: the same with Options(payload_crc=False): the header alone is checksummed.
Bandwidth is measured at the receiver, from the first to the last timed message; a warm-up message
goes first. The ratio wire/raw is what the wire format costs (target >= 0.8).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import numpy
import zmq

from geeps_net.ps.endpoints import ClientEndpoint, ServerEndpoint  # noqa: E402
from geeps_net.ps.transport import Options, tcp_urls
from geeps_net.ps.wire import Header, MsgType, TableShape

ROW_SIZE = 128
KINDS = ("raw", "wire", "nocrc")


def shape_of(mib: int) -> TableShape:
    return TableShape(mib * (1 << 20) // 4, ROW_SIZE)


def send_raw(url: str, mib: int, iters: int) -> None:
    """Worker side of the raw run."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger, sock.identity = 10_000, b"worker-0"  # drain within 10 s at exit, then give up
    sock.connect(url)
    payload = numpy.ones(shape_of(mib).num_values, dtype="float32")
    for _ in range(iters + 1):
        sock.send_multipart([b"h" * 56, payload], copy=False)
    sock.close()
    ctx.term()


def send_wire(url: str, mib: int, iters: int, payload_crc: bool) -> None:
    """Worker side of the wire runs."""
    ctx = zmq.Context()
    shape = shape_of(mib)
    opts = Options(heartbeat_s=1.0, payload_crc=payload_crc)
    client = ClientEndpoint(ctx, 0, [[url]], {0: shape}, opts)
    payload = numpy.ones(shape.num_values, dtype="float32")
    rows = -(-shape.num_values // ROW_SIZE)
    for clock in range(iters + 1):
        header = Header(MsgType.UPDATE, 0, table=0, clock=clock, row_end=rows)
        client.send(0, header, payload, deadline_s=60.0)
    client.close(linger_s=10.0)
    ctx.term()


def run(kind: str, mib: int, iters: int, deadline_s: float) -> float:
    """GB/s of `iters` messages of `mib` MiB for `kind` ("raw", "wire" or "nocrc")."""
    ctx = zmq.Context()
    if kind == "raw":
        sock = ctx.socket(zmq.ROUTER)
        sock.linger = 0
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        recv = lambda: sock.poll(deadline_s * 1000) and sock.recv_multipart(copy=False)  # noqa: E731
        closer, url = sock.close, f"tcp://127.0.0.1:{port}"
    else:
        shape = shape_of(mib)
        opts = Options(heartbeat_s=1.0)
        server = ServerEndpoint(ctx, 0, tcp_urls("127.0.0.1", 0, 1), {0}, {0: shape}, opts)
        recv = lambda: server.recv(deadline_s, "an UPDATE")  # noqa: E731
        closer, url = server.close, server.urls[0]
    command = [sys.executable, __file__, "--send", kind, "--url", url]
    worker = subprocess.Popen(command + ["--mib", str(mib), "--iters", str(iters)])
    times = []
    try:
        for _ in range(iters + 1):
            if not recv():
                raise TimeoutError(f"{kind}: no message in {deadline_s} s")
            times.append(time.perf_counter())
    finally:
        try:
            worker.wait(timeout=deadline_s)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(timeout=deadline_s)
        closer()
        ctx.term()
    return iters * mib * (1 << 20) / (times[-1] - times[0]) / 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64, help="payload size in MiB (float32)")
    parser.add_argument("--iters", type=int, default=10, help="timed messages per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each; the best is kept")
    parser.add_argument("--deadline", type=float, default=60.0, help="longest wait, seconds")
    parser.add_argument("--send", choices=KINDS, help=argparse.SUPPRESS)  # the worker side
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.send:
        if args.send == "raw":
            send_raw(args.url, args.mib, args.iters)
        else:
            send_wire(args.url, args.mib, args.iters, payload_crc=args.send == "wire")
        return 0
    best = dict.fromkeys(KINDS, 0.0)
    for _ in range(args.repeats):
        for kind in best:  # interleaved, so drifting machine load hits both alike
            gbps = run(kind, args.mib, args.iters, args.deadline)
            best[kind] = max(best[kind], gbps)
            print(f"{kind:5s} {args.mib} MiB x {args.iters}: {gbps:6.2f} GB/s", flush=True)
    raw = best["raw"]
    print(f"best: raw {raw:.2f} GB/s", flush=True)
    for kind in KINDS[1:]:
        print(f"best: {kind} {best[kind]:.2f} GB/s, {kind}/raw = {best[kind] / raw:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
