"""Summarise a geeps-net Chrome trace (`trace_file` in the PS config): time per category and thread,
and the stall fraction of the training thread (time waiting on the PS over its busy time).

    python tools/trace_summary.py run.trace.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict


def summarise(events: list[dict]) -> dict:
    """{"per_thread": {tid: {category: ms}}, "stall_fraction": f, "events": n}."""
    per_thread: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for e in events:
        if e.get("ph") == "X":
            per_thread[str(e["tid"])][e.get("cat", "?")] += e["dur"] / 1e3
    main = per_thread.get("MainThread", {})
    busy = sum(main.values())
    stall = main.get("wait", 0.0) / busy if busy else 0.0
    return {"per_thread": per_thread, "stall_fraction": stall, "events": len(events)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace", help="trace JSON written by geeps-net (trace_file)")
    args = parser.parse_args(argv)
    try:
        with open(args.trace, encoding="utf-8") as f:
            events = json.load(f)["traceEvents"]
    except (OSError, ValueError, KeyError) as e:
        print(f"trace_summary: {args.trace}: not a Chrome trace ({e})", file=sys.stderr)
        return 1
    summary = summarise(events)
    for tid, categories in sorted(summary["per_thread"].items()):
        parts = ", ".join(f"{cat} {ms:.1f} ms" for cat, ms in sorted(categories.items()))
        print(f"{tid}: {parts}")
    print(f"stall fraction = {summary['stall_fraction']:.3f} ({summary['events']} events)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
