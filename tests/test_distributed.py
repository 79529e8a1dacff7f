"""Data-parallel runs under torchrun (CPU, gloo, 2 processes): the piped session, resume across process
counts, a worker killed mid-chunk, Ctrl-C from a terminal and as a signal, ranks that disagree."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lrctl.data import shard, shard_range
from tests.conftest import answer_chunk, lrctl_env, read_checkpoint, read_scalars, run_main

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find a worker")


def torchrun(args: list[str], restarts: int = 0) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
            f"--max-restarts={restarts}", "-m", "lrctl", "--", *args]


def dist_env() -> dict[str, str]:
    return {**lrctl_env(), "OMP_NUM_THREADS": "1"}


def run_torchrun(args: list[str], cwd: Path, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(torchrun(args), input=stdin, capture_output=True, text=True, cwd=cwd, env=dist_env(),
                          timeout=240)


def steps(run: Path, tag: str) -> list[int]:
    return [step for step, _ in read_scalars(run)[tag]]


def journal(run: Path, event: str) -> list[dict]:
    lines = (run / "journal.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == event]


def worker_pid(agent_pid: int, rank: int) -> int:
    """The pid of torchrun's worker with RANK=rank (workers are the agent's children)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if parent == agent_pid and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    raise AssertionError(f"no worker with RANK={rank} under {agent_pid}")


def read_until(process: subprocess.Popen, prefix: str) -> list[str]:
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith(prefix):
            return lines
    raise AssertionError(f"the output ended before {prefix!r}:\n{''.join(lines)}")


# -- pure parts ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("n", "batch_size", "world"), [(700, 50, 2), (701, 50, 3), (5, 4, 2), (9, 2, 4)])
def test_shards_cover_every_batch_once_and_weigh_to_the_whole_batch(n, batch_size, world):
    shards = [shard(n, batch_size, rank, world) for rank in range(world)]
    for b in range(-(-n // batch_size)):
        lo, hi = b * batch_size, min(n, (b + 1) * batch_size)
        rows = []
        for s in shards:
            start, stop = s.bounds[b]
            part = s.positions[start:stop]
            assert stop > start  # every rank takes part in every optimizer step
            if s.scales[b]:
                rows += part
                # a rank's mean loss times its scale, averaged over ranks by DDP, weighs each row 1/batch
                assert s.scales[b] / (world * len(part)) == pytest.approx(1 / (hi - lo))
        assert sorted(rows) == list(range(lo, hi))  # disjoint, and all of the batch
    assert sum(b - a for a, b in (shard_range(n, r, world) for r in range(world))) == n


# -- torchrun -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_chunks(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    cwd = tmp_path_factory.mktemp("ddp")
    result = run_torchrun(["--run", "r"], cwd, stdin="y\n3\n0.03\ny\n2\n0.01\nn\n")
    return cwd, result


@pytest.mark.slow
def test_piped_two_chunk_session_under_torchrun(two_chunks):
    from lrctl.config import load
    from lrctl.distributed import state_digest
    from lrctl.engine import Trainer

    cwd, result = two_chunks
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("Continue training? [y/n]") == 3  # one prompt: only rank 0 reads and prints
    run = cwd / "runs" / "r"
    for tag in ("train_mse", "test_mse", "lr"):
        assert steps(run, tag) == [0, 1, 2, 3, 4]
    checkpoint = read_checkpoint(run / "checkpoint.pt")
    replicas = journal(run, "replicas")
    assert [r["step"] for r in replicas] == [3, 5]
    for r in replicas:
        assert len(r["weights"]) == 2 and r["weights"][0] == r["weights"][1]
    assert replicas[-1]["weights"][0] == state_digest(checkpoint["model"])
    # The all-reduced metrics are the whole-set numbers: evaluate the saved model on one process.
    trainer = Trainer(load(None)[0])
    trainer.load_state_dict(checkpoint)
    train, test, _ = trainer.evaluate()
    logged = read_scalars(run)
    assert logged["train_mse"][-1][1] == pytest.approx(train, rel=1e-5)
    assert logged["test_mse"][-1][1] == pytest.approx(test, rel=1e-5)


@pytest.mark.slow
def test_run_trained_on_two_processes_resumes_on_one_and_back(two_chunks, tmp_path):
    cwd, result = two_chunks
    assert result.returncode == 0
    shutil.copytree(cwd / "runs", tmp_path / "runs")
    run = tmp_path / "runs" / "r"
    one = run_main(["--run", "r", "--plan", "2@0.01"], tmp_path)
    assert one.returncode == 0, one.stdout + one.stderr
    assert "epoch     5" in one.stdout
    assert read_checkpoint(run / "checkpoint.pt")["global_step"] == 7
    two = subprocess.run([sys.executable, "-m", "lrctl", "--nproc", "2", "--run", "r", "--plan", "1@0.01"],
                         capture_output=True, text=True, cwd=tmp_path, env=dist_env(), timeout=240)
    assert two.returncode == 0, two.stdout + two.stderr
    assert "data-parallel: 2 processes" in two.stdout
    assert steps(run, "train_mse") == list(range(8))
    assert read_checkpoint(run / "checkpoint.pt")["global_step"] == 8


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
def test_ranks_with_different_data_fail_together_with_a_clear_error(tmp_path):
    (tmp_path / "rankdata.py").write_text(
        "import os, torch\n"
        "def data():\n"
        "    n = 100 + 10 * int(os.environ.get('RANK', '0'))  # a node with another version of the data\n"
        "    g = torch.Generator().manual_seed(0)\n"
        "    x = torch.randn(n, 3, generator=g)\n"
        "    return x, x.sum(1, keepdim=True), x[:20], x[:20].sum(1, keepdim=True)\n")
    (tmp_path / "rank.toml").write_text('[data]\nsource = "factory"\nfactory = "rankdata.py:data"\n'
                                        '[model]\nbatch_norm = "none"\n')
    result = run_torchrun(["--run", "d", "--config", "rank.toml", "--plan", "2@0.01", "--dist-timeout", "30"],
                          tmp_path)
    assert result.returncode != 0
    text = result.stdout + result.stderr
    assert "the ranks disagree" in text and "train rows: rank 0 has 100, rank 1 has 110" in text
    assert not (tmp_path / "runs" / "d").exists()  # a new run that never trained leaves nothing behind


@pytest.mark.slow
def test_a_missing_rank_is_an_error_not_a_hang(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**lrctl_env(), "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port)}
    result = subprocess.run([sys.executable, "-m", "lrctl", "--run", "m", "--plan", "1@0.01", "--dist-timeout", "2"],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert result.returncode == 1
    assert "did not all join within 2 s" in result.stderr and "Is a rank missing?" in result.stderr
    assert not (tmp_path / "runs" / "m").exists()


@pytest.mark.slow
def test_a_nan_on_one_rank_rolls_every_rank_back_together(tmp_path):
    (tmp_path / "nandata.py").write_text(
        "import torch\n"
        "def data():\n"
        "    g = torch.Generator().manual_seed(0)\n"
        "    x = torch.randn(100, 3, generator=g)\n"
        "    y = x.sum(1, keepdim=True)\n"
        "    y[37] = float('nan')  # one row: in one rank's part of one batch each epoch\n"
        "    return x, y, x[:20], x[:20].sum(1, keepdim=True)\n")
    (tmp_path / "nan.toml").write_text('[data]\nsource = "factory"\nfactory = "nandata.py:data"\n'
                                       '[model]\nbatch_norm = "none"\n')
    result = run_torchrun(["--run", "n", "--config", "nan.toml", "--plan", "3@0.01"], tmp_path)
    assert result.returncode != 0  # a diverged --plan exits 1, on every rank
    assert "rolled back to epoch 0" in result.stdout, result.stdout + result.stderr
    run = tmp_path / "runs" / "n"
    [diverged] = journal(run, "diverged")
    assert diverged["epoch"] == 0 and diverged["rolled_back_to"] == 0
    assert read_checkpoint(run / "checkpoint.pt")["global_step"] == 0


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


# -- several machines: two torchrun agents on this machine as two nodes ---------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_nodes(args: list[str], cwds: list[Path], rendezvous: list[str], stdin: str = "") -> list[str]:
    """Start one torchrun agent per cwd (a node each, one process per node), all at once, each with
    ``stdin`` piped in (only global rank 0 reads it); wait for all; return their outputs. Each node
    has its own directory: no shared filesystem."""
    processes = []
    for node, cwd in enumerate(cwds):
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=1",
                   *[r.replace("{node}", str(node)) for r in rendezvous], "-m", "lrctl", "--", *args]
        log = (cwd / "node.log").open("w")
        processes.append((subprocess.Popen(command, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                                           text=True, cwd=cwd, env=dist_env()), log))
    for process, _ in processes:
        process.stdin.write(stdin)
        process.stdin.close()
    outputs = []
    for (process, log), cwd in zip(processes, cwds, strict=True):
        code = process.wait(timeout=240)
        log.close()
        outputs.append((cwd / "node.log").read_text())
        assert code == 0, "\n".join(outputs)
    return outputs


def c10d(nnodes: str = "2") -> list[str]:
    # c10d assigns global ranks in the order the agents join, ignoring --node-rank (torchrun says so).
    return [f"--nnodes={nnodes}", "--node-rank={node}", "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{free_port()}"]


def main_node(cwds: list[Path], run: str) -> Path:
    """The node whose process was global rank 0: the one that has the run directory."""
    [main] = [cwd for cwd in cwds if (cwd / "runs" / run).exists()]
    return main


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory) -> tuple[list[Path], list[str]]:
    cwds = [tmp_path_factory.mktemp(f"node{n}") for n in range(2)]
    return cwds, run_nodes(["--run", "mn", "--plan", "3@0.03;2@0.01"], cwds, c10d())


@pytest.mark.slow
def test_a_plan_on_two_nodes_logs_whole_set_metrics_and_resumes_on_one_process(two_nodes, tmp_path):
    from lrctl.config import load
    from lrctl.engine import Trainer

    cwds, outputs = two_nodes
    main = main_node(cwds, "mn")
    assert "data-parallel: 2 processes" in outputs[cwds.index(main)]
    run = main / "runs" / "mn"
    assert steps(run, "train_mse") == [0, 1, 2, 3, 4]
    replicas = journal(run, "replicas")
    assert [r["step"] for r in replicas] == [3, 5] and all(r["weights"][0] == r["weights"][1] for r in replicas)
    trainer = Trainer(load(None)[0])
    trainer.load_state_dict(read_checkpoint(run / "checkpoint.pt"))
    train, test, _ = trainer.evaluate()
    logged = read_scalars(run)
    assert logged["train_mse"][-1][1] == pytest.approx(train, rel=1e-5)
    assert logged["test_mse"][-1][1] == pytest.approx(test, rel=1e-5)
    shutil.copytree(main / "runs", tmp_path / "runs")  # the next test compares with the 2-node checkpoint
    one = run_main(["--run", "mn", "--plan", "2@0.01"], tmp_path)
    assert one.returncode == 0, one.stdout + one.stderr
    assert steps(tmp_path / "runs" / "mn", "train_mse") == list(range(7))


@pytest.mark.slow
def test_a_piped_session_on_two_nodes_with_the_readmes_static_rendezvous_trains_the_same(two_nodes, tmp_path):
    import torch

    planned, _ = two_nodes
    cwds = [tmp_path / "node0", tmp_path / "node1"]
    for cwd in cwds:
        cwd.mkdir()
    static = ["--nnodes=2", "--node-rank={node}", "--master-addr=127.0.0.1", f"--master-port={free_port()}"]
    outputs = run_nodes(["--run", "mn"], cwds, static, stdin="y\n3\n0.03\ny\n2\n0.01\nn\n")
    assert outputs[0].count("Continue training? [y/n]") == 3 and "Continue training?" not in outputs[1]
    assert main_node(cwds, "mn") == cwds[0]  # static rendezvous: global rank 0 on node 0, as the README says
    piped = read_checkpoint(cwds[0] / "runs" / "mn" / "checkpoint.pt")
    plan = read_checkpoint(main_node(planned, "mn") / "runs" / "mn" / "checkpoint.pt")
    assert piped["global_step"] == plan["global_step"] == 5
    assert all(torch.equal(piped["model"][k], plan["model"][k]) for k in plan["model"])


@pytest.mark.slow
def test_an_elastic_range_of_nodes_forms_one_job_when_both_arrive(tmp_path):
    # --nnodes=1:2: the rendezvous waits last_call_timeout for more nodes after the first. (A node that
    # joins a job already training makes torchrun's agents re-rendezvous, which fails in torch 2.13's
    # agent with a store timeout; the run is left at its last checkpoint and `lrctl resume` finishes it.)
    cwds = [tmp_path / "a", tmp_path / "b"]
    for cwd in cwds:
        cwd.mkdir()
    outputs = run_nodes(["--run", "el", "--plan", "2@0.03"], cwds, [*c10d("1:2"), "--rdzv-conf=last_call_timeout=3"])
    main = main_node(cwds, "el")
    assert "data-parallel: 2 processes" in outputs[cwds.index(main)]
    assert steps(main / "runs" / "el", "train_mse") == [0, 1]
