"""What the user is told, and when, after a ``kill -9`` inside an undo (found by attacking real processes).

A killed undo is finished by the next open; these pin down that it is *said before the first question*
(the banner shows the epoch the run is really at) and that ``lrctl runs`` does not call the run
interrupted in the meantime.
"""

from __future__ import annotations

import io
import sys

import pytest

from lrctl.cli import main
from lrctl.config import RunConfig, with_overrides
from lrctl.runs_table import list_runs
from lrctl.session import RunSession
from tests.test_lifecycle import SimKill, kill_during, simulate_kill

NEVER = float("inf")


def _run_killed_inside_undo(runs, journal_writes_before_kill: int) -> None:
    """Run r: 2@0.03 then 1@0.01 (epoch 3), then an undo killed at the n-th journal write after its intent
    (1: at its first save's journal line, before any checkpoint of the undo is written; 3: after both
    saves, at its closing ``undo`` line)."""
    session = RunSession.open(runs, "r", with_overrides(RunConfig(), ["data.rows=300"]), save_every=NEVER)
    session.load()
    session.train(2, "0.03")
    session.train(1, "0.01")
    seen = {"n": 0}

    def after_the_intent(name: str) -> bool:
        if name == "write journal.jsonl" and session.store.interrupted_undo() is not None:
            seen["n"] += 1
        return seen["n"] == journal_writes_before_kill

    kill_during(session.undo, at=after_the_intent)
    simulate_kill(session)


def _main(argv: list[str], stdin: str, monkeypatch, capsys) -> tuple[int, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out + out.err


def test_an_undo_killed_before_it_saved_is_said_before_the_first_question(tmp_path, monkeypatch, capsys):
    """Before: the banner said 'resumed at epoch 3', the questions were asked while torch loaded, and only
    after the user had typed a chunk did lrctl say the undo (to epoch 2) was finished."""
    runs = tmp_path / "runs"
    _run_killed_inside_undo(runs, 1)
    state = {r.name: r for r in list_runs(runs)}["r"].state
    assert "undo" in state, state
    code, out = _main(["--run", "r", "--runs-dir", str(runs)], "n\n", monkeypatch, capsys)
    assert code == 0, out
    said = out.index("an undo from epoch 3 to 2 was interrupted")
    assert said < out.index("Continue training?"), out
    assert "resumed at epoch 2" in out.splitlines()[0], out


def test_an_undo_killed_after_its_saves_is_not_called_interrupted_work(tmp_path, monkeypatch, capsys):
    """Before: ``lrctl runs`` said 'interrupted? pending.json is missing' (the undo had dropped it), and the
    next open said nothing about the undo at all."""
    runs = tmp_path / "runs"
    _run_killed_inside_undo(runs, 3)
    state = {r.name: r for r in list_runs(runs)}["r"].state
    assert "pending.json is missing" not in state, state
    code, out = _main(["--run", "r", "--runs-dir", str(runs)], "n\n", monkeypatch, capsys)
    assert code == 0, out
    said = out.index("an undo from epoch 3 to 2 was interrupted")
    assert said < out.index("Continue training?"), out
    assert "resumed at epoch 2" in out.splitlines()[0], out


def _partial_fork(runs) -> None:
    """Run r at epoch 2, and a fork of it into 'f' killed after its files were copied (no config: no run)."""
    from lrctl.runops import copy_for_fork

    session = RunSession.open(runs, "r", with_overrides(RunConfig(), ["data.rows=300"]), save_every=NEVER)
    session.load()
    session.train(2, "0.03")

    # the fork's "forked" line: its files are copied by then
    kill_during(lambda: copy_for_fork(session.store, "f", session.global_step),
                at=lambda name: name.startswith("write journal"))
    simulate_kill(session)


@pytest.mark.parametrize("how", ["prompt", "command"])
def test_a_fork_into_a_killed_forks_partial_copy_says_it_removed_it(how, tmp_path, monkeypatch, capsys):
    """Before: ``fork f`` at the prompt and ``lrctl fork r f`` removed the partial copy silently (only a new
    run of that name said so)."""
    runs = tmp_path / "runs"
    _partial_fork(runs)
    if how == "prompt":
        code, out = _main(["--run", "r", "--runs-dir", str(runs)], "fork f\nn\n", monkeypatch, capsys)
    else:
        code, out = _main(["fork", "r", "f", "--runs-dir", str(runs)], "", monkeypatch, capsys)
    assert code == 0, out
    assert "a fork of run 'r' into 'f' was interrupted before it finished; its partial copy was removed" in out, out
    assert {r.name: r for r in list_runs(runs)}["f"].state == "ok"


def test_a_fork_killed_while_writing_its_copy_marker_leaves_the_name_free(tmp_path, monkeypatch, capsys):
    """A kill -9 of ``lrctl fork r g --at 0`` inside the write of ``copying.json`` (its temp file written, not yet
    renamed) left ``runs/g`` with the lock files and ``.copying.json.PID.tmp``: no run is listed under 'g',
    yet every later ``lrctl fork r g`` said "run 'g' exists already"."""
    from lrctl.runstore import RunStore

    runs = tmp_path / "runs"
    session = RunSession.open(runs, "r", with_overrides(RunConfig(), ["data.rows=300"]), save_every=NEVER)
    session.load()
    session.close()
    left = RunStore(runs, "g")
    left.acquire()  # what the killed fork had done: locked the name, then started the marker's atomic write
    (left.dir / ".copying.json.12345.tmp").write_text('{"source": "r"}')
    left.close()
    assert "g" not in {r.name for r in list_runs(runs)}
    code, out = _main(["fork", "r", "g", "--at", "0", "--runs-dir", str(runs)], "", monkeypatch, capsys)
    assert code == 0, out
    assert {r.name: r for r in list_runs(runs)}["g"].state == "ok"


def test_an_undo_killed_at_the_finish_question_does_not_offer_the_dropped_work(tmp_path, monkeypatch, capsys):
    """A plan killed at epoch 3 (2 epochs left), ``undo`` typed at ``Finish the interrupted chunk?`` and killed
    inside. Before: the next open asked ``Finish the interrupted chunk (2 epochs left)?`` again; 'y' printed
    'finishing the interrupted work', then the open finished the undo (which drops that work) and nothing
    was trained: the run stood at epoch 0 after the user had said yes to two epochs."""
    from lrctl.plan import requests
    from lrctl.session import Observer

    class KillInEpoch3(Observer):
        def epoch_done(self, record, metric) -> None:
            if record.step == 3:  # the first epoch of the second chunk: the checkpoint stays at epoch 3
                raise SimKill("after epoch 3")

    runs = tmp_path / "runs"
    cfg = with_overrides(RunConfig(), ["data.rows=300"])
    session = RunSession.open(runs, "r", cfg, save_every=NEVER, observer=KillInEpoch3())
    session.load()
    with pytest.raises(SimKill):
        session.run_plan(requests([(3, "0.03"), (2, "0.01")]))
    simulate_kill(session)
    session = RunSession.open(runs, "r", cfg, save_every=NEVER)
    session.load()
    assert session.pending is not None

    kill_during(session.undo,
                at=lambda name: name == "write journal.jsonl" and session.store.interrupted_undo() is not None)
    simulate_kill(session)
    code, out = _main(["--run", "r", "--runs-dir", str(runs)], "y\nn\n", monkeypatch, capsys)
    assert code == 0, out
    assert "Finish the interrupted chunk" not in out and "finishing the interrupted work" not in out, out
    assert out.index("an undo from epoch 3 to 0 was interrupted") < out.index("Continue training?"), out


def test_repairs_a_killed_open_made_are_said_before_the_first_question(tmp_path, monkeypatch, capsys):
    """An open of a damaged run killed after its repairs: nothing on disk is damaged any more, yet the
    next ``lrctl --run`` loads first and says what was found before it asks anything."""
    from lrctl.runstore import CHECKPOINT_FILE

    runs = tmp_path / "runs"
    cfg = with_overrides(RunConfig(), ["data.rows=300"])
    session = RunSession.open(runs, "r", cfg, save_every=float("inf"))
    session.load()
    session.train(2, "0.03")
    session.close()
    latest = runs / "r" / CHECKPOINT_FILE
    latest.write_bytes(latest.read_bytes()[:100])
    session = RunSession.open(runs, "r", cfg, save_every=float("inf"))
    renamed = {"done": False}

    def after_the_repaired_checkpoint_is_in_place(name: str) -> bool:
        if name == f"rename {CHECKPOINT_FILE}":
            renamed["done"] = True
            return False
        return renamed["done"]

    kill_during(session.load, at=after_the_repaired_checkpoint_is_in_place)
    simulate_kill(session)
    code, out = _main(["--run", "r", "--runs-dir", str(runs)], "n\n", monkeypatch, capsys)
    assert code == 0, out
    said = out.index("found by an earlier start that ended before it could say so")
    assert said < out.index("Continue training?"), out
