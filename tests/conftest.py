"""Shared fixtures: a temp working directory for runs, the CLI in-process (``run_main``) and as a real
subprocess (``run_lrctl``: only where the process boundary is the point), TensorBoard's reader."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


@dataclass
class Result:
    """What ``run_main`` saw, named like ``subprocess.CompletedProcess``."""

    returncode: int
    stdout: str
    stderr: str


class _Pipe(io.StringIO):
    """Captured output that is not a terminal, like a pipe (``isatty()`` is False, no ``fileno()``)."""


_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1)


def run_main(args: list[str], cwd: Path, stdin: str = "") -> Result:
    """``lrctl.cli.main(args)`` in this process, as ``run_lrctl`` runs it in a fresh one: in ``cwd``, with
    ``stdin`` piped in, stdout and stderr captured, an uncaught exception a traceback and exit code 1.

    Everything the app may change for the process is put back afterwards (cwd, standard streams, signal
    handlers, torch's thread count and RNG), and no lrctl thread (loader, control socket) may outlive it."""
    from lrctl.cli import main

    # torch's process-wide state, if torch is here already (imported here it would cost seconds that a
    # test racing a running process, like `lrctl send`, does not have; lrctl imports it only to train).
    torch = sys.modules.get("torch")
    before = {t.ident for t in threading.enumerate()}
    saved_cwd, saved_streams = os.getcwd(), (sys.stdin, sys.stdout, sys.stderr)
    saved_handlers = {s: signal.getsignal(s) for s in _SIGNALS}
    saved_torch = (torch.get_num_threads(), torch.get_rng_state()) if torch is not None else None
    saved_columns = os.environ.pop("COLUMNS", None)
    out, err = _Pipe(), _Pipe()
    try:
        os.chdir(cwd)
        sys.stdin, sys.stdout, sys.stderr = io.StringIO(stdin), out, err
        try:
            code = main(list(args))
        except SystemExit as e:  # argparse: --help, bad usage
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except Exception:  # what the interpreter does with an uncaught error
            traceback.print_exc(file=err)
            code = 1
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved_streams
        os.chdir(saved_cwd)
        for signum, handler in saved_handlers.items():
            signal.signal(signum, handler)
        if saved_torch is not None:
            torch.set_num_threads(saved_torch[0])
            torch.set_rng_state(saved_torch[1])
        if saved_columns is not None:
            os.environ["COLUMNS"] = saved_columns
    left = [t for t in threading.enumerate() if t.ident not in before and t.name.startswith("lrctl")]
    for thread in left:
        thread.join(timeout=10)
    assert not [t.name for t in left if t.is_alive()], "lrctl threads outlived main()"
    return Result(code, out.getvalue(), err.getvalue())


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


def direct_io_here(path: Path) -> bool:
    """Whether the file system under ``path`` takes ``O_DIRECT`` (the checkpoint writer's own blocks)."""
    from lrctl import checkpoint_writer

    with open(path / "probe", "wb") as f:
        return checkpoint_writer._set_direct(f.fileno(), True)


def fail_nth_write(monkeypatch: Any, n: int, error: OSError) -> list[int]:
    """The checkpoint writer's ``n``-th ``os.write`` raises ``error``; returns the lengths it was asked to write."""
    from lrctl import checkpoint_writer

    asked: list[int] = []
    real_write = checkpoint_writer.os.write

    def failing(fd: int, data: Any) -> int:
        asked.append(len(data))
        if len(asked) == n:
            raise error
        return real_write(fd, data)

    monkeypatch.setattr(checkpoint_writer.os, "write", failing)
    return asked
