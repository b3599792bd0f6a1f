"""What a snapshot holds beyond Caffe's two files, and where each worker of a job writes its part.

A snapshot of iteration N is consistent at clock N across the whole job:

    <prefix>_iter_N.caffemodel                 the master copy (worker 0, after every worker's
                                               updates of clocks < N are in: PsTrainer.settle)
    <prefix>_iter_N.solverstate                worker 0's solver history (Caffe's format)
    <prefix>_iter_N.solverstate.run.json       worker 0's data read positions and layer RNGs
    <prefix>_iter_N.worker<i>.solverstate      the same two for worker i > 0
      (+ .run.json)
    <state>.server.npz                         update_rule SERVER: the solver history that the
                                               shards hosted by that worker keep

Every worker stops at the same clock to write (the snapshot iterations are known to all, and with
several workers a snapshot starts with a settle), every file is written to a temporary name and
renamed, and the names carry the iteration, so a crash mid-snapshot leaves the previous one whole.
Resuming reads each worker's own files and refuses a snapshot written by another number of workers
(their data shards and histories would not line up). The engine-state files are JSON and .npz read
without pickle: a snapshot may come from elsewhere.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy

from geeps_net.errors import SolverError
from geeps_net.fileio import write_atomic

RUN_STATE = ".run.json"  # suffix of the engine-state file written beside each .solverstate
SERVER_STATE = ".server.npz"  # suffix of the SERVER-rule history of a worker's shards
SOLVERSTATE = ".solverstate"


def worker_state_path(state: str | Path, worker: int) -> str:
    """Worker `worker`'s .solverstate in the snapshot whose worker-0 file is `state`."""
    state = str(state)
    if worker == 0:
        return state
    cut = state.rfind(SOLVERSTATE)
    if cut < 0:
        return f"{state}.worker{worker}"
    return f"{state[:cut]}.worker{worker}{state[cut:]}"


def run_state(net, iteration: int, losses, workers: int) -> dict:
    """What a .solverstate cannot hold but a bit-identical resume needs: every train-net layer's
    random generator, the data layers' read positions, the loss window and the job's width."""
    layers = {}
    for layer in net.layers:
        if hasattr(layer, "state"):  # data layers: read position + their own generator
            layers[layer.name] = {"data": layer.state()}
        else:
            layers[layer.name] = {"rng": layer.rng.bit_generator.state}
    return {"iter": iteration, "workers": workers, "layers": layers, "smoothed": list(losses)}


def write_run_state(state: str | Path, content: dict) -> None:
    """The run-state file beside `state` (temp file, then rename)."""
    write_atomic(Path(str(state) + RUN_STATE), json.dumps(content).encode())


def read_run_state(state: str | Path, workers: int) -> dict | None:
    """The run-state beside `state`, None if there is none; a snapshot of another number of
    workers is refused naming the file."""
    path = Path(str(state) + RUN_STATE)
    if not path.exists():
        return None
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SolverError(f"{path}: not a run-state file ({e})") from None
    written_by = content.get("workers", 1)
    if written_by != workers:
        raise SolverError(
            f"{path}: written by a {written_by}-worker job; resume it with {written_by} "
            f"worker(s), or start afresh from its .caffemodel with -weights"
        )
    return content


def restore_run_state(net, content: dict) -> list[float]:
    """Put back what `run_state` saved (layers matched by name; others keep theirs); returns the
    loss window."""
    for layer in net.layers:
        entry = content["layers"].get(layer.name)
        if entry is None:
            continue
        if "data" in entry and hasattr(layer, "restore"):
            layer.restore(entry["data"])
        elif "rng" in entry:
            layer.rng.bit_generator.state = entry["rng"]
    return list(content.get("smoothed", []))


def write_arrays(path: str | Path, arrays: dict[str, numpy.ndarray]) -> None:
    """Named arrays as an .npz (temp file, then rename)."""
    buffer = io.BytesIO()
    numpy.savez(buffer, **arrays)
    write_atomic(path, buffer.getvalue())


def read_arrays(path: str | Path) -> dict[str, numpy.ndarray]:
    """The arrays of an .npz written by `write_arrays`; never unpickles."""
    try:
        with numpy.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except FileNotFoundError:
        raise SolverError(f"{path}: no such file (the snapshot is incomplete)") from None
    except (OSError, ValueError) as e:
        raise SolverError(f"{path}: not a snapshot array file ({e})") from None
