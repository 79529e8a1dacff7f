"""lrctl.Run, the Python API: the same run as the terminal's (global step, TensorBoard, journal, exact
resume in a new process, NaN rollback, undo/fork), model and data objects fingerprinted, the prompt
through input(), Ctrl-C (the kernel's interrupt) as at the terminal."""

from __future__ import annotations

import builtins
import json
import os
import signal
import subprocess
import sys
import threading

import pytest
import torch

import lrctl
from lrctl.cli import main
from lrctl.runstore import RunError
from tests.conftest import REPO, assert_states_equal, lrctl_env, read_checkpoint, read_scalars
from tests.lesson_code import EXPERIMENTS, Net, experiment, split_loader, tensor_gen_reg


def test_import_lrctl_stays_cheap():
    code = "import sys, lrctl; assert 'torch' not in sys.modules and 'lrctl.api' not in sys.modules; lrctl.Run"
    assert subprocess.run([sys.executable, "-c", code], env=lrctl_env(), capture_output=True).returncode == 0


def test_the_lessons_own_dataloaders_and_model_give_the_lessons_numbers(tmp_path):
    """The notebook way: the lesson's objects handed to lrctl, two chunks; every number is the lesson's,
    the global step runs on across chunks, and TensorBoard and the journal have it all."""
    torch.manual_seed(420)
    train_loader, test_loader = split_loader(*tensor_gen_reg())
    torch.manual_seed(24)
    with lrctl.Run("lesson", model=Net(), data=(train_loader, test_loader), runs_dir=tmp_path) as run:
        assert run.fit(30, 0.03).status == "done"
        chunk = run.fit(30, "0.01")
        assert (chunk.start, chunk.end, run.step) == (30, 60, 60)
        history = run.history
    assert ([h["train"] for h in history], [h["test"] for h in history]) == experiment(EXPERIMENTS["30@0.03;30@0.01"])
    scalars = read_scalars(tmp_path / "lesson")
    assert [s for s, _ in scalars["train_mse"]] == list(range(60))
    commands = [e for e in _journal(tmp_path / "lesson") if e["event"] == "command"]
    assert [(c["source"], c["chunks"][0]["start"]) for c in commands] == [("python", 0), ("python", 30)]
    frozen = (tmp_path / "lesson" / "config.toml").read_text()
    assert 'source = "python"' in frozen and "Net, 65 parameters in 10 tensors" in frozen
    assert "train 700x5 -> 700x1, test 300x5 -> 300x1, sha256 " in frozen


def _journal(run_dir):
    return [json.loads(line) for line in (run_dir / "journal.jsonl").read_text().splitlines()]


JOB = '''
import sys, torch, lrctl

def make():
    """A user's notebook: data and a model (with dropout: it draws from the global RNG) made in cells."""
    torch.manual_seed(0)
    x = torch.randn(300, 4)
    y = (x ** 2).sum(1, keepdim=True) + 0.1 * torch.randn(300, 1)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Dropout(0.1), torch.nn.Linear(16, 1))
    return net, (x[:200], y[:200], x[200:], y[200:])

def job(runs_dir, name, chunks):
    net, data = make()
    torch.manual_seed(12345)  # the kernel's RNG elsewhere: a resumed run does not depend on it
    with lrctl.Run(name, model=net, data=data, optimizer="adam", batch_size=32, runs_dir=runs_dir) as run:
        for epochs, lr in chunks:
            run.fit(epochs, lr)
        return run.step

if __name__ == "__main__":
    chunks = [(int(e), lr) for e, lr in (c.split("@") for c in sys.argv[3:])]
    print(job(sys.argv[1], sys.argv[2], chunks))
'''


def test_resume_in_a_new_process_is_bit_identical(tmp_path):
    """A chunk in one kernel (a process), the next in another, ends bit-identical to one uninterrupted run."""
    script = tmp_path / "job.py"
    script.write_text(JOB)
    runs = tmp_path / "runs"
    result = subprocess.run([sys.executable, str(script), str(runs), "two", "4@0.01"], env=lrctl_env(),
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    namespace: dict = {}
    exec(compile(JOB, str(script), "exec"), namespace)
    assert namespace["job"](runs, "two", [(5, "cos 0.01")]) == 9  # this process: the second kernel
    assert namespace["job"](runs, "one", [(4, "0.01"), (5, "cos 0.01")]) == 9
    two, one = (read_checkpoint(runs / n / "checkpoint.pt") for n in ("two", "one"))
    assert_states_equal(two, one)
    assert read_scalars(runs / "two") == read_scalars(runs / "one")


def test_reopening_with_another_model_or_data_is_refused_and_changes_nothing(tmp_path):
    x, y = torch.randn(60, 3), torch.randn(60, 1)
    data = (x[:40], y[:40], x[40:], y[40:])
    with lrctl.Run("mine", model=torch.nn.Linear(3, 1), data=data, runs_dir=tmp_path) as run:
        run.fit(2, 0.1)
    before = (tmp_path / "mine" / "journal.jsonl").read_text()
    with pytest.raises(RunError, match=r"model.fingerprint: \"Linear, 4 parameters.*\(run\) -> \"Linear, 3 param"):
        lrctl.Run("mine", model=torch.nn.Linear(2, 1), data=data, runs_dir=tmp_path)
    with pytest.raises(RunError, match=r"data.fingerprint: .*sha256"):
        lrctl.Run("mine", model=torch.nn.Linear(3, 1), data=(x[:40], y[:40] + 1, x[40:], y[40:]), runs_dir=tmp_path)
    with pytest.raises(RunError, match="pass the same data= again"):
        lrctl.Run("mine", runs_dir=tmp_path)
    assert (tmp_path / "mine" / "journal.jsonl").read_text() == before
    with lrctl.Run("mine", model=torch.nn.Linear(3, 1), data=data, runs_dir=tmp_path) as run:  # the same: resumes
        assert run.step == 2


def test_the_cli_resumes_a_factory_run_and_explains_an_object_run(tmp_path, capsys):
    factories = str(REPO / "configs" / "example_factories.py")
    with lrctl.Run("f", model=f"{factories}:small_net", data=f"{factories}:sine_data", runs_dir=tmp_path) as run:
        run.fit(2, 0.01)
    assert main(["--run", "f", "--runs-dir", str(tmp_path), "--plan", "1@0.01"]) == 0
    assert read_checkpoint(tmp_path / "f" / "checkpoint.pt")["global_step"] == 3
    with lrctl.Run("p", model=torch.nn.Linear(5, 1), runs_dir=tmp_path) as run:  # a model object, the lesson's data
        run.fit(1, 0.01)
    capsys.readouterr()
    assert main(["--run", "p", "--runs-dir", str(tmp_path), "--plan", "1@0.01"]) == 1
    err = capsys.readouterr().err
    assert "made in Python with a model object" in err and "lrctl.Run('p', model=..., data=...)" in err


def test_prompt_asks_with_input_and_runs_the_prompts_commands(tmp_path, monkeypatch, capsys):
    answers = iter(["y", "3", "0.03", "y", "", "", "undo", "fork other", "n"])
    asked = []

    def fake_input(text=""):
        asked.append(text)
        return next(answers)

    monkeypatch.setattr(builtins, "input", fake_input)
    run = lrctl.Run("asked", runs_dir=tmp_path)
    assert run.prompt() == "quit"
    assert asked[:6] == ["Continue training? [y/n] ", "Epochs: ", "Learning rate: ", "Continue training? [y/n] ",
                         "Epochs [3]: ", "Learning rate [0.03]: "]
    assert (run.name, run.step) == ("other", 3)  # the second chunk undone, then forked
    run.close()
    assert read_checkpoint(tmp_path / "asked" / "checkpoint.pt")["global_step"] == 3


def test_methods_find_lr_plot_fork_and_nan_rollback(tmp_path, capsys):
    with lrctl.Run("m", runs_dir=tmp_path) as run:
        run.fit(3, 0.03)
        weights = read_checkpoint(tmp_path / "m" / "checkpoint.pt")["model"]
        suggestion = run.find_lr(batches=30)
        out = capsys.readouterr().out
        assert run.step == 3 and "sweep in TensorBoard" in out
        assert (suggestion is None and "no suggestion" in out) or (1e-6 < suggestion < 1 and "suggest" in out)
        outcome = run.fit(5, 1e6)
        assert (outcome.status, run.step) == ("diverged", 3)
        assert all(torch.equal(v, run.model.state_dict()[k]) for k, v in weights.items())
        run.plot(png=tmp_path / "m.png")
        assert (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "global epoch" in capsys.readouterr().out  # the text chart outside a notebook
        assert run.fork("m2") is run and run.name == "m2"
        run.fit(1, 0.01)
    assert read_checkpoint(tmp_path / "m2" / "checkpoint.pt")["global_step"] == 4
    assert read_checkpoint(tmp_path / "m" / "checkpoint.pt")["global_step"] == 3


def test_a_second_run_object_for_the_same_run_takes_it_over(tmp_path):
    first = lrctl.Run("twice", runs_dir=tmp_path)
    first.fit(1, 0.01)
    second = lrctl.Run("twice", runs_dir=tmp_path)  # a notebook cell executed again
    assert second.step == 1
    with pytest.raises(RunError, match="closed"):
        first.fit(1, 0.01)
    second.close()


def test_interrupt_stops_after_the_epoch_and_twice_abandons(tmp_path):
    """SIGINT, as a Jupyter kernel's interrupt button sends it: once stops after the epoch (kept, the rest
    pending: a new Run finishes it, bit-identical to a chunk never stopped), twice abandons the epoch."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers need the main thread")
    plan: dict = {}

    def interrupting(run):
        def batch_done(batch, batches):
            for _ in range(plan.get((run.step, batch), 0)):
                os.kill(os.getpid(), signal.SIGINT)

        run.view.wants_batches, run.view.batch_done = True, batch_done
        return run

    run = interrupting(lrctl.Run("int", runs_dir=tmp_path, save_every=1e9))
    plan[(2, 5)] = 1
    stopped = run.fit(10, 0.03)
    assert (stopped.status, run.step) == ("stopped", 3)
    run.close()
    run = interrupting(lrctl.Run("int", runs_dir=tmp_path, save_every=1e9))
    assert run.finish().status == "done" and run.step == 10
    with lrctl.Run("ref", runs_dir=tmp_path) as ref:
        ref.fit(10, 0.03)
    assert_states_equal(*(read_checkpoint(tmp_path / n / "checkpoint.pt") for n in ("int", "ref")))
    plan[(12, 5)] = 2
    abandoned = run.fit(10, 0.03)
    assert (abandoned.status, run.step) == ("abandoned", 12)  # only the running epoch (12) is dropped
    plan.clear()
    assert run.fit(1, 0.03).status == "done"
    run.close()


def test_config_file_overrides_and_settings_are_frozen_and_kept_on_reopen(tmp_path):
    with lrctl.Run("c", config=REPO / "configs" / "lesson.toml", overrides=["train.batch_size=25"], order="seeded",
                   runs_dir=tmp_path) as run:
        assert run._session.trainer.batches_per_epoch == 28
    frozen = (tmp_path / "c" / "config.toml").read_text()
    assert "batch_size = 25" in frozen and 'order = "seeded"' in frozen
    with lrctl.Run("c", runs_dir=tmp_path) as run:  # left out: the run's own settings
        assert run._session.cfg.train.order == "seeded"
    with pytest.raises(RunError, match=r'train.order: "seeded" \(run\) -> "lesson" \(given\)'):
        lrctl.Run("c", order="lesson", runs_dir=tmp_path)
