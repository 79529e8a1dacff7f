"""On a CUDA device (skipped without one; ``scripts/gpu-check`` runs them): the sync-free batch loop on
both data paths, resume from cuda to cpu and back, ``device = "auto"``, one-process torchrun on nccl."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from lrctl.config import RunConfig, with_overrides
from lrctl.engine import Trainer
from lrctl.plan import requests
from lrctl.schedules import parse
from lrctl.session import RunSession
from tests.conftest import assert_states_equal, lrctl_env, read_checkpoint, read_scalars

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
CUDA = ['train.device="cuda"']


class Squares(torch.utils.data.Dataset):
    """A per-item Dataset (the DataLoader path)."""

    def __init__(self, n: int) -> None:
        self.x = torch.linspace(-1, 1, n).reshape(-1, 1)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.x[i] ** 2


def squares():
    return Squares(400), Squares(100)


@pytest.fixture
def dataset_config(monkeypatch):
    import types

    module = types.ModuleType("lrctl_cuda_squares")
    module.squares = squares
    monkeypatch.setitem(sys.modules, "lrctl_cuda_squares", module)
    return ['data.source="factory"', 'data.factory="lrctl_cuda_squares:squares"', 'model.batch_norm="none"']


def _sync_free_epoch(trainer: Trainer) -> None:
    trainer.start_schedule(parse("cyclic 0.001 0.03"), 2)
    trainer.fit_rec(1)  # warm-up: first-use allocations and lazy initialisation may sync
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        trainer._run_batches(None)
    finally:
        torch.cuda.set_sync_debug_mode(0)


def test_tensor_path_batch_loop_is_sync_free():
    _sync_free_epoch(Trainer(with_overrides(RunConfig(), CUDA)))


def test_dataset_path_batch_loop_is_sync_free_with_pinned_batches(dataset_config):
    trainer = Trainer(with_overrides(RunConfig(), [*dataset_config, *CUDA, "train.workers=0"]))
    assert trainer._loaders.pin  # auto: pinned for CUDA, so the copies need not wait
    _sync_free_epoch(trainer)


def test_resume_from_cuda_to_cpu_and_back(tmp_path):
    plan = [("cuda", 3, "0.03"), ("cpu", 2, "0.01"), ("cuda", 2, "keep")]
    for device, epochs, lr in plan:
        session = RunSession.open(tmp_path, "moves", with_overrides(RunConfig(), [f'train.device="{device}"']))
        session.load()
        assert next(session.trainer.model.parameters()).device.type == device
        assert session.train(epochs, lr).status == "done"
        session.close()
        state = read_checkpoint(tmp_path / "moves" / "checkpoint.pt")
        assert all(t.device.type == "cpu" for t in state["model"].values())  # portable: saved from the CPU
    assert state["global_step"] == 7
    assert [s for s, _ in read_scalars(tmp_path / "moves")["train_mse"]] == list(range(7))


def test_resume_on_cuda_is_exact(tmp_path):
    cfg = with_overrides(RunConfig(), CUDA)
    whole = RunSession.open(tmp_path, "whole", cfg, save_every=1e9)
    whole.load()
    whole.run_plan(requests([(3, "0.03"), (3, "cos 0.03")]))
    whole.close()
    for chunk in ((3, "0.03"), (3, "cos 0.03")):
        part = RunSession.open(tmp_path, "parts", cfg, save_every=1e9)
        part.load()
        part.run_plan(requests([chunk]))
        part.close()
    assert_states_equal(read_checkpoint(tmp_path / "whole" / "checkpoint.pt"),
                        read_checkpoint(tmp_path / "parts" / "checkpoint.pt"))


def test_device_auto_picks_cuda_and_resumes_a_cpu_run_there(tmp_path):
    assert Trainer(with_overrides(RunConfig(), ['train.device="auto"'])).device.type == "cuda"
    for device in ("cpu", "auto"):
        session = RunSession.open(tmp_path, "auto", with_overrides(RunConfig(), [f'train.device="{device}"']))
        session.load()
        session.train(2, "0.01")
        session.close()
    assert session.trainer.device.type == "cuda"
    assert read_checkpoint(tmp_path / "auto" / "checkpoint.pt")["global_step"] == 4


def test_data_parallel_engine_on_an_nccl_group_of_one_matches_one_process(tmp_path):
    # lrctl forms no group for a one-process torchrun job, and nccl refuses two ranks on one GPU, so
    # the nccl path (DDP with device_ids, all-reduced metrics, shared batch-norm buffers) is run here
    # on a group of one, in this process: it must train and evaluate exactly as without the group.
    import torch.distributed as dist

    from lrctl.distributed import Group

    cfg = with_overrides(RunConfig(), CUDA)
    alone, shared = Trainer(cfg), Trainer(cfg)
    store = dist.HashStore()
    dist.init_process_group("cpu:gloo,cuda:nccl", store=store, rank=0, world_size=1)
    try:
        group = Group(0, 1, 0, 60, "cpu:gloo,cuda:nccl")
        shared.attach(group)
        for trainer in (alone, shared):
            trainer.start_schedule(parse("0.03"), 2)
        for a, b in zip(alone.fit_rec(2), shared.fit_rec(2), strict=True):
            assert (a.train, a.test) == pytest.approx((b.train, b.test), rel=1e-5)
    finally:
        dist.destroy_process_group()
    for key, value in alone.model.state_dict().items():
        assert torch.allclose(value, shared.model.state_dict()[key], rtol=1e-5, atol=1e-6), key


@pytest.mark.slow
def test_one_process_torchrun_job_trains_on_the_gpu(tmp_path):
    env = {**lrctl_env(), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1", "-m", "lrctl",
               "--", "--run", "gpu", "--set", 'train.device="cuda"', "--plan", "3@0.01"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert read_checkpoint(tmp_path / "runs" / "gpu" / "checkpoint.pt")["global_step"] == 3
