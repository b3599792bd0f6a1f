"""parse_log / plot_log on a real Caffe log and on a log in geeps-net's own glog shape."""

import logging
import math
from datetime import datetime

import pytest

import geeps_net.tools_cli  # noqa: F401  (registers parse_log, plot_log, draw_net)
from geeps_net.cli import GlogFormatter, main
from geeps_net.logparse import glog_times, parse_log, parse_log_text, write_csvs
from tests.conftest import REFERENCE

CAFFE_LOG = REFERENCE / "logs" / "caffe_lenet_adam_fashion.log"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

needs_caffe_log = pytest.mark.skipif(not CAFFE_LOG.is_file(), reason=f"{CAFFE_LOG} not laid out")


def glog_lines(entries) -> str:
    """Our log text: (local datetime, message) pairs through the CLI's GlogFormatter."""
    formatter = GlogFormatter()
    lines = []
    for when, message in entries:
        record = logging.LogRecord("geeps_net.solver", logging.INFO, "solver.py", 183, message,
                                   None, None)  # fmt: skip
        record.created = when.timestamp()
        lines.append(formatter.format(record))
    return "\n".join(lines) + "\n"


def our_log(start: datetime) -> str:
    """Two displays and two tests in geeps-net's wording, one second apart from `start`."""
    messages = [
        "Solving LeNet",
        "Learning Rate Policy: inv",
        "Iteration 0, Testing net (#0)",
        "    Test net output #0: accuracy = 0.1",
        "    Test net output #1: loss = 2.3 (* 1 = 2.3 loss)",
        "Iteration 0 (0 iter/s, 0.0123s/100 iters), loss = 2.31",
        "    Train net output #0: loss = 2.31 (* 1 = 2.31 loss)",
        "Iteration 0, lr = 0.01",
        "Iteration 100 (50 iter/s, 2s/100 iters), loss = 0.5",
        "    Train net output #0: loss = 0.5 (* 1 = 0.5 loss)",
        "Iteration 100, lr = 0.00992565",
        "Iteration 200, Testing net (#0)",
        "    Test net output #0: accuracy = 0.9",
        "    Test net output #1: loss = 0.3 (* 1 = 0.3 loss)",
        "Optimization Done.",
    ]
    stamp = start.timestamp()
    return glog_lines((datetime.fromtimestamp(stamp + i), m) for i, m in enumerate(messages))


@needs_caffe_log
def test_caffe_log_rows():
    parsed = parse_log(CAFFE_LOG)
    assert parsed.columns("train") == ["NumIters", "Seconds", "LearningRate", "loss"]
    assert parsed.columns("test") == ["NumIters", "Seconds", "LearningRate", "accuracy", "loss"]
    assert [r["NumIters"] for r in parsed.train] == [0, 100, 200, 300, 400]
    assert [r["NumIters"] for r in parsed.test] == [0, 100, 200, 300, 400, 500]
    assert [r["loss"] for r in parsed.train][:2] == [2.37828, 0.567791]
    assert parsed.test[-1]["accuracy"] == 0.8428 and parsed.test[-1]["loss"] == 0.438393
    # Seconds from "Solving LeNet" (21:53:14.706460) to each row's first output line.
    assert parsed.test[0]["Seconds"] == pytest.approx(16.322767 - 14.706460, abs=1e-6)
    assert parsed.test[-1]["Seconds"] == pytest.approx(46.662469 - 14.706460, abs=1e-6)
    # The first rows precede every "lr =" line and take the first rate logged, as Caffe's tool.
    assert all(r["LearningRate"] == 0.001 for r in parsed.train + parsed.test)


@needs_caffe_log
def test_parse_log_verb_writes_csvs(tmp_path, capsys):
    assert main(["parse_log", str(CAFFE_LOG), str(tmp_path / "out")]) == 0
    train = (tmp_path / "out" / f"{CAFFE_LOG.name}.train").read_text().splitlines()
    test = (tmp_path / "out" / f"{CAFFE_LOG.name}.test").read_text().splitlines()
    assert train[0] == "NumIters,Seconds,LearningRate,loss"
    assert train[1].startswith("0,1.650386,0.001,2.37828")
    assert test[0] == "NumIters,Seconds,LearningRate,accuracy,loss" and len(test) == 7
    assert test[-1].startswith("500,") and test[-1].endswith(",0.8428,0.438393")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        f"{CAFFE_LOG.name}.test", f"{CAFFE_LOG.name}.train"]  # no temp files left  # fmt: skip


def test_our_log_rows():
    parsed = parse_log_text(our_log(datetime(2026, 3, 14, 9, 0, 0, 250000)))
    assert [(r["NumIters"], r["loss"]) for r in parsed.train] == [(0, 2.31), (100, 0.5)]
    # the train row at 100 was logged before "Iteration 100, lr =": it carries the rate before
    assert [r["LearningRate"] for r in parsed.train] == [0.01, 0.01]
    assert [(r["NumIters"], r["accuracy"], r["loss"]) for r in parsed.test] == [
        (0, 0.1, 2.3), (200, 0.9, 0.3)]  # fmt: skip
    assert [r["Seconds"] for r in parsed.test] == [3.0, 12.0]
    assert parsed.test[1]["LearningRate"] == 0.00992565


def test_day_and_year_rollover_in_yearless_stamps():
    text = our_log(datetime(2025, 12, 31, 23, 59, 55))  # runs past midnight into 2026
    assert "I1231 23:59:55" in text and "I0101 00:00:" in text
    parsed = parse_log_text(text, year=2026)  # the file was last written in 2026
    assert [r["Seconds"] for r in parsed.test] == [3.0, 12.0]
    assert [r["Seconds"] for r in parsed.train] == [6.0, 9.0]
    times = glog_times(text.splitlines(), year=2026)
    assert times[0] == datetime(2025, 12, 31, 23, 59, 55) and times[-1].year == 2026


def test_full_date_stamps_and_non_glog_lines():
    lines = ["I20261124 21:53:14.700294 16682 caffe.cpp:197] Use CPU.", "layer {", "garbage"]
    assert glog_times(lines) == [datetime(2026, 11, 24, 21, 53, 14, 700294), None, None]


def test_outputs_before_first_iteration_are_ignored():
    text = glog_lines([(datetime(2026, 1, 1, 0, 0, 0), "    Test net output #0: accuracy = 0.5")])
    parsed = parse_log_text(text)
    assert parsed.train == [] and parsed.test == []


def test_missing_log_is_one_line_error(tmp_path, capsys):
    assert main(["parse_log", str(tmp_path / "nope.log"), str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert "nope.log: cannot read the log" in err and "\n" not in err


def test_write_csvs_blank_for_missing_outputs(tmp_path):
    parsed = parse_log_text(our_log(datetime(2026, 5, 1, 8, 0, 0)))
    parsed.test[1].pop("accuracy")
    written = write_csvs(parsed, "run.log", tmp_path)
    assert [p.name for p in written] == ["run.log.train", "run.log.test"]
    assert (tmp_path / "run.log.test").read_text().splitlines()[2].split(",")[3] == ""


def _png_size(data: bytes) -> tuple[int, int]:
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@needs_caffe_log
def test_plot_log_caffe_png(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "plots" / "lenet.png"
    assert main(["plot_log", str(CAFFE_LOG), str(out)]) == 0
    data = out.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    width, height = _png_size(data)
    assert width >= 400 and height > width  # three stacked panels: loss, accuracy, lr


def test_plot_log_our_log_png_and_svg(tmp_path):
    pytest.importorskip("matplotlib")
    log_path = tmp_path / "train.log"
    log_path.write_text(our_log(datetime(2026, 2, 2, 2, 2, 2)))
    assert main(["plot_log", str(log_path), str(tmp_path / "curves.png"), "-title", "ours"]) == 0
    assert (tmp_path / "curves.png").read_bytes().startswith(PNG_SIGNATURE)
    assert main(["plot_log", str(log_path), str(tmp_path / "curves.svg")]) == 0
    assert b"<svg" in (tmp_path / "curves.svg").read_bytes()[:2000]


def test_plot_log_without_matplotlib_says_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)  # import fails
    log_path = tmp_path / "train.log"
    log_path.write_text(our_log(datetime(2026, 2, 2, 2, 2, 2)))
    assert main(["plot_log", str(log_path), str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err.strip()
    assert "needs matplotlib" in err and "geeps-net[plot]" in err and "\n" not in err
    assert not (tmp_path / "x.png").exists()


def test_plot_log_refuses_empty_log(tmp_path, capsys):
    log_path = tmp_path / "empty.log"
    log_path.write_text("nothing here\n")
    assert main(["plot_log", str(log_path), str(tmp_path / "x.png")]) == 1
    assert "no train or test outputs" in capsys.readouterr().err


def test_rates_follow_the_lr_lines():
    parsed = parse_log_text(our_log(datetime(2026, 5, 1, 8, 0, 0)))
    assert parsed.rates == [(0, 0.01), (100, 0.00992565)]


def test_diverged_values_and_cut_lines():
    start = datetime(2026, 5, 1, 8, 0, 0)
    text = glog_lines(
        [(start, "Solving x"), (start, "Iteration 10 (1 iter/s, 1s/10 iters), loss = nan"),
         (start, "    Train net output #0: loss = nan"),
         (start, "    Train net output #1: margin = -inf"),
         (start, "    Train net output #2: cut = -")]
    )  # fmt: skip
    (row,) = parse_log_text(text).train
    assert math.isnan(row["loss"]) and row["margin"] == -math.inf and "cut" not in row
