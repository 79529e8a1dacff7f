"""One test per defect found where two features meet (issue "Trust at the seams"); each failed before its fix.

The lifecycle simulation (tests/test_lifecycle.py) explores the sequences; these pin each defect down
with the smallest case, in-process (``main(argv)`` and the session API).
"""

from __future__ import annotations

import io
import json
import pickle
import queue
import sys

import pytest

from lrctl import _faults
from lrctl.cli import main
from lrctl.config import RunConfig, with_overrides
from lrctl.plan import requests
from lrctl.runops import fork_run
from lrctl.runs_table import list_runs
from lrctl.runstore import CHECKPOINT_FILE, CHECKPOINT_META_FILE, PENDING_FILE, RunError, RunStore
from lrctl.session import Observer, RunSession
from tests.conftest import assert_states_equal, read_checkpoint
from tests.test_lifecycle import (
    SimKill,
    check_tensorboard,
    kill_during,
    release_locks_of_killed_process,
    simulate_kill,
    tb_scalars_multiplexer,
)

NEVER = float("inf")


def small() -> RunConfig:
    return with_overrides(RunConfig(), ["data.rows=300"])  # 5 batches an epoch


def open_run(runs, name="r", **kw) -> RunSession:
    session = RunSession.open(runs, name, small(), save_every=kw.pop("save_every", NEVER), **kw)
    session.load()
    return session


def run_main(argv: list[str], stdin: str, monkeypatch, capsys) -> tuple[int, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out + out.err


class KillAtEpoch(Observer):
    def __init__(self, step: int) -> None:
        self.step = step

    def epoch_done(self, record, metric) -> None:
        if record.step + 1 == self.step:
            raise SimKill(f"after epoch {record.step}")


def uninterrupted(runs, plan) -> dict:
    session = open_run(runs, "reference")
    session.run_plan(requests(plan))
    session.close()
    return read_checkpoint(runs / "reference" / CHECKPOINT_FILE)


# 1 -------------------------------------------------------------------------------------------------------
def test_a_new_run_never_exists_without_the_plan_that_created_it(tmp_path, monkeypatch, capsys):
    """kill -9 while torch loads (after config.toml appears, before training): resume runs the plan."""
    runs = tmp_path / "runs"
    seen = {}

    def at_point(name: str) -> None:
        if name == "rename config.toml":  # the moment the run starts to exist
            seen["pending"] = (runs / "r" / PENDING_FILE).exists()
            seen["journal"] = [json.loads(x)["event"] for x in (runs / "r" / "journal.jsonl").read_text().splitlines()]

    _faults.install(at_point)
    try:
        session = RunSession.open(runs, "r", small(), plan=requests([(2, "0.03"), (1, "0.01")]))
    finally:
        _faults.install(None)
    assert seen["pending"] and "command" in seen["journal"]
    simulate_kill(session)  # killed before load(): no checkpoint, no epoch trained
    code, out = run_main(["resume", "r", "--runs-dir", str(runs)], "", monkeypatch, capsys)
    assert code == 0, out
    assert "finishing the interrupted work (3 epochs left in 2 chunks)" in out
    assert_states_equal(read_checkpoint(runs / "r" / CHECKPOINT_FILE), uninterrupted(runs, [(2, "0.03"), (1, "0.01")]))


# 2 -------------------------------------------------------------------------------------------------------
def test_lost_latest_checkpoint_redoes_the_lost_work_exactly(tmp_path):
    """Plan 3@0.03;3@0.01 killed at epoch 5, latest checkpoint (epoch 3) deleted: the previous one (epoch 0)
    loads and the whole plan is redone, not 6 epochs of 0.01 from epoch 0."""
    runs = tmp_path / "runs"
    plan = [(3, "0.03"), (3, "0.01")]
    session = open_run(runs, observer=KillAtEpoch(5))
    with pytest.raises(SimKill):
        session.run_plan(requests(plan))
    simulate_kill(session)
    (runs / "r" / CHECKPOINT_FILE).unlink()
    session = open_run(runs)
    assert session.global_step == 0
    assert any("checkpoint.pt is missing" in w for w in session.load_warnings), session.load_warnings
    assert any("redone exactly: 3@0.03 from epoch 0; 3@0.01 from epoch 3" in w for w in session.load_warnings)
    session.finish_pending()
    session.close()
    assert_states_equal(read_checkpoint(runs / "r" / CHECKPOINT_FILE), uninterrupted(runs, plan))


def test_lost_work_that_cannot_be_redone_exactly_is_refused_by_name(tmp_path):
    runs = tmp_path / "runs"
    session = open_run(runs)
    session.train(2, "0.03")
    session.train(2, "0.02")
    session.undo()  # the timeline after the older checkpoint has an undo in it (back to epoch 2, not 0)
    session.store.write_pending(None)
    session.run_plan(requests([(3, "0.01")]))
    session.close()
    # Every checkpoint from the undo on is lost: the run falls back to the one kept at epoch 0.
    for lost in (CHECKPOINT_FILE, "checkpoint.prev.pt", "kept/step-00000002.pt", "kept/step-00000005.pt"):
        (runs / "r" / lost).unlink()
    (runs / "r" / PENDING_FILE).write_text("{garbage")
    session = open_run(runs)
    assert any("cannot be redone exactly (an undo came after that checkpoint)" in w for w in session.load_warnings)
    assert session.pending is None
    session.close()


def test_a_command_killed_before_its_pending_file_is_rebuilt_from_its_journal_line(tmp_path, monkeypatch, capsys):
    """kill -9 between a command's fsynced journal line and its pending.json (the journal comes first): the
    run knows the command; lrctl runs says interrupted and resume trains it exactly (found by the long
    profile: with the pending file first, a kill there and a lost pending.json left no trace of it)."""
    runs = tmp_path / "runs"
    session = open_run(runs)
    session.train(1, "0.03")

    def kill_at_the_pending_write(name: str) -> None:
        if name == f"write {PENDING_FILE}":
            raise SimKill(name)

    _faults.install(kill_at_the_pending_write)
    try:
        with pytest.raises(SimKill):
            session.run_plan(requests([(2, "cos 0.02")]))
    finally:
        _faults.install(None)
    simulate_kill(session)
    assert not (runs / "r" / PENDING_FILE).exists()
    assert {r.name: r for r in list_runs(runs)}["r"].state.startswith("interrupted")
    code, out = run_main(["resume", "r", "--runs-dir", str(runs)], "", monkeypatch, capsys)
    assert code == 0, out
    expected = uninterrupted(runs, [(1, "0.03"), (2, "cos 0.02")])
    assert_states_equal(read_checkpoint(runs / "r" / CHECKPOINT_FILE), expected)


def test_work_after_the_undo_that_wrote_the_loaded_checkpoint_is_redone_exactly(tmp_path):
    """The undo's own journal line follows its saves: when the checkpoint that loads is the undo's, the
    work after it is replayable (it used to be refused as "an undo came after that checkpoint")."""
    runs = tmp_path / "runs"
    session = open_run(runs)
    session.train(2, "0.03")
    session.train(2, "0.02")
    session.undo()
    session.run_plan(requests([(3, "0.01")]))
    expected = session.trainer.state_dict()
    session.close()
    (runs / "r" / CHECKPOINT_FILE).unlink()  # the previous one is the undo's
    (runs / "r" / PENDING_FILE).write_text("{garbage")
    session = open_run(runs)
    assert session.global_step == 2 and any("redone exactly" in w for w in session.load_warnings)
    session.finish_pending()
    assert_states_equal(expected, session.trainer.state_dict())
    session.close()


# 3 -------------------------------------------------------------------------------------------------------
def test_garbage_pending_file_is_reported_and_the_work_rebuilt_from_the_journal(tmp_path):
    runs = tmp_path / "runs"
    plan = [(2, "0.03"), (2, "cos 0.02")]
    session = open_run(runs, observer=KillAtEpoch(3), save_every=0)
    with pytest.raises(SimKill):
        session.run_plan(requests(plan))
    simulate_kill(session)
    (runs / "r" / PENDING_FILE).write_text("not json")
    row = {r.name: r for r in list_runs(runs)}["r"]
    assert "pending.json is damaged" in row.state, row.state
    session = open_run(runs)
    assert any("rebuilt from the checkpoint and the journal" in w for w in session.load_warnings)
    assert session.pending.remaining(session.global_step) == 1
    session.finish_pending()
    session.close()
    assert_states_equal(read_checkpoint(runs / "r" / CHECKPOINT_FILE), uninterrupted(runs, plan))


# 4 -------------------------------------------------------------------------------------------------------
def test_missing_checksum_file_is_reported_and_shows_the_true_epoch(tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    session = open_run(runs)
    session.train(3, "0.03")
    session.close()
    (runs / "r" / CHECKPOINT_META_FILE).unlink()
    row = {r.name: r for r in list_runs(runs)}["r"]
    assert row.step == 3 and row.state.startswith("unverified"), row
    code, out = run_main(["--run", "r", "--runs-dir", str(runs)], "n\n", monkeypatch, capsys)
    assert code == 0
    assert "resumed at epoch 3" in out and "checksum cannot be verified" in out
    assert out.index("checksum cannot be verified") < out.index("Continue training?")
    assert (runs / "r" / CHECKPOINT_META_FILE).exists()  # healed


def test_after_a_fallback_banner_and_runs_show_the_epoch_that_loads(tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    session = open_run(runs)
    session.train(2, "0.03")
    session.train(2, "0.01")
    session.close()
    latest = runs / "r" / CHECKPOINT_FILE
    latest.write_bytes(latest.read_bytes()[:100])
    assert {r.name: r for r in list_runs(runs)}["r"].step == 2
    code, out = run_main(["--run", "r", "--runs-dir", str(runs)], "n\n", monkeypatch, capsys)
    assert "resumed at epoch 2" in out and "falling back to checkpoint.prev.pt (epoch 2)" in out, out


# 5 -------------------------------------------------------------------------------------------------------
class Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_refused_checkpoint_is_reported_at_open_and_nothing_claims_a_save(tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    session = open_run(runs)
    session.train(2, "0.03")
    session.train(1, "0.01")
    session.close()
    (runs / "r" / CHECKPOINT_FILE).write_bytes(pickle.dumps({"model": Payload(), "global_step": 9}))
    row = {r.name: r for r in list_runs(runs)}["r"]
    assert row.step == 2 and "damaged" in row.state, row
    code, out = run_main(["--run", "r", "--runs-dir", str(runs)], "n\n", monkeypatch, capsys)
    assert "code ran" not in out
    assert "resumed at epoch 2" in out
    assert out.index("falling back to checkpoint.prev.pt") < out.index("Continue training?")


def test_exit_line_says_saved_only_when_something_was_saved(tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    session = open_run(runs)
    session.train(1, "0.03")
    session.close()
    code, out = run_main(["--run", "r", "--runs-dir", str(runs)], "n\n", monkeypatch, capsys)
    assert "saved run" not in out and "run 'r' at epoch 1" in out


# 6 -------------------------------------------------------------------------------------------------------
class LrAtBatch(Observer):
    """Submits a live change at one batch boundary; records the lr in force for each next batch."""

    wants_batches = True

    def __init__(self, at: int, command: dict) -> None:
        self.at, self.command, self.lrs, self.n = at, command, [], 0
        self.reply: queue.SimpleQueue = queue.SimpleQueue()

    def batch_done(self, batch, batches) -> None:
        self.n += 1
        self.lrs.append(self.session.trainer.lr)
        if self.n == self.at:
            self.session.submit({**self.command, "source": "test", "reply": self.reply})


@pytest.mark.parametrize("mode", ["set", "scale", "restart"])
def test_live_lr_change_holds_under_a_per_batch_schedule(tmp_path, mode):
    """cyclic runs every batch; `lr 0.005 MODE` at batch 3 governs every later batch (it held for one)."""
    from lrctl.lr_runner import ScheduleRunner
    from lrctl.schedules import parse, with_base

    runs = tmp_path / "runs"
    observer = LrAtBatch(3, {"cmd": "lr", "value": "0.005", "mode": mode})
    session = open_run(runs, observer=observer)
    observer.session = session
    session.train(3, "cyclic 0.001 0.03 period=1")
    assert observer.reply.get_nowait()["ok"]
    bpe = session.trainer.batches_per_epoch
    lrs = observer.lrs[3:]  # the lr of batches 5, 6, ... (the change is applied at the boundary after batch 4)
    spec = parse("cyclic 0.001 0.03 period=1")
    shadow = _shadow_lrs(spec, 3, bpe)  # the untouched cycle, batch by batch
    if mode == "set":
        expected = [0.005] * len(lrs)
    elif mode == "scale":
        factor = 0.005 / shadow[3]
        expected = [v * factor for v in shadow[3:]]
    else:
        import torch

        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        runner = ScheduleRunner(with_base(spec, 0.005), opt, 0, 3, bpe)
        expected = []
        for _ in lrs:
            expected.append(runner.lr)
            runner.after_batch()
    assert lrs == pytest.approx(expected, rel=1e-9), (mode, lrs, expected)
    session.close()


def _shadow_lrs(spec, epochs: int, bpe: int) -> list[float]:
    import torch

    from lrctl.lr_runner import ScheduleRunner

    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.1)
    runner = ScheduleRunner(spec, opt, 0, epochs, bpe)
    out = []
    for _ in range(epochs * bpe):
        runner.after_batch()
        out.append(runner.lr)
    return out


def test_live_change_from_a_constant_to_cyclic_cycles_within_the_epoch(tmp_path):
    runs = tmp_path / "runs"
    observer = LrAtBatch(1, {"cmd": "lr", "value": "cyclic 0.001 0.03 period=1"})
    session = open_run(runs, observer=observer)
    observer.session = session
    session.train(1, "0.01")
    assert observer.lrs[1:] == pytest.approx([0.001, 0.0155, 0.03, 0.0155])  # it cycles every batch
    session.close()


# 7 -------------------------------------------------------------------------------------------------------
def test_after_undo_both_tensorboard_loaders_show_the_timeline(tmp_path):
    runs = tmp_path / "runs"
    session = open_run(runs)
    session.train(3, "0.03")
    session.train(3, "0.01")
    session.undo()
    check_tensorboard(runs / "r", session.trainer.history)  # right after the undo
    session.train(2, "0.02")
    check_tensorboard(runs / "r", session.trainer.history)
    assert [s for s, _ in sorted(tb_scalars_multiplexer(runs / "r")["lr"])] == [0, 1, 2, 3, 4]
    session.close()


def test_fork_at_shows_only_the_forks_timeline(tmp_path):
    runs = tmp_path / "runs"
    session = open_run(runs)
    session.train(2, "0.03")
    session.train(2, "cyclic 0.001 0.03 period=1")
    session.close()
    assert fork_run(runs, "r", "f", at=2) == 2
    forked = open_run(runs, "f")
    check_tensorboard(runs / "f", forked.trainer.history)
    batch = tb_scalars_multiplexer(runs / "f" / "batch")
    assert all(step < 2 * forked.trainer.batches_per_epoch for step, _ in batch.get("lr_batch", []))
    forked.close()


# 8 -------------------------------------------------------------------------------------------------------
def test_fork_at_an_undone_epoch_is_refused_and_a_failed_fork_leaves_nothing(tmp_path):
    runs = tmp_path / "runs"
    session = open_run(runs)
    session.train(2, "0.03")
    session.train(2, "0.01")  # kept at epoch 4
    session.undo()  # back to 2: epoch 4's kept checkpoint is in no timeline now
    session.close()
    assert 4 not in RunStore(runs, "r").kept_steps()
    with pytest.raises(RunError, match="keeps no checkpoint at epoch 4"):
        fork_run(runs, "r", "f", at=4)
    assert not (runs / "f").exists()


@pytest.mark.parametrize("damage", ["delete latest", "truncate previous"])
def test_every_damaged_checkpoint_file_is_said_before_the_first_question(tmp_path, monkeypatch, capsys, damage):
    runs = tmp_path / "runs"
    session = open_run(runs)
    session.train(2, "0.03")
    session.train(2, "0.01")
    session.close()
    if damage == "delete latest":
        (runs / "r" / CHECKPOINT_FILE).unlink()
        said = "checkpoint.pt is missing"
    else:
        prev = runs / "r" / "checkpoint.prev.pt"
        prev.write_bytes(prev.read_bytes()[:50])
        said = "checkpoint.prev.pt is corrupt or truncated"
    code, out = run_main(["--run", "r", "--runs-dir", str(runs)], "", monkeypatch, capsys)  # end of input at once
    assert code == 0 and said in out and out.index(said) < out.index("? [y/n]"), out  # the first question


def test_a_healed_checksum_file_vouches_for_both_checkpoints_next_time(tmp_path):
    runs = tmp_path / "runs"
    session = open_run(runs)
    session.train(2, "0.03")
    session.close()
    (runs / "r" / CHECKPOINT_META_FILE).unlink()
    session = open_run(runs)
    assert any("checksum cannot be verified" in w for w in session.load_warnings)
    session.close()
    session = open_run(runs)
    assert session.load_warnings == []  # no false "previous checkpoint damaged" after the heal
    session.close()


def test_a_heal_killed_between_its_checksum_file_and_its_renames_leaves_runs_showing_the_true_epoch(tmp_path):
    """A damaged checksum file; the open that rewrites it is killed after the new one is written and before
    the renames: the names it lists are a step ahead of the files. The next session's save used to record
    the file it rotated with no summary (the damaged file had none), so ``lrctl runs`` knew no epoch and
    called the finished run "interrupted? pending.json is missing" (found by the long simulation)."""
    runs = tmp_path / "runs"
    session = open_run(runs)
    session.run_plan(requests([(1, "0.03"), (1, "0.01")]))
    session.close()
    meta = runs / "r" / CHECKPOINT_META_FILE
    meta.write_bytes(meta.read_bytes()[:40])
    kill_during(lambda: open_run(runs), at=lambda name: name == f"rename {CHECKPOINT_FILE} -> checkpoint.prev.pt")
    release_locks_of_killed_process(runs)
    session = open_run(runs)
    assert session.global_step == 2
    session.close()
    (row,) = list_runs(runs)
    assert (row.step, row.state) == (2, "ok"), row
    assert RunStore(runs, "r").summary()["global_step"] == 2


def test_an_undo_killed_before_its_second_save_never_leaves_an_undone_epoch_as_the_fallback(tmp_path):
    """An undo writes its target twice, so the fallback is that state too. Killed before the second save's
    renames, the next open finished the undo without it: a damaged latest then fell back to the undone
    epoch, in no timeline (found by the long simulation)."""
    runs = tmp_path / "runs"
    session = open_run(runs)
    session.train(1, "0.03")
    renames = []

    def second_save(name: str) -> bool:
        renames.extend([name] if name == f"rename {CHECKPOINT_FILE}" else [])
        return name == f"rename {CHECKPOINT_FILE} -> checkpoint.prev.pt" and len(renames) == 1

    kill_during(session.undo, at=second_save)
    simulate_kill(session)
    session = open_run(runs)
    assert session.global_step == 0 and any("interrupted" in w for w in session.load_warnings)
    session.close()
    latest = runs / "r" / CHECKPOINT_FILE
    latest.write_bytes(latest.read_bytes()[:100])
    session = open_run(runs)
    assert session.global_step == 0, session.load_warnings  # the fallback is the undo's target, not epoch 1
    session.close()


def test_a_kill_while_a_damaged_run_loads_leaves_what_an_uninterrupted_load_leaves():
    """Found by the lifecycle simulation: the load of a run whose latest checkpoint is damaged dropped
    the kept checkpoint linked to it before writing that epoch again; a kill in between lost it (undo
    and fork --at could no longer go to epoch 0). The simulation's rule compares with a clean open."""
    from tests.test_lifecycle import Lifecycle

    machine = Lifecycle()
    machine.setup(checkpoint_every=0, save_every=NEVER)
    try:
        machine.damage(target_file=CHECKPOINT_FILE, how="truncate")
        for kill_at in (1, 3, 6):
            machine.damage(target_file=CHECKPOINT_FILE, how="truncate", kill_while_loading=kill_at)
            assert RunStore(machine.runs, machine.name).kept_steps() == [0]
    finally:
        machine.teardown()


@pytest.mark.parametrize("kill_at", [2, 5, 9])
def test_a_kill_inside_an_undo_is_finished_by_the_next_open(kill_at):
    """Found by the lifecycle simulation's kill-inside-undo rule: a kill after the undo had dropped the
    pending work and pruned the kept checkpoints, but before it saved, left the run at the undone epoch
    without its work or kept checkpoints (and TensorBoard's purge written). The undo's intent is now
    journaled first, and the next open finishes it and says so."""
    from tests.test_lifecycle import Lifecycle

    machine = Lifecycle()
    machine.setup(checkpoint_every=0, save_every=NEVER)
    try:
        machine.plan(first=1, lrs=("0.03", "0.01"), second=2)
        machine.crash(crash_at=6, epochs=2, expression="0.03")  # pending work left to drop
        machine.undo(kill_at=kill_at)  # the rule checks the next open: at the chunk's start, no pending
        assert machine.session.global_step == 1 and machine.session.pending is None
        assert any("undo from epoch 3 to 1 was interrupted" in r for r in machine.reports), machine.reports
        machine.tensorboard_shows_the_timeline()
    finally:
        machine.teardown()


def test_a_fork_at_a_kept_epoch_opens_without_a_word_of_damage(tmp_path):
    """``fork --at`` wrote one checkpoint file and kept the source's pending copy in it: the fork then
    opened saying its fallback checkpoint was missing and that pending work was dropped."""
    runs = tmp_path / "runs"
    session = open_run(runs)
    session.run_plan(requests([(1, "0.03"), (2, "0.01")]))
    session.close()
    assert fork_run(runs, "r", "f", 1) == 1
    fork = open_run(runs, "f")
    assert fork.load_warnings == [] and fork.pending is None and fork.global_step == 1
    fork.close()


def test_a_fork_killed_while_copying_leaves_no_run_and_its_name_free(tmp_path):
    """A kill while a fork copies leaves files but no config: no run is listed under that name, a new
    fork into it works, and a new run of that name removes the partial copy and says so."""
    from lrctl.runops import copy_for_fork

    runs = tmp_path / "runs"
    session = open_run(runs)
    session.train(2, "0.03")
    # the fork's "forked" line: its files are copied by then
    kill_during(lambda: copy_for_fork(session.store, "f", session.global_step),
                at=lambda name: name.startswith("write journal"))
    partial = RunStore(runs, "f")
    assert not partial.exists and (partial.dir / CHECKPOINT_FILE).exists()
    assert "f" not in {r.name for r in list_runs(runs)}
    session.close()
    assert fork_run(runs, "r", "f", 2) == 2  # the partial copy is replaced
    fresh = open_run(runs, "f")
    assert fresh.global_step == 2 and fresh.load_warnings == []
    fresh.close()


def test_a_new_run_in_a_partial_forks_directory_says_it_removed_the_copy(tmp_path):
    runs = tmp_path / "runs"
    session = open_run(runs)
    session.close()
    source, partial = RunStore(runs, "r"), RunStore(runs, "f")
    partial.acquire()
    source.copy_to(partial)  # and then the kill: no config.toml
    partial.close()
    new = RunSession.open(runs, "f", small())
    assert new.is_new and any("fork of run 'r' into 'f' was interrupted" in w for w in new.load_warnings)
    new.load()
    assert new.global_step == 0 and RunStore(runs, "f").kept_steps() == [0]
    new.close()


@pytest.mark.parametrize("how", ["diverge", "abandon"])
def test_the_epochs_before_a_diverged_or_abandoned_epoch_survive_a_kill_at_the_prompt(how):
    """Found by the simulation's kill-at-the-prompt rule: after a divergence in a chunk's third epoch the
    run stood at its second epoch in memory only (the work was dropped, nothing saved since the chunk
    began), so a kill at the prompt silently lost two epochs. Now it is saved on the way back."""
    from tests.test_lifecycle import Lifecycle

    machine = Lifecycle()
    machine.setup(checkpoint_every=0, save_every=NEVER)
    try:
        if how == "diverge":
            machine.diverge_mid_chunk(epochs_before=2)
        else:
            machine.chunk(action=(13, "abandon", ("0.02", "set")), epochs=3, expression="0.03")
        assert machine.session.global_step == 2
        machine.kill_at_prompt()  # the rule asserts the run reopens at epoch 2
        machine.tensorboard_shows_the_timeline()
    finally:
        machine.teardown()


def test_what_a_killed_open_repaired_is_said_by_the_next_one():
    """Found by helper h26 with real kills: an open of a damaged run killed after its repairs (the
    fallback rewritten, the work rebuilt), before its warnings reached the user, left the next open
    silent about the lost epochs. What a load finds is journaled before it repairs anything, until said."""
    from tests.test_lifecycle import Lifecycle

    machine = Lifecycle()
    machine.setup(checkpoint_every=0, save_every=NEVER)
    try:
        machine.plan(first=1, lrs=("0.03", "0.01"), second=2)
        # killed after the repaired checkpoint is renamed into place: nothing on disk is damaged any more
        machine.damage(target_file=CHECKPOINT_FILE, how="truncate", kill_while_loading=19)
        assert machine.faults.hit == "fsync dir r0"
        assert any("found by an earlier start that ended before it could say so" in r for r in machine.reports)
        machine.reopen()
        assert not any("earlier start" in r for r in machine.reports), machine.reports  # said once is enough
    finally:
        machine.teardown()


def test_a_lost_pending_file_is_reported_when_the_checkpoints_save_line_never_reached_the_journal(tmp_path):
    """Found by the long simulation: a kill after a checkpoint's renames but before its 'saved' journal
    line, then a command killed before its first save, then pending.json lost. The checkpoint's own copy
    of the work said nothing was left, so the command was dropped without a word. Now it is named."""
    runs = tmp_path / "runs"
    session = open_run(runs)
    renamed = {"done": False}

    def after_the_renames(name: str) -> bool:
        renamed["done"] = renamed["done"] or name == f"rename {CHECKPOINT_FILE}"
        return renamed["done"] and name.startswith("write journal")

    kill_during(lambda: session.run_plan(requests([(2, "0.03")])), at=after_the_renames)
    simulate_kill(session)
    session = open_run(runs)
    assert session.global_step == 2 and session.pending is None
    kill_during(lambda: session.run_plan(requests([(2, "0.01")])), at=lambda name: name.startswith("write checkpoint"))
    simulate_kill(session)
    (runs / "r" / PENDING_FILE).unlink()
    session = open_run(runs)
    assert session.global_step == 2
    assert session.pending is not None or any("2@0.01 from epoch 2" in w for w in session.load_warnings), (
        session.load_warnings)
    session.close()


def test_a_damaged_kept_checkpoint_of_a_mid_epoch_run_is_dropped_not_kept_for_rewriting():
    """Found by the long simulation: a run standing mid-epoch at epoch 0 with a damaged previous checkpoint
    kept the damaged kept file of epoch 0 "to be replaced", but a mid-epoch state is never kept, so undo
    then tried to load the damaged file. Now only an epoch boundary's kept file waits to be rewritten."""
    from tests.test_lifecycle import Lifecycle

    machine = Lifecycle()
    machine.setup(checkpoint_every=0, save_every=0.0)
    try:
        machine.crash(crash_at=22, epochs=1, expression="0.03")
        assert machine.session.trainer.batch_in_epoch > 0
        machine.damage(target_file="checkpoint.prev.pt", how="truncate", kill_while_loading=1)
        machine.undo()  # the rule: refused only when the kept file is gone, never a damaged file loaded
    finally:
        machine.teardown()
