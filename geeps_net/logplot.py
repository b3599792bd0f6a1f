"""Plot a parsed training log: loss, accuracy and learning rate against iteration, one panel each.

matplotlib is an optional extra (`pip install geeps-net[plot]`); it is imported only here, with the
Agg backend, so plotting works on a machine with no display.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

from geeps_net.errors import GeepsError
from geeps_net.fileio import write_atomic
from geeps_net.logparse import FIXED_COLUMNS, ParsedLog

# Panel title -> test on an output name; an output goes to the first panel that takes it.
PANELS = (
    ("loss", lambda name: "loss" in name.lower()),
    ("accuracy", lambda name: "acc" in name.lower()),
    ("other outputs", lambda name: True),
)


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise GeepsError(
            "plotting needs matplotlib: pip install 'geeps-net[plot]' (or pip install matplotlib)"
        ) from None
    matplotlib.use("Agg")  # no display needed; must precede the pyplot import
    import matplotlib.pyplot as plt

    return plt


def _series(parsed: ParsedLog) -> dict[str, list[tuple[str, str, list, list]]]:
    """Panel title -> [(output name, kind, iterations, values)] for every output of the log."""
    panels: dict[str, list] = {title: [] for title, _ in PANELS}
    for kind in ("train", "test"):
        rows = getattr(parsed, kind)
        for name in parsed.columns(kind)[len(FIXED_COLUMNS) :]:
            points = [(r["NumIters"], r[name]) for r in rows if name in r]
            title = next(t for t, takes in PANELS if takes(name))
            xs, ys = zip(*points) if points else ((), ())
            panels[title].append((name, kind, list(xs), list(ys)))
    return {title: series for title, series in panels.items() if series}


def _rates(parsed: ParsedLog) -> tuple[list, list]:
    """(iterations, learning rates) as the `lr =` lines logged them."""
    points = [(it, lr) for it, lr in parsed.rates if not math.isnan(lr)]
    xs, ys = zip(*points) if points else ((), ())
    return list(xs), list(ys)


def plot_log(parsed: ParsedLog, out_path: str | Path, title: str = "") -> Path:
    """Draw the log's curves into `out_path` (.png, .svg or .pdf by extension), atomically."""
    out_path = Path(out_path)
    fmt = out_path.suffix.lstrip(".").lower() or "png"
    if fmt not in ("png", "svg", "pdf"):
        raise GeepsError(f"{out_path}: plot_log writes .png, .svg or .pdf, not .{fmt}")
    if not parsed.train and not parsed.test:
        raise GeepsError("the log has no train or test outputs to plot (no 'net output' lines)")
    plt = _pyplot()
    panels = _series(parsed)
    n = len(panels) + 1
    fig, axes = plt.subplots(n, 1, figsize=(8, 2.8 * n), sharex=True, squeeze=False)
    axes = axes[:, 0]
    for ax, (panel, series) in zip(axes, panels.items()):
        colors = {}  # one colour per output name: its train and test curves match
        for name, kind, xs, ys in series:
            color = colors.setdefault(name, f"C{len(colors)}")
            style = {"marker": "o", "linestyle": "--"} if kind == "test" else {"linewidth": 1}
            ax.plot(xs, ys, label=f"{kind} {name}", color=color, **style)
        ax.set_ylabel(panel)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    _plot_rates(axes[-1], parsed)
    axes[-1].set_xlabel("iteration")
    if title:
        axes[0].set_title(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=100)
    plt.close(fig)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out_path, buffer.getvalue())
    return out_path


def _plot_rates(ax, parsed: ParsedLog) -> None:
    xs, ys = _rates(parsed)
    ax.plot(xs, ys, color="tab:green", linewidth=1, marker="." if len(xs) < 50 else None)
    if ys and min(ys) > 0 and max(ys) > 10 * min(ys):
        ax.set_yscale("log")  # step and exp policies span decades
    ax.set_ylabel("learning rate")
    ax.grid(True, alpha=0.3)
