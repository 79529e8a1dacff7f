"""Terminal charts: the same chart however often and after whatever else was drawn; a real lr panel in a pipe."""

from __future__ import annotations

import re

from lrctl.plots import RunCurves, lr_chart, terminal_chart
from tests.test_repl import _feed


def _curves(epochs: int, chunks=(0,)) -> RunCurves:
    history = [{"step": i, "lr": 0.03, "train": 50.0 - i, "test": 52.0 - i} for i in range(epochs)]
    return RunCurves("r", "mse", history, [{"start": c} for c in chunks])


def _x_label_lines(chart: str) -> int:
    return sum(1 for line in chart.splitlines() if line.strip() == "global epoch")


def _axis_labels(panel: list[str]) -> list[float]:
    return [float(m.group(1)) for line in panel if (m := re.match(r"\s*([-\d.e]+)\s*┤", line))]


def test_a_chart_does_not_carry_earlier_charts(capsys):
    fresh = terminal_chart([_curves(10)])
    terminal_chart([_curves(20, chunks=(0, 10))])
    lr_chart([1e-5, 1e-4, 1e-3], [3.0, 2.0, 5.0], {"valley": 1e-4})
    again = terminal_chart([_curves(10)])
    assert again == fresh
    assert fresh.count("train_mse") == 1 and _x_label_lines(fresh) == 1
    sweep = lr_chart([1e-5, 1e-4, 1e-3], [3.0, 2.0, 5.0], {"valley": 1e-4})
    assert "train_mse" not in sweep and _x_label_lines(sweep) == 0  # no stale run chart inside find's


def test_plot_after_undo_shows_the_run_as_it_is_now(tmp_path):
    reason, session, out = _feed(tmp_path, "y\r4\r0.03\ry\r6\r0.01\rplot\rundo\rplot\rn\r")
    assert session.global_step == 4
    chart = out[out.rindex("r · mse by global epoch"):]
    assert chart.count("train_mse") == 1 and _x_label_lines(chart) == 1
    x_axes = [line for line in chart.splitlines() if re.fullmatch(r"\s*0\.0+\s+[\d.\s]+", line)]
    assert len(x_axes) == 2 and all(float(line.split()[-1]) == 3 for line in x_axes)  # epochs 0..3, not 0..9


def test_plot_into_a_pipe_draws_a_real_lr_panel(tmp_path, capsys):
    from lrctl.cli import main

    _feed(tmp_path, "y\r5\r0.03\rn\r", name="p")
    assert main(["plot", "p", "--runs-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    bottom = lines[max(i for i, line in enumerate(lines) if "┌" in line):]
    labels = _axis_labels(bottom)
    assert len(labels) >= 4 and labels == sorted(labels, reverse=True)  # height, and labels top-down
    assert labels[0] >= 0.03 and labels[-1] == 0.0


def test_the_find_chart_stays_readable_after_the_sweep_explodes():
    """The last steps of a sweep may reach 1e20: the axis stops at 4x the start, not at the explosion."""
    chart = lr_chart([1e-5, 1e-4, 1e-3, 1e-2, 1e-1], [3.0, 2.0, 1.0, 40.0, 1e20], {"suggested": 1e-3})
    labels = _axis_labels(chart.splitlines())
    assert labels and max(labels) <= 12 and "clipped at 12" in chart, chart
    assert lr_chart([1e-5, 1e-4, 1e-3], [3.0, 2.0, 5.0], {"valley": 1e-4}).count("clipped") == 0
