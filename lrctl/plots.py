"""Charts of runs: train/test metric and lr against the global epoch, chunk boundaries marked.

In the terminal with plotext (works without a TTY: the chart is a string), or as a PNG with
matplotlib. Data comes from a run's checkpoint (its history and chunk list), read with
``weights_only=True``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RunCurves:
    name: str
    metric: str
    history: list[dict[str, Any]]
    chunks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def steps(self) -> list[int]:
        return [int(h["step"]) for h in self.history]

    def series(self, key: str) -> list[float]:
        return [float(h[key]) for h in self.history]


def load_curves(runs_dir: Path, name: str) -> RunCurves:
    from lrctl.runops import read_frozen_config
    from lrctl.runstore import RunError, RunStore, check_run_name

    group, _, run = name.rpartition("/")  # a run of a compare group: GROUP/RUN, as lrctl runs lists it
    store = RunStore(Path(runs_dir) / check_run_name(group) if group else runs_dir, run)
    if not store.exists:
        raise RunError(f"no run '{name}' in {runs_dir}")
    cfg, _ = read_frozen_config(store)
    state = store.load_checkpoint().state
    return RunCurves(name, cfg.metric, list(state.get("history") or []), list(state.get("chunks") or []))


def plain(chart: str) -> str:
    """plotext ends lines with colour resets even when colourless; pipes and logs want none."""
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", chart)


def _figure():
    """A fresh plotext figure: the module-level one keeps subplots and series between calls (a chart
    after an undo or a ``find`` showed old curves, legends twice and a second lr panel)."""
    from plotext._figure import _figure_class

    figure = _figure_class()
    figure.clear_color()  # plain text: the same chart in a pipe, a log or a terminal
    # The size asked for, not the terminal's: in a pipe plotext assumes 24 lines and squeezed the lr
    # panel to nothing (its labels upside down).
    figure._master._limit_size(False, False)
    return figure


def chart_width(default: int = 100) -> int:
    """The terminal's width (at most 120), or ``default`` where there is none (a pipe, a log)."""
    import shutil

    return max(60, min(120, shutil.get_terminal_size((default, 30)).columns))


def terminal_chart(runs: list[RunCurves], width: int = 100, height: int = 30) -> str:
    """Metric (top) and lr (bottom) against the global epoch; dotted verticals at chunk starts."""
    figure = _figure()
    figure.plotsize(width, height)
    figure.subplots(2, 1)
    top, bottom = figure.subplot(1, 1), figure.subplot(2, 1)
    top_height = int(height * 0.65)
    top.plotsize(width, top_height)
    bottom.plotsize(width, height - top_height)
    for run in runs:
        if not run.history:
            continue
        label = f"{run.name} " if len(runs) > 1 else ""
        top.plot(run.steps, run.series("train"), label=f"{label}train_{run.metric}", marker="braille")
        top.plot(run.steps, run.series("test"), label=f"{label}test_{run.metric}", marker="braille")
        for chunk in run.chunks[1:]:
            top.vline(chunk["start"])
    top.title(" vs ".join(r.name for r in runs) + f" · {runs[0].metric if runs else ''} by global epoch")
    lrs = [lr for run in runs for lr in run.series("lr")]
    for run in runs:
        if run.history:
            bottom.plot(run.steps, run.series("lr"), label=f"{run.name} lr" if len(runs) > 1 else "lr",
                        marker="braille")
    # From 0: a constant lr (one value) would otherwise give plotext an empty range and upside-down labels.
    bottom.ylim(0, (max(lrs, default=0.0) or 1.0) * 1.1)
    bottom.xlabel("global epoch")
    return plain(figure.build())


def figure(runs: list[RunCurves]) -> Any:
    """The curves as a matplotlib Figure (made without pyplot, so no backend is switched): metric on top,
    on a log scale when it is an error, lr below, chunk starts dotted."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        from lrctl.runstore import RunError

        raise RunError("--png and plot() need matplotlib: pip install 'lrctl[png]' (or pip install matplotlib)") \
            from None
    fig = Figure(figsize=(10, 7))
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[2, 1])
    for run in runs:
        if not run.history:
            continue
        label = f"{run.name} " if len(runs) > 1 else ""
        top.plot(run.steps, run.series("train"), label=f"{label}train_{run.metric}")
        top.plot(run.steps, run.series("test"), label=f"{label}test_{run.metric}", linestyle="--")
        bottom.step(run.steps, run.series("lr"), where="post", label=f"{label}lr")
        for chunk in run.chunks[1:]:
            top.axvline(chunk["start"], color="grey", linewidth=0.5, linestyle=":")
            bottom.axvline(chunk["start"], color="grey", linewidth=0.5, linestyle=":")
    top.set_ylabel(runs[0].metric if runs else "")
    if runs and runs[0].metric in ("mse", "mae"):
        top.set_yscale("log")
    bottom.set_ylabel("lr")
    bottom.set_xlabel("global epoch")
    top.legend()
    bottom.legend()
    fig.tight_layout()
    return fig


def png_bytes(runs: list[RunCurves]) -> bytes:
    import io

    buffer = io.BytesIO()
    figure(runs).savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def save_png(runs: list[RunCurves], path: Path) -> None:
    """The figure of :func:`figure` as a PNG file."""
    Path(path).write_bytes(png_bytes(runs))


def lr_chart(lrs: list[float], losses: list[float], marks: dict[str, float], width: int = 100,
             height: int = 22) -> str:
    """Loss against lr (log scale) for the range test, suggestions marked."""
    import math

    plt = _figure()
    plt.plotsize(width, height)
    xs = [math.log10(lr) for lr in lrs]
    label = "loss on fixed training rows"
    # The sweep's last steps may explode (1e20 after a divergence): drawn to scale they would flatten the
    # whole useful curve into one line, so the chart stops at 4x where the sweep started.
    cap = 4 * losses[0] if losses and losses[0] > 0 else math.inf
    if any(v > cap for v in losses):
        losses = [min(v, cap) for v in losses]
        label += f" (clipped at {cap:.3g})"
    plt.plot(xs, losses, marker="braille", label=label)
    for lr in marks.values():
        plt.vline(math.log10(lr))
    plt.title("loss vs lr · verticals: " + ", ".join(f"{name} {lr:.2g}" for name, lr in marks.items()))
    plt.xlabel("log10(lr)")
    return plain(plt.build())
