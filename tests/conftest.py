"""Shared fixtures: a temp working directory for runs, the real CLI as a subprocess, TensorBoard's reader."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def lrctl_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("COLUMNS", None)
    return env


def run_lrctl(args: list[str], cwd: Path, stdin: str = "", timeout: float = 180) -> subprocess.CompletedProcess:
    """The real entry point (``python -m lrctl``) with ``stdin`` piped in."""
    return subprocess.run([sys.executable, "-m", "lrctl", *args], input=stdin, capture_output=True, text=True,
                          cwd=cwd, env=lrctl_env(), timeout=timeout)


def start_lrctl(args: list[str], cwd: Path, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lrctl", *args], cwd=cwd, env=lrctl_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs)


def read_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in one TensorBoard run directory, as TensorBoard itself reads it."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not logdir.is_dir():
        return {}
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def read_checkpoint(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def assert_states_equal(a: dict, b: dict) -> None:
    """Model, optimizer and history bit-identical (torch.equal on every tensor)."""
    import torch

    def walk(x, y, where):
        if isinstance(x, torch.Tensor):
            assert torch.equal(x, y), f"tensor differs at {where}"
        elif isinstance(x, dict):
            assert x.keys() == y.keys(), f"keys differ at {where}"
            for k in x:
                walk(x[k], y[k], f"{where}.{k}")
        elif isinstance(x, (list, tuple)):
            assert len(x) == len(y), f"length differs at {where}"
            for i, (p, q) in enumerate(zip(x, y, strict=True)):
                walk(p, q, f"{where}[{i}]")
        else:
            assert x == y, f"{where}: {x!r} != {y!r}"

    for key in ("model", "optimizer", "schedule", "global_step", "history", "rng"):
        walk(a[key], b[key], key)


def spawn_tty(args: list[str], cwd: Path, columns: int = 120):
    """The real entry point on a pseudo-terminal (pexpect)."""
    import pexpect

    return pexpect.spawn(sys.executable, ["-m", "lrctl", *args], cwd=str(cwd), env=lrctl_env(),
                         encoding="utf-8", timeout=120, dimensions=(30, columns))


def answer_chunk(child, epochs: str, lr: str) -> None:
    """Answer y, epochs and lr at a terminal prompt, each after its question appears."""
    for question, answer in (("Continue training? [y/n]", "y"), ("Epochs:", epochs), ("Learning rate:", lr)):
        child.expect_exact(question)
        child.sendline(answer)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A directory to run lrctl in; runs land in ``workdir/runs``."""
    return tmp_path
