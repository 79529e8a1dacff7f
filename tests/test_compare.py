"""``lrctl compare`` in-process: plans side by side, and a plan that diverges."""

from __future__ import annotations

import pytest

from tests.conftest import read_scalars


def test_compare_keeps_a_plan_that_diverges_in_the_table(tmp_path, capsys):
    from lrctl.cli import main

    code = main(["compare", "--plans", "2@1", "2@0.01", "--seeds", "24", "--name", "div",
                 "--runs-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "[1/2] 2@1 seed 24: diverged: loss became " in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith("2@")}
    assert rows["2@1"] == ["diverged"] * 3
    final_train = float(rows["2@0.01"][0])
    assert final_train == pytest.approx(read_scalars(tmp_path / "div" / "2x0.01-s24")["train_mse"][-1][1], rel=1e-4)
    assert "test_mse by epoch" in out  # the chart still draws the plans that trained
