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


@pytest.mark.parametrize("plan, message", [
    ("2@warmup=2 cos 0.03", "leaves none of the chunk's 2 epochs"),  # was a traceback after the first runs
    ("2@keep", "nothing to keep yet"),  # was said only when its run came, the others already made
])
def test_compare_refuses_a_plan_no_new_run_can_train_before_any_run_is_made(tmp_path, capsys, plan, message):
    from lrctl.cli import main

    code = main(["compare", "--plans", "2@0.03", plan, "--name", "bad", "--runs-dir", str(tmp_path)])
    err = capsys.readouterr()
    assert code == 2
    assert f"lrctl: compare: plan '{plan}': " in err.out + err.err and message in err.out + err.err
    assert not (tmp_path / "bad").exists()


def test_a_member_run_whose_checkpoint_is_damaged_says_so_and_finishes(tmp_path, capsys):
    """A second compare over a member whose latest checkpoint was cut: its fallback is said, with the run."""
    from lrctl.cli import main

    args = ["compare", "--plans", "2@0.03;2@0.01", "--name", "dmg", "--runs-dir", str(tmp_path)]
    assert main(args) == 0
    latest = tmp_path / "dmg" / "2x0.03_2x0.01" / "checkpoint.pt"
    latest.write_bytes(latest.read_bytes()[:100])
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "2x0.03_2x0.01: checkpoint.pt is corrupt or truncated (checksum mismatch)" in out
    assert "2x0.03_2x0.01: falling back to checkpoint.prev.pt" in out
    assert "[1/1] 2@0.03;2@0.01: train_mse" in out  # and it finished the epochs the fallback lost
