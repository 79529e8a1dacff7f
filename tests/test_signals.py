"""Long epochs and signals: mid-epoch checkpoints that resume exactly, and what SIGTERM, SIGHUP, SIGUSR1 and
Ctrl-C twice do to a run. Real processes only where the signal is the point."""

from __future__ import annotations

import io
import json
import signal
import sys
import time

import pytest

from lrctl.config import RunConfig, with_overrides
from lrctl.plan import requests
from lrctl.runstore import CHECKPOINT_FILE
from lrctl.session import Observer, RunSession
from tests.conftest import assert_states_equal, read_checkpoint, read_scalars, start_lrctl
from tests.test_lifecycle import SimKill, simulate_kill

NEVER = float("inf")
PLAN = [(1, "0.03"), (2, "cyclic 0.001 0.03 period=1")]


class FakeClock:
    """Each reading is 0.05 s after the last: a mid-epoch checkpoint every ~20 batches at --save-every 1."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 0.05
        return self.now


class KillAtBatch(Observer):
    wants_batches = True

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch, self.session = epoch, batch, None

    def batch_done(self, batch: int, batches: int) -> None:
        if self.session.trainer.global_step == self.epoch and batch == self.batch:
            raise SimKill(f"epoch {self.epoch}, batch {batch}")


def long_epochs() -> RunConfig:
    return with_overrides(RunConfig(), ["data.rows=3000"])  # 42 batches an epoch


def killed_mid_epoch(runs, plan) -> None:
    """Run ``plan`` in run 'r' with mid-epoch checkpoints every ~20 batches; kill -9 at epoch 1, batch 30."""
    killer = KillAtBatch(epoch=1, batch=30)
    session = RunSession.open(runs, "r", long_epochs(), save_every=1.0, observer=killer, clock=FakeClock())
    killer.session = session
    session.load()
    with pytest.raises(SimKill):
        session.run_plan(requests(plan))
    simulate_kill(session)


def test_kill_mid_epoch_then_resume_is_bit_identical(tmp_path):
    runs = tmp_path / "runs"
    killed_mid_epoch(runs, PLAN)
    mid = read_checkpoint(runs / "r" / CHECKPOINT_FILE)
    assert mid["global_step"] == 1 and 0 < mid["mid_epoch"]["batch"] < 30, mid.get("mid_epoch")

    session = RunSession.open(runs, "r", long_epochs(), save_every=1.0, clock=FakeClock())
    session.load()
    assert session.trainer.batch_in_epoch == mid["mid_epoch"]["batch"]
    session.finish_pending()
    session.close()

    reference = RunSession.open(runs, "ref", long_epochs(), save_every=NEVER)
    reference.load()
    reference.run_plan(requests(PLAN))
    reference.close()
    assert_states_equal(read_checkpoint(runs / "r" / CHECKPOINT_FILE), read_checkpoint(runs / "ref" / CHECKPOINT_FILE))
    for sub in ("", "batch"):  # epoch scalars once per epoch, batch lrs once per batch, equal
        assert read_scalars(runs / "r" / sub) == read_scalars(runs / "ref" / sub)


def test_time_at_the_prompt_does_not_make_the_next_chunk_save_early(tmp_path):
    """The save cadence counts training since the last save: after a long wait at the prompt, a chunk
    saves on the cadence of its own epochs (and at its end), not after its first epoch too."""
    clock = FakeClock()  # a few tenths of a second an epoch here: the 1 s cadence comes every few epochs
    session = RunSession.open(tmp_path, "r", with_overrides(RunConfig(), ["data.rows=300"]), save_every=1.0,
                              clock=clock)
    session.load()

    def saved_steps(chunk: int, expression: str) -> list[int]:
        clock.now += 100.0  # the user thinks at the prompt
        before = len(session.store.read_journal())
        session.train(chunk, expression)
        return [e["step"] for e in session.store.read_journal()[before:] if e["event"] == "saved"]

    assert saved_steps(2, "0.03") == [2]
    assert saved_steps(2, "keep") == [4]
    steps = saved_steps(8, "keep")
    assert steps[-1] == 12 and len(steps) >= 2 and steps[0] > 5, steps  # the cadence goes on within the chunk
    session.close()


def test_a_chunks_last_epoch_is_saved_once(tmp_path):
    """Every epoch is due at --save-every 0; the last one is saved by the chunk's end (and kept), not twice."""
    session = RunSession.open(tmp_path, "r", with_overrides(RunConfig(), ["data.rows=300"]), save_every=0)
    session.load()
    before = len(session.store.read_journal())
    session.train(3, "0.03")
    assert [e["step"] for e in session.store.read_journal()[before:] if e["event"] == "saved"] == [1, 2, 3]
    assert 3 in session.store.kept_steps()
    session.close()


def test_ctrl_c_twice_drops_only_the_running_epoch(tmp_path):
    """With no checkpoint for many epochs, abandoning epoch 6 goes back to its start, not to epoch 0."""

    class AbandonAt(Observer):
        wants_batches = True

        def batch_done(self, batch, batches):
            if self.session.trainer.global_step == 6 and batch == 2:
                raise KeyboardInterrupt

    observer = AbandonAt()
    session = RunSession.open(tmp_path / "runs", "r", with_overrides(RunConfig(), ["data.rows=300"]),
                              save_every=NEVER, observer=observer)
    observer.session = session
    session.load()
    outcome = session.train(10, "0.03")
    assert (outcome.status, outcome.step, outcome.dropped) == ("abandoned", 6, 0)
    assert [h["step"] for h in session.trainer.history] == list(range(6))
    session.close()


LONG = ["--set", "data.rows=100000"]  # ~1,400 batches an epoch: a second, not milliseconds


def _start_and_signal(cwd, sig: int):
    proc = start_lrctl(["--run", "r", "--plan", "2@0.03", *LONG], cwd)
    out = []
    for line in proc.stdout:
        out.append(line)
        if line.startswith("training epochs"):
            sent = time.monotonic()
            proc.send_signal(sig)
            break
    rest = proc.stdout.read()
    proc.wait(timeout=60)
    return proc.returncode, "".join(out) + rest, time.monotonic() - sent


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_signal_on_a_long_epoch_saves_mid_epoch_and_resume_finishes_exactly(tmp_path, sig, code, monkeypatch):
    returncode, out, seconds = _start_and_signal(tmp_path, sig)
    assert returncode == code, out
    assert seconds < 15, f"took {seconds:.1f} s to answer {sig.name}"
    assert f"{sig.name}: saved at epoch 0, batch" in out, out
    mid = read_checkpoint(tmp_path / "runs" / "r" / CHECKPOINT_FILE)
    assert mid["global_step"] == 0 and mid["mid_epoch"]["batch"] > 0

    from lrctl.cli import main

    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # after finishing, the prompt reads end of input
    assert main(["resume", "r", "--runs-dir", str(tmp_path / "runs")]) == 0
    assert main(["--run", "ref", "--plan", "2@0.03", "--runs-dir", str(tmp_path / "runs"), *LONG]) == 0
    assert_states_equal(read_checkpoint(tmp_path / "runs" / "r" / CHECKPOINT_FILE),
                        read_checkpoint(tmp_path / "runs" / "ref" / CHECKPOINT_FILE))
    assert read_scalars(tmp_path / "runs" / "r") == read_scalars(tmp_path / "runs" / "ref")


@pytest.mark.slow
def test_sigusr1_checkpoints_at_the_next_batch_and_training_goes_on(tmp_path):
    proc = start_lrctl(["--run", "r", "--plan", "1@0.03", *LONG], tmp_path)
    out = []
    for line in proc.stdout:
        out.append(line)
        if line.startswith("training epochs"):
            proc.send_signal(signal.SIGUSR1)
            break
    out.append(proc.stdout.read())
    assert proc.wait(timeout=120) == 0, "".join(out)
    journal = [json.loads(x) for x in (tmp_path / "runs" / "r" / "journal.jsonl").read_text().splitlines()]
    assert any(e["event"] == "saved" and e.get("batch") for e in journal), "no mid-epoch checkpoint"
    assert read_checkpoint(tmp_path / "runs" / "r" / CHECKPOINT_FILE)["global_step"] == 1


def test_a_new_command_on_a_run_stopped_mid_epoch_trains_at_the_lr_typed(tmp_path):
    """Killed inside an epoch of `exp`, then the interrupted work declined: that epoch is finished as it was
    going, and the next chunk trains at the lr typed (it kept running the old schedule)."""
    runs = tmp_path / "runs"
    killed_mid_epoch(runs, [(3, "exp 0.05 gamma=0.9")])
    session = RunSession.open(runs, "r", long_epochs(), save_every=1.0, clock=FakeClock())
    session.load()
    assert session.trainer.batch_in_epoch > 0
    session.drop_pending("declined at the prompt")
    assert (session.global_step, session.trainer.batch_in_epoch) == (2, 0)  # epoch 1 finished first
    session.train(2, "0.01")
    assert [h["lr"] for h in session.trainer.history[2:]] == [0.01, 0.01]
    session.close()


def test_a_checkpoint_asked_for_while_paused_is_written_at_once(tmp_path):
    class PauseCheckpointResume(Observer):
        wants_batches = True

        def batch_done(self, batch, batches):
            if self.session.trainer.global_step == 0 and batch == 3:
                for cmd in ("pause", "checkpoint", "resume"):
                    self.session.submit({"cmd": cmd, "source": "test"})

    observer = PauseCheckpointResume()
    session = RunSession.open(tmp_path / "runs", "r", long_epochs(), save_every=NEVER, observer=observer)
    observer.session = session
    session.load()
    session.train(1, "0.03")
    session.close()
    journal = [json.loads(x) for x in (tmp_path / "runs" / "r" / "journal.jsonl").read_text().splitlines()]
    assert any(e["event"] == "saved" and e.get("batch") == 4 for e in journal), "no checkpoint while paused"


def test_ctrl_c_twice_as_a_chunk_ends_returns_to_the_prompt_with_the_chunk_recorded(tmp_path):
    """Two quick Ctrl-C with epochs of milliseconds: the second came after the last epoch, while the chunk
    ended (its checkpoint, journal, view); it escaped as a KeyboardInterrupt and ended the program, with the
    chunk's end never journaled and the progress bars left on screen."""
    from lrctl.repl import ChunkInterrupts

    class SecondPressAtTheEnd(Observer):
        def __init__(self):
            self.pressed = 0

        def message(self, text):
            pass

        warn = message

        def epoch_done(self, record, metric):
            if record.step == 2:
                self.interrupts.press()  # stop after this epoch

        def chunk_ended(self, outcome):
            if self.interrupts.presses == 1:
                self.interrupts.press()  # the second press lands here: nothing left to abandon

    observer = SecondPressAtTheEnd()
    session = RunSession.open(tmp_path / "runs", "r", with_overrides(RunConfig(), ["data.rows=300"]),
                              save_every=NEVER, observer=observer)
    observer.interrupts = ChunkInterrupts(session, observer)
    session.load()
    outcome = session.train(10, "0.03")
    assert (outcome.status, outcome.step) == ("stopped", 3)
    assert [e["event"] for e in session.store.read_journal()][-1] == "interrupted"  # the stop was recorded
    assert session.train(1, "0.03").status == "done"  # and the session goes on
    session.close()


def test_the_banner_of_a_run_stopped_mid_epoch_names_the_batch(tmp_path):
    """A run resumed from a mid-epoch checkpoint says where inside the epoch it stands."""
    from tests.conftest import run_main

    runs = tmp_path / "runs"
    killed_mid_epoch(runs, PLAN)
    batch = read_checkpoint(runs / "r" / CHECKPOINT_FILE)["mid_epoch"]["batch"]
    result = run_main(["--run", "r", "--runs-dir", str(runs)], tmp_path, stdin="n\n")
    assert f"resumed at epoch 1, batch {batch} of 42 ·" in result.stdout, result.stdout
