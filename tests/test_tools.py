"""Seeing what the lr does: find-lr, plot, compare, TensorBoard over HTTP, undo, fork, export."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from lrctl.config import RunConfig
from lrctl.session import RunSession
from tests.conftest import read_checkpoint, read_scalars, run_main, start_lrctl


def _digest(directory) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_find_lr_leaves_the_run_unchanged_and_suggests_a_sane_lr(workdir):
    assert run_main(["--run", "f", "--plan", "1@0.0001"], workdir).returncode == 0
    before = _digest(workdir / "runs" / "f")
    result = run_main(["find-lr", "--run", "f"], workdir)
    assert result.returncode == 0, result.stderr
    assert _digest(workdir / "runs" / "f") == before  # checkpoint, optimizer, step, TensorBoard: byte for byte
    line = next(x for x in result.stdout.splitlines() if x.startswith("suggested lr:"))
    suggestion = float(line.split()[2].rstrip(","))  # "0.049, only as the safe end" where it cannot tell
    assert 0.026 <= suggestion <= 0.1  # 10 epochs there end within ~15% of the best of a 1e-4..1 grid (lrtruth)
    assert "lr_find/loss" in read_scalars(workdir / "runs" / "_lr-find" / "f-e1")


def test_find_at_the_prompt_makes_the_suggestion_the_default(workdir):
    result = run_main(["--run", "p"], workdir, stdin="y\n2\nfind\n\nn\n")
    assert result.returncode == 0, result.stderr
    suggestion = float(next(x for x in result.stdout.splitlines() if x.startswith("suggested lr:")).split()[2]
                       .rstrip(","))
    lrs = [v for _, v in read_scalars(workdir / "runs" / "p")["lr"]]
    assert lrs == pytest.approx([suggestion] * 2, rel=1e-6)


def test_undo_then_another_lr_shows_each_step_once_with_the_new_values(tmp_path):
    session = RunSession.open(tmp_path, "u", RunConfig(), save_every=1e9)
    session.load()
    session.train(5, "0.03")
    assert session.train(5, "0.1").status == "done"
    assert session.undo() == (10, 5)
    session.train(5, "0.01")
    session.close()
    scalars = read_scalars(tmp_path / "u")
    assert [s for s, _ in scalars["lr"]] == list(range(10))
    assert [v for _, v in scalars["lr"]] == pytest.approx([0.03] * 5 + [0.01] * 5)
    assert read_checkpoint(tmp_path / "u" / "checkpoint.pt")["global_step"] == 10


def test_fork_shares_history_up_to_the_fork_and_differs_after(tmp_path):
    session = RunSession.open(tmp_path, "a", RunConfig(), save_every=1e9)
    session.load()
    session.train(4, "0.03")
    forked = session.fork("b")
    forked.train(3, "0.01")
    forked.close()
    session = RunSession.open(tmp_path, "a", RunConfig(), save_every=1e9)
    session.load()
    session.train(3, "0.05")
    session.close()
    a, b = read_scalars(tmp_path / "a"), read_scalars(tmp_path / "b")
    assert a["train_mse"][:4] == b["train_mse"][:4]
    assert [s for s, _ in b["train_mse"]] == list(range(7))
    assert a["train_mse"][4:] != b["train_mse"][4:]
    texts = json.dumps([json.loads(line) for line in (tmp_path / "b" / "journal.jsonl").open()])
    assert '"forked"' in texts


def test_fork_at_a_kept_epoch_from_the_command_line(workdir):
    assert run_main(["--run", "src", "--plan", "3@0.03;4@0.01"], workdir).returncode == 0
    result = run_main(["fork", "src", "new", "--at", "3"], workdir)
    assert result.returncode == 0, result.stderr
    assert read_checkpoint(workdir / "runs" / "new" / "checkpoint.pt")["global_step"] == 3
    assert [s for s, _ in read_scalars(workdir / "runs" / "new")["lr"]] == [0, 1, 2]
    assert run_main(["fork", "src", "other", "--at", "5"], workdir).returncode == 1
    result = run_main(["--run", "new", "--plan", "2@0.05"], workdir)
    assert [round(v, 4) for _, v in read_scalars(workdir / "runs" / "new")["lr"]] == [0.03] * 3 + [0.05] * 2


def test_plot_png_and_a_terminal_chart_without_a_tty(workdir):
    assert run_main(["--run", "g", "--plan", "4@0.03;4@0.01"], workdir).returncode == 0
    result = run_main(["plot", "g", "--png", "g.png"], workdir)
    assert result.returncode == 0, result.stderr
    png = (workdir / "g.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert "global epoch" in result.stdout and "\x1b[" not in result.stdout
    from PIL import Image

    with Image.open(workdir / "g.png") as image:
        assert image.size == (1000, 700)


def test_export_csv_and_model(workdir):
    assert run_main(["--run", "e", "--plan", "3@0.03"], workdir).returncode == 0
    assert run_main(["export", "e", "--csv", "e.csv", "--model", "e.pt"], workdir).returncode == 0
    lines = (workdir / "e.csv").read_text().splitlines()
    assert lines[0] == "epoch,lr,train_mse,test_mse" and len(lines) == 4
    import torch

    weights = torch.load(workdir / "e.pt", weights_only=True)
    assert torch.equal(weights["linear1.weight"], read_checkpoint(workdir / "runs" / "e" / "checkpoint.pt")
                       ["model"]["linear1.weight"])


def test_compare_two_seeds_same_start_per_seed_and_table_matches_tensorboard(workdir):
    result = run_main(["compare", "--plans", "4@0.03", "2@0.03;2@0.01", "--seeds", "24,25", "--name", "cmp"],
                       workdir)
    assert result.returncode == 0, result.stderr
    group = workdir / "runs" / "cmp"
    runs = {"4x0.03-s24", "4x0.03-s25", "2x0.03_2x0.01-s24", "2x0.03_2x0.01-s25"}
    assert {p.name for p in group.iterdir() if p.is_dir()} == runs
    import torch

    def initial(run):
        return torch.load(group / run / "kept" / "step-00000000.pt", weights_only=True)["model"]

    for seed in (24, 25):
        a, b = initial(f"4x0.03-s{seed}"), initial(f"2x0.03_2x0.01-s{seed}")
        assert all(torch.equal(a[k], b[k]) for k in a)
    a, b = initial("4x0.03-s24"), initial("4x0.03-s25")
    assert not torch.equal(a["linear1.weight"], b["linear1.weight"])
    row = next(x for x in result.stdout.splitlines() if x.startswith("4@0.03 "))
    final_train, final_test = float(row.split()[1]), float(row.split()[2])
    tb = [read_scalars(group / f"4x0.03-s{s}") for s in (24, 25)]
    assert final_test == pytest.approx(sum(t["test_mse"][-1][1] for t in tb) / 2, rel=1e-4)
    assert final_train == pytest.approx(sum(t["train_mse"][-1][1] for t in tb) / 2, rel=1e-4)


def test_a_real_tensorboard_serves_the_scalars_and_stops(workdir):
    assert run_main(["--run", "web", "--plan", "5@0.03"], workdir).returncode == 0
    from lrctl.tb import TensorBoard

    board = TensorBoard(workdir / "runs")
    url = board.start()
    try:
        with urllib.request.urlopen(url + "data/plugin/scalars/tags", timeout=30) as response:
            tags = json.load(response)
        assert "train_mse" in tags["web"]
        query = urllib.parse.urlencode({"run": "web", "tag": "train_mse"})
        with urllib.request.urlopen(url + f"data/plugin/scalars/scalars?{query}", timeout=30) as response:
            points = json.load(response)
        assert [p[1] for p in points] == [0, 1, 2, 3, 4]
        with urllib.request.urlopen(url + "data/plugin/custom_scalars/layout", timeout=30) as response:
            layout = json.load(response)  # train and test on one chart, the lr beneath
        assert [c["title"] for c in layout["category"]] == ["train_mse and test_mse", "learning rate"]
        process = board.process
    finally:
        board.stop()
    assert process.poll() is not None


def _processes_mentioning(text: str) -> list[int]:
    """Live (non-zombie) processes whose command line contains ``text`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if text in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc to find TensorBoard's process")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_lrctl_tb_ends_with_its_tensorboard_on_a_signal(signum, workdir):
    runs = workdir / f"tb-runs-{signum.name}"  # unique: TensorBoard's command line names it
    proc = start_lrctl(["tb", "--runs-dir", str(runs)], workdir)
    try:
        line = proc.stdout.readline()  # printed once TensorBoard answers
        assert "TensorBoard for" in line, line + proc.stdout.read()
        url = line.split(" at ")[1].split()[0]
        with urllib.request.urlopen(url + "data/environment", timeout=30):
            pass
        children = [pid for pid in _processes_mentioning(str(runs)) if pid != proc.pid]
        assert children  # TensorBoard is running
        proc.send_signal(signum)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        left = _processes_mentioning(str(runs))
        for pid in left:  # a failed test leaves no TensorBoard behind
            os.kill(pid, signal.SIGKILL)
    assert left == []
    with pytest.raises(OSError):
        urllib.request.urlopen(url + "data/environment", timeout=5)


def test_compare_with_one_seed_has_no_spread_column(tmp_path, capsys):
    from lrctl.cli import main

    assert main(["compare", "--plans", "2@0.03", "2@0.01", "--runs-dir", str(tmp_path), "--name", "one"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("plan "))
    assert "spread" not in header and "--seeds 24,25,26 repeats every plan per seed" in out
    assert len(next(line for line in out.splitlines() if line.startswith("2@0.03 ")).split()) == 4
