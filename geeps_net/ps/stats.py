"""The client's counters, gathered for `Client.stats()`.

Keys: iterations, out_of_order (calls off the recorded order), ops ({kind: count, time_s, wait_s}),
wall_s and stall_fraction (time blocked in PS calls / time since start_iterations), read_wait_s,
pre_update_wait_s, local_access_wait_s, bytes_to_device and bytes_to_host (access traffic through
the pool), copy_in_s, copy_out_s, bytes_sent and bytes_received (updates to and pushes from the
shards that crossed the device boundary). Once planned: budget, arena_bytes, resident_bytes,
pool_bytes, peak_bytes, pool_high_water, arena_high_water (resident + most pool bytes in use; never
above the budget), host_store_bytes, predicted_to_device and predicted_to_host (per iteration),
plan (the summary text). Once started: alloc_wait_s (allocator waiting for pool blocks),
prefetch_wait_s (allocator waiting for fresh data), reclaim_s (reclaimer busy), update_s (applying
own updates at table clocks), send_s (in the shards' push_update and clock).
"""

from __future__ import annotations


def collect(client) -> dict:
    """A snapshot of the counters of `client` (plain numbers and the plan summary)."""
    out = {"iterations": client._clock, "out_of_order": client.out_of_order}
    ops = {k: {"count": v[0], "time_s": v[1], "wait_s": v[2]} for k, v in client._calls.items()}
    waited = sum(v["wait_s"] for v in ops.values())
    wall = client._last_clock - client._started
    out.update(ops=ops, wall_s=wall, stall_fraction=waited / wall if wall > 0 else 0.0)
    for kind in ("read", "pre_update", "local_access"):
        out[f"{kind}_wait_s"] = ops.get(kind, {}).get("wait_s", 0.0)
    dev, cache, plan, pool, bg = client.device, client.cache, client.plan, client.pool, client._bg
    out.update(
        bytes_to_device=dev.bytes_to_device,
        bytes_to_host=dev.bytes_to_host,
        copy_in_s=dev.copy_in_s,
        copy_out_s=dev.copy_out_s,
        bytes_sent=cache.bytes_sent,
        bytes_received=cache.bytes_received,
    )
    if plan is not None:
        out.update(
            budget=plan.capacity,
            arena_bytes=plan.arena_size,
            resident_bytes=plan.placement.resident_bytes,
            pool_bytes=plan.pool_size,
            peak_bytes=plan.placement.peak,
            pool_high_water=pool.high_water,
            arena_high_water=plan.placement.resident_bytes + pool.high_water,
            host_store_bytes=client.host.nbytes,
            predicted_to_device=plan.to_device,
            predicted_to_host=plan.to_host,
            plan=plan.summary(),
        )
    if bg is not None:
        out.update(
            alloc_wait_s=pool.wait_s,
            prefetch_wait_s=bg.fresh_wait_s,
            reclaim_s=bg.reclaim_s,
            update_s=bg.update_s,
            send_s=bg.send_s,
        )
    return out
