"""The foreground half of worker.PsTrainer: what the solver reads and writes between
iterations, as Caffe's arrays in net.learnable order (weights for -weights and snapshots, solver
history, Input feeds), against the tables and local data the trainer registered. Calls only the
PS client it is given (worker.py is the engine's one importer of geeps_net.ps).
"""

from __future__ import annotations

import time

import numpy

from geeps_net.errors import DeadlineError, SolverError


class TrainerState:
    """A mixin of PsTrainer: it uses the trainer's client, schedule, net, rule, table_ids,
    local_ids, history_ids, server_side_rule, steps and _started."""

    def layout(self) -> list[list[tuple[int, int, float, float]]]:
        """Per table, its params as (offset, count, lr_mult, decay_mult): what a server-side rule
        needs to update a range of the table."""
        return [
            [(sl.start, p.blob.count, p.lr_mult, p.decay_mult) for p, sl in t.slices]
            for t in self.schedule.tables
        ]

    def settle(self) -> None:
        """With several workers, wait (deadline_s) until every table includes every worker's
        updates through the last iteration done here, so tests and snapshots see the global
        state rather than this worker's view of it."""
        c = self.client
        if c.num_workers == 1 or self.steps == 0:
            return
        end = time.monotonic() + c.config.deadline_s
        for t in self.table_ids:
            c.read_table_host(t)  # installs the pushes received so far
            while c.data_age(t) < self.steps - 1:
                if time.monotonic() > end:
                    raise DeadlineError(
                        f"table {t}: data age {c.data_age(t)} < {self.steps - 1} after "
                        f"{c.config.deadline_s} s: the other workers' last updates never came"
                    )
                time.sleep(0.002)
                c.read_table_host(t)

    def param_arrays(self) -> list[numpy.ndarray]:
        """Current values of every learnable blob, in net.learnable order (foreground reads);
        with several workers, once every worker's updates so far are in (settle)."""
        self.settle()
        values = {}
        for t, table in enumerate(self.schedule.tables):
            flat = self.client.read_table_host(self.table_ids[t])
            for p, sl in table.slices:
                values[id(p.blob)] = flat[sl].reshape(p.blob.shape)
        for key, (blob, kind) in self.schedule.locals.items():
            if kind == "frozen":
                values[id(blob)] = self.client.read_local_host(self.local_ids[key]).reshape(
                    blob.shape
                )
        return [values[id(p.blob)] for p in self.net.learnable]

    def history_arrays(self) -> list[numpy.ndarray]:
        """Caffe's order: history k of every learnable param, k = 0, 1; frozen params' history is
        0."""
        out = []
        for k in range(self.rule.num_history):
            for p in self.net.learnable:
                t = self.schedule.table_of.get(id(p.blob))
                if t is None or self.server_side_rule:  # SERVER: the history is on the servers
                    out.append(numpy.zeros(p.blob.shape, numpy.float32))
                    continue
                table = self.schedule.tables[t]
                _, sl = table.slices[table.params.index(p)]
                flat = self.client.read_local_host(self.history_ids[t, k])
                out.append(flat[sl].reshape(p.blob.shape))
        return out

    def load(self, params=None, history=None) -> None:
        """Set learnable values (None keeps a value) and solver history before the first step."""
        self._before_start("load weights or solver state")
        s, c = self.schedule, self.client
        if params is not None:
            by_blob = {id(p.blob): v for p, v in zip(self.net.learnable, params) if v is not None}
            for t, table in enumerate(s.tables):
                if any(id(p.blob) in by_blob for p in table.params):
                    flat = c.read_table_host(self.table_ids[t])
                    for p, sl in table.slices:
                        if id(p.blob) in by_blob:
                            flat[sl] = by_blob[id(p.blob)].ravel()
                    c.write_initial(self.table_ids[t], flat)
            for key, (blob, kind) in s.locals.items():
                if kind == "frozen" and id(blob) in by_blob:
                    c.write_local(self.local_ids[key], by_blob[id(blob)].astype(blob.dtype).ravel())
        if history is not None and not self.server_side_rule:
            n = len(self.net.learnable)
            for k in range(self.rule.num_history):
                for t, table in enumerate(s.tables):
                    flat = numpy.concatenate(
                        [
                            numpy.ravel(history[k * n + self.net.learnable.index(p)])
                            for p in table.params
                        ]
                    )
                    c.write_local(self.history_ids[t, k], flat.astype(numpy.float32))

    def feed(self, name: str, value) -> None:
        """Set an Input layer's top before the first step (it stays for every iteration)."""
        self._before_start(f'feed "{name}"')
        blob = self.net.blobs[name]
        value = numpy.asarray(value, blob.dtype).ravel()
        self.client.write_local(self.local_ids["data", name], value)

    def _before_start(self, what: str) -> None:
        if self._started:
            raise SolverError(f"{what}: the PS is running; do it before the first iteration")
