"""The session's chunk loop and its collaborators, in-process, with the in-memory logger and a fake clock.

A session takes a logger factory and a clock: here the TensorBoard side is a
:class:`lrctl.tblog.MemoryLogger` per log directory and time is whatever the test says, so each test
states exactly which epochs are logged, when checkpoints are written and what undo hides.
"""

from __future__ import annotations

import json

import pytest
import torch

from lrctl.config import RunConfig, with_overrides
from lrctl.plan import ChunkRequest, parse_plan, requests
from lrctl.runstore import PENDING_FILE, RunError
from lrctl.schedules import parse
from lrctl.session import Observer, RunSession
from lrctl.tblog import MemoryLogger
from tests.conftest import assert_states_equal, read_checkpoint

NEVER = float("inf")


class Loggers:
    """A logger factory keeping one MemoryLogger per log directory, purges applied as TensorBoard would."""

    def __init__(self) -> None:
        self.made: dict[str, MemoryLogger] = {}

    def __call__(self, logdir, purge_step, layout) -> MemoryLogger:
        logger = self.made.setdefault(logdir.name, MemoryLogger())
        if purge_step is not None:
            logger.purge(purge_step)
        return logger

    def steps(self, run: str, tag: str) -> list[int]:
        return [step for step, _ in self.made[run].scalars[tag]]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def small() -> RunConfig:
    return with_overrides(RunConfig(), ["data.rows=300"])  # 5 batches an epoch, a few ms each


def open_run(tmp_path, loggers: Loggers, name: str = "r", **kw) -> RunSession:
    session = RunSession.open(tmp_path, name, small(), logger_factory=loggers, save_every=kw.pop("save_every", NEVER),
                              **kw)
    session.load()
    return session


def saves(tmp_path, name: str = "r") -> list[dict]:
    lines = (tmp_path / name / "journal.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == "saved"]


def test_each_epoch_is_logged_once_and_undo_hides_the_undone_chunk(tmp_path):
    loggers = Loggers()
    session = open_run(tmp_path, loggers)
    session.run_plan(parse_plan("2@0.03;3@cos 0.02"))
    assert loggers.steps("r", "train_mse") == [0, 1, 2, 3, 4]
    assert session.undo() == (5, 2)
    assert loggers.steps("r", "train_mse") == [0, 1]
    session.train(1, "0.01")
    assert loggers.steps("r", "train_mse") == [0, 1, 2]
    texts = [text for _, text in loggers.made["r"].texts["interventions"]]
    assert "undo: back from epoch 5 to 2" in texts and "chunk: 1 epochs of `0.01`" in texts
    session.close()


def test_per_batch_lrs_go_to_the_batch_log_at_global_batches(tmp_path):
    loggers = Loggers()
    session = open_run(tmp_path, loggers)
    session.train(1, "0.03")
    assert "batch" not in loggers.made  # no per-batch schedule yet: no batch run
    session.train(2, "cyclic 0.001 0.03 period=1")
    assert loggers.steps("batch", "lr_batch") == list(range(5, 15))
    session.close()


def test_checkpoints_follow_the_injected_clock(tmp_path):
    loggers, clock = Loggers(), Clock()
    session = open_run(tmp_path, loggers, save_every=10.0, clock=clock)
    start = len(saves(tmp_path))

    class Tick(Observer):
        def epoch_done(self, record, metric) -> None:
            clock.now += 6.0  # every epoch takes 6 s: a checkpoint every second epoch end

    session.observer = Tick()
    session.train(5, "0.03")
    steps = [e["step"] for e in saves(tmp_path)[start:]]
    # after the 3rd and the 5th epoch by the clock; the chunk's end is that same state: kept, not written again
    assert steps == [3, 5], steps
    assert session.store.kept_steps()[-1] == 5
    session.close()


def test_a_recorded_command_is_trained_from_the_work_in_memory(tmp_path):
    """run_plan hands finish_pending the work it recorded; the file is written through, never read back."""
    loggers = Loggers()
    session = open_run(tmp_path, loggers)
    reads = []
    real = session.store.read_pending
    session.store.read_pending = lambda: reads.append(1) or real()
    outcome = session.run_plan(requests([(2, "0.03"), (1, "exp 0.05 gamma=0.9")]))
    assert outcome.status == "done" and session.global_step == 3
    assert reads == [] and not (tmp_path / "r" / PENDING_FILE).exists()
    session.close()


def test_a_spec_is_used_as_given_and_text_is_parsed_once_at_the_python_edge(tmp_path):
    loggers = Loggers()
    session = open_run(tmp_path, loggers)
    spec = parse("exp 0.05 gamma=0.9")
    session.run_plan([ChunkRequest(2, spec)])
    assert session.trainer.runner.spec is spec  # the very object: nothing parsed it again
    session.close()


@pytest.mark.parametrize("plan, message", [
    ("3@keep", "nothing to keep yet"),
    ("5@warmup=5 cos 0.03", "leaves none of the chunk's 5 epochs"),
])
def test_what_a_run_cannot_do_is_refused_before_anything_is_recorded(tmp_path, plan, message):
    loggers = Loggers()
    session = open_run(tmp_path, loggers)
    request = parse_plan(plan)[0]
    with pytest.raises(ValueError, match=message):
        session.check_expression(request.spec, request.epochs)
    session.close()


def test_an_abandoned_epoch_goes_back_one_epoch_and_its_scalars_vanish(tmp_path):
    loggers = Loggers()
    session = open_run(tmp_path, loggers)
    session.train(2, "0.03")
    before = {k: v.clone() for k, v in session.trainer.model.state_dict().items()}

    class AbandonMidEpoch(Observer):
        wants_batches = True

        def batch_done(self, batch, batches) -> None:
            if batch == 3:
                raise KeyboardInterrupt  # what the second Ctrl-C does

    session.observer = AbandonMidEpoch()
    outcome = session.train(3, "0.01")
    assert outcome.status == "abandoned" and session.global_step == 2
    assert all(torch.equal(before[k], v) for k, v in session.trainer.model.state_dict().items())
    assert loggers.steps("r", "train_mse") == [0, 1]
    session.close()


def test_fork_continues_in_a_new_run_with_the_same_state_and_its_own_log(tmp_path):
    loggers = Loggers()
    session = open_run(tmp_path, loggers)
    session.train(2, "0.03")
    forked = session.fork("f")
    assert forked.store.name == "f" and forked.global_step == 2
    forked.train(1, "0.01")
    forked.close()
    assert loggers.steps("f", "train_mse") == [2]  # the copy's earlier epochs are on disk, not re-logged
    assert read_checkpoint(tmp_path / "f" / "checkpoint.pt")["global_step"] == 3
    assert read_checkpoint(tmp_path / "r" / "checkpoint.pt")["global_step"] == 2
    with pytest.raises(RunError, match="exists already"):
        again = open_run(tmp_path, Loggers(), "r2")
        again.fork("f")


def test_close_saves_what_is_unsaved_and_reopening_continues_exactly(tmp_path):
    loggers = Loggers()
    session = open_run(tmp_path, loggers, save_every=NEVER)
    session.train(3, "cos 0.03")
    state = session.trainer.state_dict()
    session.close()
    again = open_run(tmp_path, loggers)
    assert_states_equal(state, again.trainer.state_dict())
    assert again.chunks == [{"start": 0, "end": 3, "expr": "cos 0.03"}]
    again.close()


def test_a_plan_the_run_cannot_do_is_refused_at_once_with_the_rule(tmp_path, monkeypatch, capsys):
    """The same rule (lrctl.schedules.check_chunk) at the --plan edge: a clear line, no training, no traceback."""
    import io
    import sys

    from lrctl.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    code = main(["--run", "k", "--set", "data.rows=300", "--plan", "2@keep"])
    out = capsys.readouterr()
    assert code != 0
    assert "--plan: nothing to keep yet" in out.out + out.err and "Traceback" not in out.out + out.err
    assert not (tmp_path / "runs" / "k" / "config.toml").exists()  # no run was made that could never train


def test_a_recorded_chunk_that_cannot_run_is_named_with_the_way_out(tmp_path):
    """A pending chunk no rule would accept today (an older lrctl recorded it, or a hand edit) is not a
    traceback on every resume: the message names it and how to drop it, and dropping it works."""
    from tests.conftest import run_main

    assert run_main(["--run", "old", "--set", "data.rows=300", "--plan", "1@0.01"], tmp_path).returncode == 0
    (tmp_path / "runs" / "old" / PENDING_FILE).write_text(json.dumps(
        {"chunks": [{"start": 1, "epochs": 2, "expr": "warmup=2 cos 0.03"}], "source": "plan"}))
    result = run_main(["resume", "old"], tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "the pending chunk from epoch 1 (2 epochs of `warmup=2 cos 0.03`) cannot run" in result.stderr
    assert "answer n to 'Finish the interrupted chunk?'" in result.stderr
    dropped = run_main(["--run", "old"], tmp_path, stdin="n\nn\n")
    assert dropped.returncode == 0, dropped.stderr
    assert not (tmp_path / "runs" / "old" / PENDING_FILE).exists()


def test_a_lost_latest_checkpoint_of_finished_work_is_not_blamed_on_the_pending_file(tmp_path):
    """All work done (so no pending.json, rightly), then checkpoint.pt damaged: the fallback's message says
    the epochs were lost with the checkpoint and will be redone; it does not say pending.json is missing."""
    loggers = Loggers()
    session = open_run(tmp_path, loggers)
    session.run_plan(parse_plan("2@0.03;2@0.01"))
    expected = session.trainer.state_dict()
    session.close()
    (tmp_path / "r" / "checkpoint.pt").write_bytes(b"damaged")
    again = RunSession.open(tmp_path, "r", small(), logger_factory=loggers, save_every=NEVER)
    again.load()
    said = " | ".join(again.load_warnings)
    assert "pending.json is missing" not in said
    assert "were lost with the latest checkpoint" in said and "redone exactly" in said, said
    again.finish_pending()
    assert_states_equal(expected, again.trainer.state_dict())
    again.close()
