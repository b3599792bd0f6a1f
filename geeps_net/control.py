"""Job-wide decisions of a multi-worker run (stop, snapshot), agreed through the parameter server.

A signal reaches each process at a slightly different iteration, and with SSP the workers may be
up to slack + 1 clocks apart, so no worker may act on its own signal: the job would stop at
different clocks and the others would wait for updates that never come. Instead worker 0 decides
(the others only log their signals; `geeps-net train -workers N`, mpirun and srun signal every
process) and writes a target clock S = t + slack + 2 into a small PS table with its update of
clock t. Every worker reads the table each iteration; a read at clock j sees data of age at least
j - slack - 1, so every worker has seen S by clock S - 1 and all act when their clock count
reaches S: the same point of the job, consistent for a snapshot.

The table has one slot per action. A slot holds S times the factor the update rule applies to a
clock's deltas (1/N for AVERAGE and SERVER, 1 for SUM), so `observe` multiplies back; a snapshot
target is subtracted again once reached so that a later request can reuse the slot, and values
at or below the current clock (stale reads of a cleared slot) are ignored.
"""

from __future__ import annotations

import logging

import numpy

log = logging.getLogger(__name__)

ACTIONS = ("stop", "snapshot")


class JobControl:
    """One worker's side of the control table: worker 0's votes, everyone's agreed targets."""

    def __init__(self, worker_id: int, num_workers: int, slack: int, update_rule: str) -> None:
        self.decides = worker_id == 0
        self.slack = slack
        self.scale = 1.0 if update_rule == "SUM" else float(num_workers)
        self.pending: list[str] = []  # worker 0: requested, not yet written
        self.voted: dict[int, int] = {}  # worker 0: slot -> target written and not cleared
        self.targets: dict[int, int] = {}  # slot -> agreed target clock, still ahead

    def request(self, action: str) -> None:
        """Ask for `action` at the earliest clock every worker can agree on (worker 0 only)."""
        if action not in ACTIONS:
            raise ValueError(f"unknown job action {action!r}")
        if not self.decides:
            log.info("%s requested: worker 0 decides for the job; ignored here", action)
        elif action not in self.pending and ACTIONS.index(action) not in self.voted:
            self.pending.append(action)

    def delta(self, clock: int) -> numpy.ndarray:
        """What to add to the table with this worker's update of `clock`."""
        out = numpy.zeros(len(ACTIONS), numpy.float32)
        if not self.decides:
            return out
        for slot, target in list(self.voted.items()):
            if clock == target - 1 and ACTIONS[slot] == "snapshot":
                out[slot] -= target  # everyone knows it by now: free the slot
                del self.voted[slot]
        for action in list(self.pending):
            slot = ACTIONS.index(action)
            if slot not in self.voted and out[slot] == 0:
                self.voted[slot] = clock + self.slack + 2
                out[slot] += self.voted[slot]
                self.pending.remove(action)
                log.info(
                    "%s requested: every worker does it %d iterations from now (slack %d)",
                    action, self.slack + 2, self.slack,
                )  # fmt: skip
        return out

    def observe(self, values, clock: int) -> None:
        """Decode the table as read at `clock` (values at or below it are old news)."""
        for slot, value in enumerate(numpy.asarray(values, numpy.float64)):
            # float32 S / N times N rounds back to S exactly below ~8 million clocks
            target = int(round(value * self.scale))
            if target > clock:
                self.targets[slot] = target

    def due(self, clocks_done: int) -> list[str]:
        """The actions every worker takes now, having completed `clocks_done` clocks."""
        now = [slot for slot, target in self.targets.items() if target == clocks_done]
        for slot in now:
            del self.targets[slot]
        return [ACTIONS[slot] for slot in sorted(now)]
