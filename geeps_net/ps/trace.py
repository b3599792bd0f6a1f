"""Chrome trace recording (chrome://tracing, Perfetto): complete events per thread, written as JSON.

    trace = Trace()                # or Trace.from_config(config): None when trace_file is unset
    with trace.span("forward conv1", "compute"):
        ...
    trace.write("run.trace.json")         # temp file, then rename

Events are kept in memory (a few per layer per iteration); `limit` bounds them so a long run cannot
grow without end: the first `limit` events are kept and the count of dropped ones is recorded.
"""

from __future__ import annotations

import json
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path


class Trace:
    """Thread-safe recorder of complete ("X") events with microsecond timestamps."""

    def __init__(self, limit: int = 1_000_000) -> None:
        self.events: list[dict] = []
        self.dropped = 0
        self.limit = limit
        self._lock = threading.Lock()
        self._origin = time.perf_counter()
        self._pid = os.getpid()

    @classmethod
    def from_config(cls, config) -> Trace | None:
        return cls() if getattr(config, "trace_file", "") else None

    def add(self, name: str, category: str, start: float, end: float, **args) -> None:
        """Record an event that ran from `start` to `end` (time.perf_counter() seconds)."""
        event = {
            "name": name, "cat": category, "ph": "X", "pid": self._pid,
            "tid": threading.current_thread().name,
            "ts": round((start - self._origin) * 1e6, 3), "dur": round((end - start) * 1e6, 3),
        }  # fmt: skip
        if args:
            event["args"] = args
        with self._lock:
            if len(self.events) < self.limit:
                self.events.append(event)
            else:
                self.dropped += 1

    @contextmanager
    def span(self, name: str, category: str, **args):
        """Record the time spent in the `with` block."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, category, start, time.perf_counter(), **args)

    def write(self, path) -> None:
        """Write {"traceEvents": [...]} atomically (a reader never sees half a file)."""
        from geeps_net.fileio import write_atomic

        with self._lock:
            doc = {"traceEvents": list(self.events), "otherData": {"dropped": self.dropped}}
        write_atomic(Path(path), json.dumps(doc).encode())


@contextmanager
def maybe_span(trace: Trace | None, name: str, category: str, **args):
    """`trace.span(...)` when tracing, else nothing."""
    if trace is None:
        yield
    else:
        with trace.span(name, category, **args):
            yield
