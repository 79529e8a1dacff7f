"""The REPL driven through prompt_toolkit's pipe input (no terminal), asserting on the run's state."""

from __future__ import annotations

import io

import pytest
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from lrctl.config import RunConfig
from lrctl.repl import PlainAsker, Repl, TerminalAsker
from lrctl.session import RunSession
from lrctl.view import View


def _feed(tmp_path, keys: str, name: str = "r") -> tuple[str, RunSession, str]:
    """Run a REPL on run ``name`` with ``keys`` typed into prompt_toolkit; return (reason, session, output)."""
    out = io.StringIO()
    view = View(file=out, interactive=False)
    session = RunSession.open(tmp_path, name, RunConfig(), save_every=1e9, observer=view)
    session.load()
    with create_pipe_input() as pipe:
        pipe.send_text(keys + "\x04")  # a trailing Ctrl-D: a test that runs out of answers ends, never hangs
        repl = Repl(session, view, None, lambda: None)
        repl.asker = TerminalAsker(session.store.dir / ".history", repl.toolbar, input=pipe, output=DummyOutput())
        reason = repl.run()
    session.close(reason)
    return reason, session, out.getvalue()


def test_two_chunks_then_no(tmp_path):
    reason, session, out = _feed(tmp_path, "y\r3\r0.03\ry\r2\rexp 0.05 gamma=0.5\rn\r")
    assert reason == "quit"
    assert session.global_step == 5
    assert [h["lr"] for h in session.trainer.history] == pytest.approx([0.03] * 3 + [0.05, 0.025])


def test_invalid_answers_ask_again_and_help_explains(tmp_path):
    reason, session, out = _feed(tmp_path, "what\rhelp\ry\r0\rhelp\r2\rexp 0.05 gama=0.9\rhelp\r0.01\rn\r")
    assert "answer y or n, not 'what'" in out
    assert "epochs must be at least 1, not 0" in out
    assert "unknown option 'gama' for exp (options: gamma)" in out
    assert "Continue training? [y/n]   y trains another chunk" in out  # general help
    assert "warmup=5 <any of the above>" in out  # the lr prompt's help lists the grammar
    assert session.global_step == 2


def test_empty_answer_repeats_the_previous_one(tmp_path):
    # at every question, Continue training? included (README and help say so)
    reason, session, out = _feed(tmp_path, "y\r2\r0.02\r\r\r\rn\r")
    assert reason == "quit"
    assert [h["lr"] for h in session.trainer.history] == pytest.approx([0.02] * 4)


def test_end_of_input_and_ctrl_c_at_a_prompt_end_the_session(tmp_path):
    assert _feed(tmp_path, "y\r2\r\x04", name="d")[0] == "eof"
    reason, session, _ = _feed(tmp_path, "y\r\x03", name="c")
    assert reason == "interrupt"
    assert (tmp_path / "c" / "checkpoint.pt").exists()


def test_history_is_kept_per_run_and_question(tmp_path):
    _feed(tmp_path, "y\r7\r0.004\rn\r")
    _feed(tmp_path, "y\r8\r0.005\rn\r")
    history = tmp_path / "r" / ".history"
    assert [line for line in (history / "epochs").read_text().splitlines() if line.startswith("+")] == ["+7", "+8"]
    assert "+0.005" in (history / "lr").read_text() and "+7" not in (history / "lr").read_text()


def test_preview_and_status_do_not_train(tmp_path):
    reason, session, out = _feed(tmp_path, "status\ry\r2\rpreview exp 0.1 gamma=0.5 3\r0.01\rn\r")
    assert "run 'r' at epoch 0" in out and "lr: no epoch trained yet" in out
    assert "preview of 'exp 0.1 gamma=0.5' over 3 epochs" in out
    assert "    2  0.025" in out
    assert session.global_step == 2


def test_keep_with_nothing_to_keep_is_refused(tmp_path):
    reason, session, out = _feed(tmp_path, "y\r2\rkeep\r0.01\rn\r")
    assert "nothing to keep yet" in out
    assert session.global_step == 2


def test_toolbar_names_run_epoch_and_metrics(tmp_path):
    reason, session, out = _feed(tmp_path, "y\r1\r0.03\rn\r")
    repl = Repl(session, View(file=io.StringIO(), interactive=False), None, lambda: None)
    bar = repl.toolbar()
    assert " r · epoch 1 · train_mse 37.9793 · test_mse 37.7321 · lr 0.03" in bar  # the lesson's own epoch 0


def test_plain_asker_echoes_answers_and_signals_eof():
    out = io.StringIO()
    asker = PlainAsker(io.StringIO("y\n"), out)
    from lrctl.commands import Question

    assert asker.ask(Question.CONTINUE, Question.CONTINUE.value) == "y"
    with pytest.raises(EOFError):
        asker.ask(Question.EPOCHS, Question.EPOCHS.value)
    assert out.getvalue() == "Continue training? [y/n] y\nEpochs: \n"
