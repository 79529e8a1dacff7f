"""torchrun and signals (CPU, gloo, 2 processes): a worker killed mid-chunk, Ctrl-C from a terminal and as
a signal, a signal at a piped prompt. In its own file so that the test runner can run it beside the rest
of the torchrun tests (each starts real processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import answer_chunk, read_checkpoint, read_scalars, run_main
from tests.test_distributed import dist_env, journal, read_until, run_torchrun, steps, torchrun, worker_pid

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find a worker")


@pytest.mark.slow
def test_killing_a_worker_mid_chunk_with_max_restarts_finishes_the_job(tmp_path):
    args = ["--run", "k", "--plan", "20@0.03", "--save-every", "0"]
    process = subprocess.Popen(torchrun(args, restarts=1), cwd=tmp_path, env=dist_env(), text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = read_until(process, "epoch     5")
    os.kill(worker_pid(process.pid, 1), signal.SIGKILL)
    output += process.stdout.readlines()
    assert process.wait(timeout=240) == 0, "".join(output)
    text = "".join(output)
    assert "restart 1" in text and "finishing what is left" in text
    # Rank 0 says in one line that another process went away, not with gloo's RuntimeError traceback.
    assert "Traceback" not in text, text
    said = [line for line in output if "lrctl: rank 0:" in line]  # none if torchrun's SIGTERM came first
    assert len(said) <= 1 and all("another" in line and "pair.cc" not in line for line in said), text
    run = tmp_path / "runs" / "k"
    for tag in ("train_mse", "test_mse", "lr"):
        assert steps(run, tag) == list(range(20))  # each step once: the restart hid what it redid
    # ... and the restarted job ends exactly where an uninterrupted one does.
    reference = run_torchrun(["--run", "ref", "--plan", "20@0.03", "--save-every", "0"], tmp_path)
    assert reference.returncode == 0, reference.stdout + reference.stderr
    import torch

    killed, clean = read_checkpoint(run / "checkpoint.pt"), read_checkpoint(tmp_path / "runs" / "ref" / "checkpoint.pt")
    for key in clean["model"]:
        assert torch.equal(killed["model"][key], clean["model"][key]), key
    assert read_scalars(run)["train_mse"] == read_scalars(tmp_path / "runs" / "ref")["train_mse"]


@pytest.mark.slow
def test_sigint_to_torchrun_stops_every_rank_after_the_same_epoch(tmp_path):
    # A terminal's Ctrl-C goes to torchrun (the workers have their own sessions); torchrun passes
    # SIGINT to every worker. The ranks agree on the epoch to stop after, save, and exit.
    process = subprocess.Popen(torchrun(["--run", "s", "--plan", "40@0.01"]), cwd=tmp_path, env=dist_env(),
                               text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    output = read_until(process, "epoch     3")
    sent = run_main(["send", "s", "lr", "0.02"], tmp_path)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    process.send_signal(signal.SIGINT)
    output += process.stdout.readlines()
    process.wait(timeout=120)
    text = "".join(output)
    assert "stopping after this epoch" in text and "the rest of the plan is saved" in text
    run = tmp_path / "runs" / "s"
    stopped = read_checkpoint(run / "checkpoint.pt")["global_step"]
    assert 4 <= stopped < 40
    [replicas] = journal(run, "replicas")
    assert replicas["step"] == stopped and replicas["weights"][0] == replicas["weights"][1]
    [change] = journal(run, "control")
    assert change["value"] == "0.02"  # applied on both ranks at one batch (equal weights say so)
    resumed = run_main(["resume", "s"], tmp_path, stdin="n\n")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert steps(run, "train_mse") == list(range(40))
    lrs = dict(read_scalars(run)["lr"])
    assert lrs[stopped] == pytest.approx(0.02) and lrs[39] == pytest.approx(0.02)  # the change survived the stop


@pytest.mark.slow
def test_ctrl_c_on_the_terminal_under_torchrun_returns_to_the_prompt(tmp_path):
    import pexpect

    command = torchrun(["--run", "t"])
    child = pexpect.spawn(command[0], command[1:], cwd=str(tmp_path), env=dist_env(), encoding="utf-8",
                          timeout=120, dimensions=(30, 120))
    answer_chunk(child, "400", "0.01")
    child.expect(r"epoch\s+3\s")
    child.send("\x03")  # read as a key by rank 0: torchrun gets no SIGINT, the job goes on
    child.expect_exact("stopping after this epoch")
    child.expect_exact("Continue training? [y/n]")
    child.sendline("n")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    stopped = read_checkpoint(tmp_path / "runs" / "t" / "checkpoint.pt")["global_step"]
    assert 4 <= stopped < 400


@pytest.mark.slow
def test_a_signal_from_torchrun_at_a_piped_prompt_session_saves_and_asks_nothing_more(tmp_path):
    process = subprocess.Popen(torchrun(["--run", "p"]), cwd=tmp_path, env=dist_env(), text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    process.stdin.write("y\n300\n0.01\n")  # stdin stays open: a prompt would wait for ever
    process.stdin.flush()
    output = read_until(process, "epoch     3")
    process.send_signal(signal.SIGINT)
    output += process.stdout.readlines()
    process.wait(timeout=120)
    text = "".join(output)
    assert "torchrun is ending the job: saved at epoch" in text
    assert text.count("Continue training? [y/n]") == 1
    stopped = read_checkpoint(tmp_path / "runs" / "p" / "checkpoint.pt")["global_step"]
    assert 4 <= stopped < 300
