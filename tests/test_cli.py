"""The `lrctl` command line through `main(argv)` with a piped stdin (one real process for the closed pipe),
checked through TensorBoard's own reader."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import assert_states_equal, read_checkpoint, read_scalars, run_main

TRANSCRIPT = "y\n30\n0.03\ny\n30\n0.01\nn\n"


@pytest.fixture(scope="module")
def two_chunk_run(tmp_path_factory) -> tuple[Path, object]:
    cwd = tmp_path_factory.mktemp("cli")
    result = run_main(["--run", "demo"], cwd, stdin=TRANSCRIPT)
    return cwd, result


def test_piped_transcript_trains_both_chunks_and_logs_each_step_once(two_chunk_run):
    cwd, result = two_chunk_run
    assert result.returncode == 0, result.stderr
    assert "\x1b[" not in result.stdout  # plain output on a pipe: no cursor or colour codes
    assert "run 'demo' (new)" in result.stdout
    assert "saved run 'demo' at epoch 60 · resume with: lrctl --run demo" in result.stdout
    scalars = read_scalars(cwd / "runs" / "demo")
    for tag in ("train_mse", "test_mse", "lr"):
        assert [s for s, _ in scalars[tag]] == list(range(60)), tag
    lrs = dict(scalars["lr"])
    assert all(lrs[s] == pytest.approx(0.03) for s in range(30))
    assert all(lrs[s] == pytest.approx(0.01) for s in range(30, 60))


def test_checkpoint_is_a_plain_weights_only_dict(two_chunk_run):
    cwd, _ = two_chunk_run
    state = read_checkpoint(cwd / "runs" / "demo" / "checkpoint.pt")
    assert state["global_step"] == 60
    assert {"model", "optimizer", "schedule", "rng", "history", "pending", "lrctl_version"} <= state.keys()
    assert len(state["history"]) == 60


def test_second_session_resumes_at_step_60(two_chunk_run, tmp_path):
    import shutil

    cwd = tmp_path
    shutil.copytree(two_chunk_run[0] / "runs", cwd / "runs")
    before = read_checkpoint(cwd / "runs" / "demo" / "checkpoint.pt")
    result = run_main(["--run", "demo"], cwd, stdin="y\n30\n0.01\nn\n")
    assert result.returncode == 0, result.stderr
    assert "resumed at epoch 60" in result.stdout
    assert "training epochs 60..89" in result.stdout
    scalars = read_scalars(cwd / "runs" / "demo")
    assert [s for s, _ in scalars["train_mse"]] == list(range(90))
    # The second session started from exactly the saved weights: replaying its chunk in-process
    # from the first session's checkpoint gives the same final weights.
    from lrctl.config import RunConfig
    from lrctl.engine import Trainer
    from lrctl.schedules import parse

    trainer = Trainer(RunConfig())
    trainer.load_state_dict(before)
    trainer.start_schedule(parse("0.01"), 30)
    trainer.fit_rec(30)
    after = read_checkpoint(cwd / "runs" / "demo" / "checkpoint.pt")
    import torch

    assert all(torch.equal(trainer.model.state_dict()[k], after["model"][k]) for k in after["model"])


def test_bad_answers_are_refused_and_the_run_trains_what_was_finally_asked(workdir):
    answers = "maybe\ny\nten\n0\n-3\n1.5\n2\nabc\n0\n-0.1\nnan\ninf\n1e400\n1_0\n０.１\n0.02\nn\n"
    result = run_main(["--run", "bad"], workdir, stdin=answers)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for message in ("answer y or n, not 'maybe'", "epochs must be a whole number like 30, not 'ten'",
                    "epochs must be at least 1, not 0", "epochs must be at least 1, not -3",
                    "epochs must be a whole number like 30, not '1.5'", "unknown schedule 'abc'",
                    "learning rate must be > 0, not 0", "learning rate must be > 0, not -0.1",
                    "must be a finite number, not 'nan'", "must be a finite number, not 'inf'",
                    "learning rate '1e400' is too large", "not '1_0'", "not '０.１'"):
        assert message in out, message
    scalars = read_scalars(workdir / "runs" / "bad")
    assert scalars["lr"] == [(0, pytest.approx(0.02)), (1, pytest.approx(0.02))]


def test_end_of_input_at_any_prompt_saves_and_exits_0(workdir):
    result = run_main(["--run", "eof"], workdir, stdin="y\n2\n")
    assert result.returncode == 0, result.stderr
    assert "saved run 'eof' at epoch 0" in result.stdout
    assert (workdir / "runs" / "eof" / "checkpoint.pt").exists()


def test_plan_runs_without_prompting(workdir):
    result = run_main(["--run", "p", "--plan", "3@0.03;2@exp 0.05 gamma=0.5"], workdir)
    assert result.returncode == 0, result.stderr
    assert "Continue training?" not in result.stdout
    lrs = read_scalars(workdir / "runs" / "p")["lr"]
    assert [round(v, 6) for _, v in lrs] == [0.03, 0.03, 0.03, 0.05, 0.025]


def test_bad_plan_and_bad_run_names_touch_nothing(workdir):
    result = run_main(["--run", "x", "--plan", "3@0.03;2@exp 0.05 gama=0.5"], workdir)
    assert result.returncode == 2
    assert "plan chunk 2" in result.stderr and "unknown option 'gama' for exp" in result.stderr
    for name in ("../x", "/etc", "", "a/b", "..", "x y"):
        result = run_main(["--run", name, "--plan", "1@0.1"], workdir)
        assert result.returncode == 1 and "invalid run name" in result.stderr, name
    assert not (workdir / "runs").exists()


def test_closed_output_pipe_ends_quietly_with_the_run_saved(workdir):
    import subprocess
    import sys

    from tests.conftest import lrctl_env

    cmd = f"{sys.executable} -m lrctl --run pipe --plan 200@0.01 | head -3"
    result = subprocess.run(["bash", "-c", f"set -o pipefail; {cmd}"], cwd=workdir, env=lrctl_env(),
                            capture_output=True, text=True, timeout=180)
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr
    assert result.returncode == 0  # pipefail: lrctl's own exit code, 0 like other tools' on a closed pipe
    assert len(result.stdout.splitlines()) == 3
    state = read_checkpoint(workdir / "runs" / "pipe" / "checkpoint.pt")
    assert 0 < state["global_step"] < 200


def test_schedule_command_prints_epoch_lr_lines(workdir):
    result = run_main(["schedule", "exp 0.05 gamma=0.5", "--epochs", "3"], workdir)
    assert result.returncode == 0
    assert result.stdout.split("\n")[:3] == ["0 0.05", "1 0.025", "2 0.0125"]
    result = run_main(["schedule", "exp 0.05 gama=0.5", "--epochs", "3"], workdir)
    assert result.returncode == 2 and "unknown option 'gama' for exp (options: gamma)" in result.stderr


def test_every_option_of_every_command_has_a_help_string():
    import argparse

    from lrctl.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    missing = [f"{name} {'/'.join(action.option_strings) or action.dest}"
               for name, parser in sub.choices.items() for action in parser._actions
               if not action.help and not isinstance(action, argparse._HelpAction)]
    assert missing == []


@pytest.mark.parametrize("command,expected", [
    ("send", ["status", "lr VALUE [set|scale|restart]", "pause, resume", "checkpoint"]),
    ("schedule", ["exp 0.05 gamma=0.95", "cos 0.03 min=0.0001", "power 0.03 s=10 c=1", "warmup=5"]),
    ("find-lr", ["the sweep's first lr", "the sweep's last lr", "steps in the sweep"]),
    ("tb", ["--port PORT", "Flags after -- go to", "scalars=1000000"]),
    ("export", ["one row per epoch"]),
])
def test_help_pages_explain_commands_and_families(capsys, command, expected):
    from lrctl.cli import main

    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines to the terminal's width
    for text in expected:
        assert " ".join(text.split()) in out, text


def test_ctrl_c_at_the_first_prompt_says_at_once_why_it_waits(tmp_path, monkeypatch):
    """The toolbar vanishes at Ctrl-C; while torch still loads, a line says what lrctl waits for."""
    import io
    import sys
    import threading

    from lrctl import app
    from lrctl.config import RunConfig
    from lrctl.session import RunSession
    from lrctl.view import View

    loaded = threading.Event()

    class Screen(io.StringIO):
        def write(self, text):
            if "once PyTorch has finished loading" in text:
                loaded.set()  # torch "finishes" only once the line is out: the line came first
            return super().write(text)

    class SlowLoader(app._Loader):
        def _run(self):
            if not loaded.wait(timeout=60):
                self.error = AssertionError("nothing said while waiting for torch")

    class CtrlC(io.StringIO):
        def readline(self, *args):
            raise KeyboardInterrupt

    monkeypatch.setattr(sys, "stdin", CtrlC())
    screen = Screen()
    view = View(file=screen, interactive=False)
    session = RunSession.open(tmp_path, "r", RunConfig(), observer=view)
    try:
        assert app._run_repl([session, None], SlowLoader(session), view, False, None) == (0, "interrupt")
    finally:
        session.store.close()
    assert "saving run 'r' once PyTorch has finished loading" in screen.getvalue()


def test_opening_a_run_does_not_import_torch(tmp_path):
    """The first question appears before torch loads: opening (lock, config, journal, plan) needs none."""
    code = ("import sys\nfrom pathlib import Path\nfrom lrctl.config import RunConfig\n"
            "from lrctl.session import RunSession\nfrom lrctl.plan import requests\n"
            f"s = RunSession.open(Path({str(tmp_path)!r}), 'a', RunConfig(), plan=requests([(2, '0.03')]))\n"
            "s.store.close()\nprint('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stdout + result.stderr


@pytest.mark.parametrize("plan, message", [
    ("2@keep", "nothing to keep yet"),
    ("2@warmup=2 cos 0.03", "leaves none of the chunk's 2 epochs"),
    ("3@0.03;2@warmup=2 cos 0.03", "leaves none of the chunk's 2 epochs"),
])
def test_a_new_runs_plan_it_cannot_train_is_refused_before_the_run_exists(tmp_path, capsys, plan, message):
    from lrctl.cli import main

    code = main(["--run", "p", "--runs-dir", str(tmp_path / "runs"), "--plan", plan])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("lrctl: --plan: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "runs" / "p").exists()  # no run left with work that no resume could finish


LOST_PLAN = [(3, "0.03"), (3, "0.01")]


def _killed_at_epoch_4_with_pending_json_deleted(runs) -> None:
    """Plan 3@0.03;3@0.01 killed (as by kill -9) after epoch 4, then its pending.json deleted."""
    from lrctl.plan import requests
    from lrctl.runstore import PENDING_FILE
    from tests.test_lifecycle import SimKill, simulate_kill
    from tests.test_seams import KillAtEpoch, open_run

    session = open_run(runs, observer=KillAtEpoch(4))
    with pytest.raises(SimKill):
        session.run_plan(requests(LOST_PLAN))
    simulate_kill(session)
    (runs / "r" / PENDING_FILE).unlink()


def test_what_loading_found_is_said_when_the_user_quits_at_the_first_question(tmp_path, monkeypatch, capsys):
    """A missing pending.json is reported before the first question; quitting there (Ctrl-D) keeps the
    rebuilt work for resume."""
    import io

    from lrctl.cli import main
    from lrctl.runstore import PENDING_FILE

    runs = tmp_path / "runs"
    _killed_at_epoch_4_with_pending_json_deleted(runs)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # Ctrl-D at the first question
    assert main(["--run", "r", "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    assert "pending.json is missing" in out and "3@0.01 from epoch 3" in out
    assert json.loads((runs / "r" / PENDING_FILE).read_text())["chunks"][0]["start"] == 3  # kept for resume


def test_a_lost_pending_file_is_noticed_before_the_first_question_which_offers_the_work(tmp_path, monkeypatch,
                                                                                         capsys):
    """The journal says a command reaches past the checkpoint but pending.json is gone: the run loads before
    the first question, so it is "Finish the interrupted chunk?" and 'y' trains the lost work exactly
    (it used to ask "Continue training?", and a new chunk silently replaced the work)."""
    import io

    from lrctl.cli import main
    from tests.test_seams import uninterrupted

    runs = tmp_path / "runs"
    _killed_at_epoch_4_with_pending_json_deleted(runs)
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\nn\n"))
    assert main(["--run", "r", "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    assert "Finish the interrupted chunk" in out and "Continue training?" in out
    assert out.index("pending.json is missing") < out.index("Finish the interrupted chunk")
    assert_states_equal(read_checkpoint(runs / "r" / "checkpoint.pt"), uninterrupted(tmp_path / "ref", LOST_PLAN))


def test_schedule_command_refuses_a_warm_up_as_long_as_its_epochs(capsys):
    from lrctl.cli import main

    assert main(["schedule", "warmup=5 cos 0.03", "--epochs", "5"]) == 2  # was a traceback
    assert capsys.readouterr().err == "lrctl: warmup=5 leaves none of the chunk's 5 epochs for cos\n"
