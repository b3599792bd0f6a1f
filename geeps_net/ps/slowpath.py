"""Calls out of the recorded order.

A call that does not match the next recorded op is served synchronously: the reclaimer's queue is
drained so host copies are current, then the data is copied into (or out of) a buffer allocated on
demand outside the arena. Releases of recorded buffers done out of order still go through the
reclaimer, and the recorded release is marked done; a clock reached with recorded calls left over
releases their buffers and finishes their table clocks. One warning per client;
`stats()["out_of_order"]` counts them all.
"""

from __future__ import annotations

import logging

from geeps_net.backend import to_host
from geeps_net.ps.background import Handle, Work
from geeps_net.ps.ops import ACQUIRES

log = logging.getLogger(__name__)


def warn(client, what: str) -> None:
    """Count an out-of-order call; log the first one."""
    client.out_of_order += 1
    if client.out_of_order == 1:
        expected = client.describe(client._cursor)
        log.warning(
            "PS: %s at clock %d does not follow the virtual iteration (expected %s): served on the "
            "slow synchronous path; later ones are counted in stats()['out_of_order']",
            what,
            client._clock,
            expected,
        )


def acquire(client, kind: str, key, start: float, fetch: bool = False):
    """read / pre_update / local_access out of order: a copy in a buffer allocated on demand."""
    warn(client, f"{kind} of {key[0]} {key[1]}")
    client._bg.drain()
    xp, spec, waited = client.xp, client.spec(key), 0.0
    if kind == "read":
        table = client.cache.tables[key[1]]
        deadline = client.config.deadline_s
        waited = client.cache.wait_fresh(table, client._clock, deadline, client._check)
        with client.cache.cond:
            buf = xp.array(table.data)
    elif kind == "pre_update" or not fetch:
        buf = xp.zeros(spec.num_values, dtype=spec.dtype)
    else:
        buf = xp.array(client.locals[key[1]].data)
    return client._hand_out(kind, key, Handle(buf), start, waited)


def release(client, kind: str, key, handle: Handle, keep: bool) -> None:
    """A release that does not match the next recorded op."""
    warn(client, f"{kind} of {key[0]} {key[1]}")
    recorded = handle.op >= 0 and handle.clock == client._clock
    event = client.device.record()
    if recorded:  # a prepared buffer released early: the reclaimer does the work, the op is done
        j = client.plan.pairs[handle.op]
        client._early.add(j)
        counted = client.plan.ops[j].keep
        if kind == "update" or client.plan.pooled[handle.op]:  # resident post_*: nothing to do
            client._bg.submit(
                Work(kind, client._clock, key, handle, event, keep=keep, counted=counted)
            )
        return
    if kind == "update" and not handle.is_log:
        client.cache.add_extra(client.cache.tables[key[1]], handle.buf)
    elif kind == "post_local_access" and keep:
        client._bg.drain()
        data = client.locals[key[1]]
        if data.resident:
            data.data[...] = handle.buf
        else:
            data.data[...] = to_host(handle.buf)
        data.version += 1
    if handle.offset is not None:  # a prepared buffer from an earlier clock
        client._bg.submit(Work("free", client._clock, key, handle, event))


def pass_early(client, j: int) -> None:
    """The cursor passes recorded op `j`, released out of order earlier: finish its table clock."""
    op = client.plan.ops[j]
    if op.kind == "update" and client.plan.last_write[j]:
        client._bg.submit(Work("finish", client._clock, op.key))


def skip_to_clock(client) -> None:
    """clock() with recorded calls not made: free their buffers, finish their table clocks."""
    plan, end = client.plan, len(client.plan.ops) - 1
    warn(client, f"clock after {end - client._cursor} recorded calls were skipped")
    for j in range(client._cursor, end):
        op = plan.ops[j]
        if j in client._early:
            pass_early(client, j)
        elif op.kind in ACQUIRES:
            if plan.pooled[j]:
                handle, _ = client._bg.take(client._clock, j)
                client._bg.submit(Work("free", client._clock, op.key, handle))
        elif op.kind == "update" and plan.last_write[j]:
            client._bg.submit(Work("finish", client._clock, op.key))
        elif op.kind == "post_local_access" and op.keep and plan.pooled[plan.pairs[j]]:
            client._bg.submit(Work("count", client._clock, op.key))  # fetches wait for it
    client._cursor = end
