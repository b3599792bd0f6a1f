"""The bad-input corpus through the `geeps-net` CLI: every mistake ends in ONE pointing line.

Static cases live in tests/bad_inputs/{net,solver,ps}/, each with a comment saying what is wrong
and `# expect: TEXT` lines the error line must contain (its file:line, layer, field); good/ holds
the valid net and solver they lean on. Binary cases (weights, solver states, LMDBs, IDX files)
are made in tmp_path by test_bad_binaries.py. The contract each case checks is in conftest.py.
Most cases call `cli.main` in-process (fast); test_end_to_end runs `python -m geeps_net`.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from geeps_net.cli import main

from .conftest import CORPUS, DATA_NET, GOOD, NET, SOLVER, datum_lmdb, error_line, files_under


def corpus(kind: str) -> list[Path]:
    return sorted((CORPUS / kind).glob("*.prototxt"))


def expectations(path: Path) -> list[str]:
    """The `# expect: TEXT` lines of a corpus file."""
    lines = path.read_text().splitlines()
    return [line.split(":", 1)[1].strip() for line in lines if line.startswith("# expect:")]


# -- the static corpus ---------------------------------------------------------------------------


def test_corpus_is_large_and_documented():
    cases = corpus("net") + corpus("solver") + corpus("ps")
    assert len(cases) >= 40
    for path in cases:
        first = path.read_text().splitlines()[0]
        assert first.startswith("# ") and not first.startswith("# expect"), path
        assert expectations(path), f"{path}: no `# expect:` line"


@pytest.mark.parametrize("path", corpus("net"), ids=lambda p: p.stem)
def test_bad_net(cli, tmp_path, path):
    (tmp_path / "data" / "fashion-mnist").mkdir(parents=True)  # a folder that is not an LMDB
    before = files_under(tmp_path)
    line = cli("time", "-model", path, "-iterations", "1")
    for text in expectations(path):
        assert text in line
    assert files_under(tmp_path) == before


@pytest.mark.parametrize("path", corpus("solver"), ids=lambda p: p.stem)
def test_bad_solver(cli, tmp_path, path):
    line = cli("train", "-solver", path, "-no_ps")
    for text in expectations(path):
        assert text in line
    assert not list(tmp_path.iterdir())  # no snapshot folder, nothing at all


@pytest.mark.parametrize("path", corpus("ps"), ids=lambda p: p.stem)
def test_bad_ps_config(cli, tmp_path, path):
    line = cli("train", "-solver", GOOD / "tiny_solver.prototxt", "-ps_config", path)
    for text in expectations(path):
        assert text in line
    assert not list(tmp_path.iterdir())


def test_ps_flags_name_themselves(cli):
    line = cli("train", "-solver", GOOD / "tiny_solver.prototxt", "-slack", "-1")
    assert "-slack -1" in line and "slack: must be an integer >= 0" in line


def test_remote_hosts_without_keys_need_an_explicit_bind(cli, tmp_path):
    """A machine file of other hosts binds beyond loopback: without CURVE keys that takes -bind."""
    (tmp_path / "hosts").write_text("10.255.255.1\n10.255.255.2\n")
    solver = GOOD / "tiny_solver.prototxt"
    line = cli("train", "-solver", solver, "-machinefile", "hosts", "-worker_id", "0")
    assert "binding tcp://0.0.0.0:" in line and "without CURVE keys" in line and "-bind" in line


def test_snapshot_prefix_under_a_file(cli, tmp_path):
    """Caught before training, not at the first snapshot: snapshot_prefix inside a file."""
    (tmp_path / "notes.txt").write_text("not a folder\n")
    text = (GOOD / "tiny_solver.prototxt").read_text().replace("tiny_net.prototxt", NET)
    (tmp_path / "solver.prototxt").write_text(text.replace("snap/tiny", "notes.txt/tiny"))
    line = cli("train", "-solver", "solver.prototxt", "-no_ps")
    assert "solver.prototxt: snapshot_prefix notes.txt/tiny" in line and "not a folder" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "solver.prototxt"]


def test_net_given_as_solver(cli):
    line = cli("train", "-solver", GOOD / "tiny_net.prototxt", "-no_ps")
    assert "tiny_net.prototxt:2:" in line and '"name"' in line


# -- missing files ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, named",
    [
        (["train", "-solver", "nowhere/solver.prototxt"], "-solver nowhere/solver.prototxt"),
        (["train", "-solver", SOLVER, "-weights", "w.caffemodel"], "-weights w.caffemodel"),
        (["train", "-solver", SOLVER, "-snapshot", "s.solverstate"], "-snapshot s.solverstate"),
        (["train", "-solver", SOLVER, "-ps_config", "ps.prototxt"], "-ps_config ps.prototxt"),
        (["train", "-solver", SOLVER, "-machinefile", "hosts"], "-machinefile hosts"),
        (["train", "-solver", SOLVER, "-no_ps", "-ps_config", "ps.txt"], "-ps_config ps.txt"),
        (["test", "-model", "net.prototxt"], "-model net.prototxt"),
        (["test", "-model", NET, "-weights", "w.caffemodel"], "-weights w.caffemodel"),
        (["time", "-model", "net.prototxt"], "-model net.prototxt"),
        (["convert_mnist", "img.idx", "lbl.idx", "out_lmdb"], "img.idx"),
        (["compute_image_mean", "train_lmdb", "mean.binaryproto"], "train_lmdb"),
    ],
    ids=lambda v: "_".join(v[:3]) if isinstance(v, list) else None,
)
def test_missing_file(cli, tmp_path, argv, named):
    line = cli(*argv)
    assert named in line and ("no such file" in line.lower()), line
    assert not list(tmp_path.iterdir())


def test_directory_given_for_a_file(cli, tmp_path):
    (tmp_path / "snap").mkdir()
    line = cli("train", "-solver", SOLVER, "-no_ps", "-snapshot", "snap")
    assert "-snapshot snap: is a directory" in line


def test_weights_and_snapshot_together(cli, trained):
    model, state = trained["model"], trained["state"]
    line = cli("train", "-solver", SOLVER, "-no_ps", "-weights", model, "-snapshot", state)
    assert str(model) in line and str(state) in line and "not both" in line


# -- -debug, and end to end in a subprocess -------------------------------------------------------


def test_debug_raises_instead(tmp_path, monkeypatch):
    from geeps_net.errors import NetError

    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        with pytest.raises(NetError, match="Pooling2D"):
            main(["time", "-debug", "-model", str(CORPUS / "net" / "unknown_layer_type.prototxt")])
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def geeps_net(*argv, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen(
        [sys.executable, "-m", "geeps_net", *map(str, argv)],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_end_to_end(tmp_path, trained):
    """A few cases through `python -m geeps_net`, run side by side: status, one line, no trace."""
    datum_lmdb(tmp_path / "db", garbage_at=3)
    (tmp_path / "net.prototxt").write_text(DATA_NET.replace("SOURCE", "db"))
    (tmp_path / "solver.prototxt").write_text(
        (GOOD / "tiny_solver.prototxt").read_text().replace("tiny_net", "net")
    )
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(trained["model"].read_bytes()[:100])
    cases = {  # name -> (argv, text the error line holds)
        "net": (["time", "-model", CORPUS / "net" / "missing_bottom.prototxt"], 'layer "ip2"'),
        "solver": (["train", "-solver", CORPUS / "solver" / "unknown_type.prototxt"], "Adamax"),
        "ps": (["train", "-solver", SOLVER, "-ps_config", CORPUS / "ps" / "syntax_error.prototxt"],
               "syntax_error.prototxt:4:"),
        "weights": (["test", "-model", NET, "-weights", cut], str(cut)),
        "ps_data": (["train", "-solver", "solver.prototxt"], "key '00000003'"),  # PS threads up
        "debug": (["time", "-debug", "-model", CORPUS / "net" / "cyclic_bottom.prototxt"], None),
    }  # fmt: skip
    running = {name: geeps_net(*argv, cwd=tmp_path) for name, (argv, _) in cases.items()}
    for name, process in running.items():
        try:
            _, err = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
        assert process.returncode == 1, f"{name}: status {process.returncode}\n{err}"
        text = cases[name][1]
        if text is None:  # -debug: the traceback is the point
            assert "Traceback" in err and 'bottom "ip2"' in err
            continue
        line = error_line(cases[name][0][0], err, tmp_path)
        assert text in line, f"{name}: {line}"
