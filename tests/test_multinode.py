"""Several machines: two torchrun agents on this machine as two nodes (c10d rendezvous on 127.0.0.1), the
README's static rendezvous, and an elastic range of nodes."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import read_checkpoint, read_scalars, run_main
from tests.test_distributed import dist_env, journal, steps

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="torchrun agents as nodes")


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
