"""Data-parallel runs under torchrun (CPU, gloo, 2 processes): the piped session, resume across process
counts, ranks that disagree, a NaN on one rank. Signals and kills: ``test_distributed_signals.py``;
several nodes: ``test_multinode.py`` (separate files so that the runner's two workers share them)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lrctl.data import shard, shard_range
from tests.conftest import lrctl_env, read_checkpoint, read_scalars, run_main

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
