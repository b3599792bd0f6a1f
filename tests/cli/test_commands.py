"""The verbs end to end in-process: train, test and time with and without the PS; trace files."""

import json
import re
import sys
from pathlib import Path

import pytest

from geeps_net import snapshot
from geeps_net.cli import main
from tests.cli.conftest import NET, SOLVER

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import trace_summary  # noqa: E402


def test_train_then_test_through_ps_and_resident_agree(run, tmp_path):
    status, text = run("train", "-solver", SOLVER)
    assert status == 0 and "Optimization Done." in text and "PS plan" in text
    model = tmp_path / "snap" / "tiny_iter_2.caffemodel"
    assert model.exists()
    results = []
    for extra in ([], ["-no_ps"]):
        status, text = run(
            "test", "-model", NET, "-weights", str(model), "-iterations", "3", *extra
        )
        assert status == 0
        results.append([line.split("] ", 1)[1] for line in text.splitlines() if "loss = " in line])
    assert results[0] == results[1] and results[0]


@pytest.mark.parametrize(
    "extra", [[], ["-no_ps"], ["-level", "1", "-stage", "a,b"]], ids=["ps", "resident", "state"]
)
def test_time_prints_caffe_table(run, extra):
    status, text = run("time", "-model", NET, "-iterations", "2", *extra)
    assert status == 0
    assert "ip\tforward:" in text and "Average Forward-Backward" in text


def test_trace_file_is_chrome_json(run, tmp_path):
    """At the smallest budget (read off the planner's refusal of 1 byte) the trace shows compute,
    copies both ways, waits and pushes, per thread; tools/trace_summary.py reads it."""
    status, text = run("time", "-model", NET, "-iterations", "1", "-gpu_memory_capacity", "1")
    smallest = re.search(r"smallest budget that works is (\d+) B", text)
    assert status == 1 and smallest, text
    trace = tmp_path / "run.trace.json"
    budget = ["-gpu_memory_capacity", smallest.group(1), "-trace_file", str(trace)]
    status, _ = run("time", "-model", NET, "-iterations", "2", *budget)
    assert status == 0
    events = json.loads(trace.read_text())["traceEvents"]
    assert {"forward ip", "backward ip", "forward loss"} <= {e["name"] for e in events}
    assert {"compute", "copy_in", "copy_out", "push"} <= {e["cat"] for e in events}
    assert {"MainThread", "ps-allocator", "ps-reclaimer"} <= {e["tid"] for e in events}
    assert all(e["ph"] == "X" and e["dur"] >= 0 for e in events)
    summary = trace_summary.summarise(events)
    assert 0.0 <= summary["stall_fraction"] < 1.0


def test_keygen_lays_out_keys_the_ps_reads(run, tmp_path):
    from geeps_net.ps.cluster import curve_keys
    from geeps_net.ps.config import Config

    status, text = run("keygen", str(tmp_path / "keys"), "-workers", "2")
    assert status == 0 and "worker 1: curve_server_key" in text
    keys = tmp_path / "keys"
    assert (keys / "server.key").exists() and (keys / "server.key_secret").exists()
    assert sorted(p.name for p in (keys / "workers").iterdir()) == [
        "worker0.key", "worker0.key_secret", "worker1.key", "worker1.key_secret",
    ]  # fmt: skip
    config = Config(
        curve_server_key=str(keys / "server.key"),
        curve_public_key=str(keys / "workers/worker1.key"),
        curve_secret_key=str(keys / "workers/worker1.key_secret"),
    )
    assert curve_keys(config, server=True).authorized_dir == keys / "workers"
    assert curve_keys(config, server=False).secret_file == keys / "workers/worker1.key_secret"


def test_gpu_flag_without_a_gpu_is_one_line(run):
    from geeps_net.backend import gpu_available

    if gpu_available():
        pytest.skip("a GPU is present: -gpu 0 is valid here")
    status, text = run("time", "-model", NET, "-gpu", "0")
    assert status == 1
    assert text.strip().splitlines()[-1] == (
        "geeps-net time: -gpu 0: CuPy with a CUDA device is not available here"
    )


def test_ps_flags_show_their_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "-h"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the help
    assert "their meanings: docs/ps_config.md" in text
    for shown in ("--slack V default 0", "--update_rule {SUM,AVERAGE,SERVER} default SUM",
                  "--read_my_writes V default true", "--deadline_s V default 60",
                  "--trace_file V default (none)", "--bind V default 127.0.0.1"):  # fmt: skip
        assert shown in text


def test_train_level_and_stage_pick_the_train_net(run, tmp_path):
    """-level and -stage set the train net's NetState, as `caffe train` does: the layers they
    include are the ones whose weights the snapshot holds."""
    net = (
        Path(NET)
        .read_text()
        .replace(
            'layer {\n  name: "loss"',
            'layer { name: "extra" type: "InnerProduct" bottom: "ip" top: "ip2"\n'
            '  include { stage: "wide" min_level: 2 }\n'
            '  inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }\n'
            'layer {\n  name: "loss"',
        )
    )
    (tmp_path / "net.prototxt").write_text(net)
    solver = Path(SOLVER).read_text().replace('"tiny_net.prototxt"', '"net.prototxt"')
    (tmp_path / "solver.prototxt").write_text(solver)
    for argv, has_extra in (([], False), (["-stage", "wide"], False),
                            (["-stage", "x,wide", "-level", "2"], True)):  # fmt: skip
        status, text = run("train", "-solver", "solver.prototxt", "-no_ps", *argv)
        assert status == 0, text
        weights = snapshot.read_net_weights(tmp_path / "snap" / "tiny_iter_2.caffemodel")
        assert ("extra" in weights) == has_extra, argv
