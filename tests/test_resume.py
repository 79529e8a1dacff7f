"""Exact resume: a run killed (SIGKILL) or interrupted (SIGINT) mid-chunk and resumed ends bit-identical
to one that never stopped: weights, optimizer, schedule, history and every TensorBoard scalar."""

from __future__ import annotations

import json
import signal

import pytest

from tests.conftest import assert_states_equal, read_checkpoint, read_scalars, run_main, start_lrctl

PLAN = "25@0.03;20@cyclic 0.001 0.03 period=3;15@exp 0.05 gamma=0.9"
TOTAL = 60


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("ref")
    result = run_main(["--run", "ref", "--plan", PLAN], cwd)
    assert result.returncode == 0, result.stderr
    run = cwd / "runs" / "ref"
    return read_checkpoint(run / "checkpoint.pt"), read_scalars(run), read_scalars(run / "batch")


def _interrupt_at_epoch(cwd, epoch_line: str, sig: int) -> tuple[str, int]:
    """Start the plan, wait (reading its output) until ``epoch_line`` is printed, then send ``sig``."""
    proc = start_lrctl(["--run", "r", "--plan", PLAN, "--save-every", "0.05"], cwd)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(epoch_line):
            proc.send_signal(sig)
            break
    rest = proc.stdout.read()
    proc.wait(timeout=120)
    return "".join(seen) + rest, proc.returncode


def _assert_identical(cwd, reference):
    ref_state, ref_scalars, ref_batch = reference
    run = cwd / "runs" / "r"
    state = read_checkpoint(run / "checkpoint.pt")
    assert state["global_step"] == TOTAL
    assert_states_equal(state, ref_state)
    scalars = read_scalars(run)
    for tag, series in ref_scalars.items():
        assert [s for s, _ in scalars[tag]] == list(range(TOTAL)), tag  # each step exactly once
        assert scalars[tag] == series, tag  # equal floats as TensorBoard shows them
    assert read_scalars(run / "batch") == ref_batch


@pytest.mark.slow
def test_kill_9_mid_chunk_then_resume_is_bit_identical(workdir, reference):
    out, code = _interrupt_at_epoch(workdir, "epoch    33", signal.SIGKILL)
    assert code == -signal.SIGKILL
    run = workdir / "runs" / "r"
    pending = json.loads((run / "pending.json").read_text())
    killed_at = read_checkpoint(run / "checkpoint.pt")["global_step"]
    assert 25 <= killed_at < TOTAL  # the kill landed inside the plan, after the first chunk
    assert pending["chunks"][-1]["start"] + pending["chunks"][-1]["epochs"] == TOTAL
    result = run_main(["resume", "r"], workdir)
    assert result.returncode == 0, result.stderr
    assert "finishing the interrupted work" in result.stdout
    _assert_identical(workdir, reference)
    assert not (run / "pending.json").exists()


@pytest.mark.slow
def test_sigint_during_plan_saves_exits_130_and_resume_is_bit_identical(workdir, reference):
    out, code = _interrupt_at_epoch(workdir, "epoch    30", signal.SIGINT)
    assert code == 130, out
    assert "lrctl resume r" in out
    stopped_at = read_checkpoint(workdir / "runs" / "r" / "checkpoint.pt")["global_step"]
    assert 30 < stopped_at < TOTAL
    result = run_main(["resume", "r"], workdir)
    assert result.returncode == 0, result.stderr
    _assert_identical(workdir, reference)


def test_kill_before_any_checkpoint_leaves_a_resumable_run(workdir):
    """The command is durable before its first epoch: a run with only config + pending resumes."""
    result = run_main(["--run", "r", "--plan", "3@0.03"], workdir)
    assert result.returncode == 0
    reference = read_checkpoint(workdir / "runs" / "r" / "checkpoint.pt")
    run = workdir / "runs" / "r"
    for name in ("checkpoint.pt", "checkpoint.prev.pt", "checkpoint.json"):
        (run / name).unlink()
    (run / "pending.json").write_text(json.dumps({"chunks": [{"start": 0, "epochs": 3, "expr": "0.03"}],
                                                  "source": "plan"}))
    result = run_main(["resume", "r"], workdir)
    assert result.returncode == 0, result.stderr
    assert_states_equal(read_checkpoint(run / "checkpoint.pt"), reference)
    assert [s for s, _ in read_scalars(run)["lr"]] == [0, 1, 2]


def test_repl_asks_to_finish_interrupted_work(workdir):
    run_main(["--run", "r", "--plan", "3@0.03"], workdir)
    run = workdir / "runs" / "r"
    (run / "pending.json").write_text(json.dumps({"chunks": [{"start": 3, "epochs": 4, "expr": "0.01"}],
                                                  "source": "repl"}))
    result = run_main(["--run", "r"], workdir, stdin="y\nn\n")
    assert "Finish the interrupted chunk (4 epochs left)? [y/n] y" in result.stdout
    assert read_checkpoint(run / "checkpoint.pt")["global_step"] == 7
    (run / "pending.json").write_text(json.dumps({"chunks": [{"start": 7, "epochs": 4, "expr": "0.01"}],
                                                  "source": "repl"}))
    result = run_main(["--run", "r"], workdir, stdin="n\nn\n")
    assert read_checkpoint(run / "checkpoint.pt")["global_step"] == 7
    assert not (run / "pending.json").exists()
    assert any(e["event"] == "pending_dropped" for e in map(json.loads, (run / "journal.jsonl").open()))
