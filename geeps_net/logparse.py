"""Training logs (Caffe's glog shape, which ours share) -> train and test rows, as CSV or a plot.

Rows are built the way Caffe's tools/extra/parse_log.py builds them: nothing before the first
`Iteration N` line counts; every `Train net output #k: NAME = V` (or `Test net output`) line adds
column NAME to the row of the last iteration seen (for tests that is the `Iteration N, Testing net`
line above them); each row carries `NumIters`, `Seconds` (glog time of its first output line minus
the time of the `Solving ...` line, or of the first glog line when there is none) and
`LearningRate` (the last `lr = X` seen; rows before the first one take the first known value).

glog writes `<I|W|E|F><MMDD> HH:MM:SS.micro` (older glog) or `<I|...><YYYYMMDD> ...` (glog >= 0.6).
A year-less log takes its year from the caller (the file's modification year, less one per
December-to-January step seen in the log), so a run across New Year still counts forward.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from geeps_net.errors import GeepsError
from geeps_net.fileio import write_atomic

GLOG_TIME = re.compile(r"^[IWEF](\d{8}|\d{4}) (\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?\s")
ITERATION = re.compile(r"Iteration (\d+)")
NUMBER = r"([-+]?(?:nan|inf)|[.\deE+-]+)"  # %g writes nan, inf, -inf (and C++ -nan)
TRAIN_OUTPUT = re.compile(rf"Train net output #(\d+): (\S+) = {NUMBER}")
TEST_OUTPUT = re.compile(rf"Test net output #(\d+): (\S+) = {NUMBER}")
LEARNING_RATE = re.compile(r"lr = ([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)")

FIXED_COLUMNS = ("NumIters", "Seconds", "LearningRate")


@dataclass
class ParsedLog:
    """Train and test rows (each a dict NumIters, Seconds, LearningRate, then one key per output)
    and every (iteration, rate) that an `lr = X` line logged."""

    train: list[dict] = field(default_factory=list)
    test: list[dict] = field(default_factory=list)
    rates: list[tuple[int, float]] = field(default_factory=list)

    def columns(self, kind: str) -> list[str]:
        """Columns of `kind` ("train"/"test"): the fixed three, then outputs in first-seen order."""
        names = list(FIXED_COLUMNS)
        for row in getattr(self, kind):
            names.extend(k for k in row if k not in names)
        return names


def glog_times(lines: list[str], year: int | None = None) -> list[datetime | None]:
    """The timestamp of each line (None for lines that are not glog lines: a dumped prototxt...).

    MMDD stamps take `year` (default: this year) for the last line's year, counted back one per
    step from a later month to an earlier one (a New Year crossed during the run).
    """
    stamps = [GLOG_TIME.match(line) for line in lines]
    months = [int(m.group(1)[-4:-2]) for m in stamps if m and len(m.group(1)) == 4]
    rollovers = sum(1 for a, b in zip(months, months[1:]) if b < a)
    current = (year or datetime.now().year) - rollovers
    last_month, out = 0, []
    for m in stamps:
        if m is None:
            out.append(None)
            continue
        date, hh, mm, ss, frac = m.groups()
        if len(date) == 8:
            y, month, day = int(date[:4]), int(date[4:6]), int(date[6:])
        else:
            month, day = int(date[:2]), int(date[2:])
            if month < last_month:
                current += 1
            y = current
        last_month = month
        micro = int((frac or "0").ljust(6, "0"))
        try:
            out.append(datetime(y, month, day, int(hh), int(mm), int(ss), micro))
        except ValueError:  # a corrupt stamp (Feb 30): skip the line as Caffe's parser does
            out.append(None)
    return out


def _start_time(lines: list[str], times: list[datetime | None]) -> datetime | None:
    """Time of the `Solving <net>` line (Caffe's start), else of the first glog line."""
    for line, t in zip(lines, times):
        if t is not None and "Solving" in line:
            return t
    return next((t for t in times if t is not None), None)


class _RowBuilder:
    """Collects one kind of output (train or test) into rows keyed by iteration."""

    def __init__(self, pattern: re.Pattern) -> None:
        self.pattern, self.rows, self.row = pattern, [], None

    def feed(self, line: str, iteration: int, seconds: float, rate: float) -> None:
        match = self.pattern.search(line)
        if not match:
            return
        name = match.group(2)
        try:
            value = float(match.group(3))
        except ValueError:  # a cut-off line ("loss = -"): skip it, as a malformed line
            return
        if self.row is None or self.row["NumIters"] != iteration or name in self.row:
            self.row = {"NumIters": iteration, "Seconds": seconds, "LearningRate": rate}
            self.rows.append(self.row)
        self.row[name] = value


def parse_log_text(text: str, year: int | None = None) -> ParsedLog:
    """Parse a log's text into train and test rows (see the module docstring for the rules)."""
    lines = text.splitlines()
    times = glog_times(lines, year)
    start = _start_time(lines, times)
    train, test = _RowBuilder(TRAIN_OUTPUT), _RowBuilder(TEST_OUTPUT)
    iteration, rate, rates = None, math.nan, []
    for line, t in zip(lines, times):
        match = ITERATION.search(line)
        if match:
            iteration = int(match.group(1))
        if iteration is None or t is None:
            continue  # before training starts, or not a glog line
        match = LEARNING_RATE.search(line)
        if match:
            rate = float(match.group(1))
            rates.append((iteration, rate))
        seconds = (t - start).total_seconds()
        train.feed(line, iteration, seconds, rate)
        test.feed(line, iteration, seconds, rate)
    parsed = ParsedLog(train.rows, test.rows, rates)
    _fill_initial_rates(parsed.train)
    _fill_initial_rates(parsed.test)
    return parsed


def _fill_initial_rates(rows: list[dict]) -> None:
    """Rows logged before the first `lr =` line take the first rate known (Caffe fixes row 0 so)."""
    known = next((r["LearningRate"] for r in rows if not math.isnan(r["LearningRate"])), None)
    if known is None:
        return
    for row in rows:
        if not math.isnan(row["LearningRate"]):
            break
        row["LearningRate"] = known


def parse_log(path: str | Path) -> ParsedLog:
    """Read and parse a log file; a year-less log is dated by the file's modification year."""
    path = Path(path)
    try:
        text = path.read_text(errors="replace")
        year = datetime.fromtimestamp(path.stat().st_mtime).year
    except OSError as e:
        raise GeepsError(f"{path}: cannot read the log: {e.strerror or e}") from None
    return parse_log_text(text, year)


def rows_to_csv(rows: list[dict], columns: list[str]) -> str:
    """CSV text: a header, then one line per row (blank where a row lacks an output)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_csvs(parsed: ParsedLog, log_path: str | Path, out_dir: str | Path) -> list[Path]:
    """Write `<log name>.train` and `<log name>.test` into `out_dir` (each atomically)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in ("train", "test"):
        target = out_dir / f"{Path(log_path).name}.{kind}"
        text = rows_to_csv(getattr(parsed, kind), parsed.columns(kind))
        write_atomic(target, text.encode())
        written.append(target)
    return written
