"""TensorBoard on demand: the real ``tensorboard`` server for a runs directory, on 127.0.0.1 only.

``--load_fast=false`` makes TensorBoard read event files with its Python loader, which honours the
purge events lrctl writes when a run resumes after a crash or an undo (each step shows once).
``--samples_per_plugin=scalars=1000000`` keeps every point of a scalar tag up to a million (TensorBoard
keeps 1,000 by default, so a long run's curves would be downsampled; ``scalars=0`` is no way out: the
server's scalars plugin then downsamples to 0 points and draws nothing). Flags the user passes come
last and win.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

DEFAULT_FLAGS = ("--load_fast=false", "--reload_interval=2", "--samples_per_plugin=scalars=1000000")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TensorBoard:
    """A TensorBoard process; ``url`` once :meth:`start` returns; :meth:`stop` ends it."""

    def __init__(self, logdir: Path, port: int | None = None, extra_args: list[str] | tuple[str, ...] = ()) -> None:
        self.logdir, self.port = Path(logdir), port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen | None = None

    @property
    def command(self) -> list[str]:
        """The tensorboard command line: lrctl's defaults, then the user's flags (argparse: the last one wins)."""
        return [sys.executable, "-m", "tensorboard.main", "--logdir", str(self.logdir), "--host", "127.0.0.1",
                "--port", str(self.port), *DEFAULT_FLAGS, *self.extra_args]

    def start(self, timeout: float = 60.0) -> str:
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            self.command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tensorboard exited: {self.process.stderr.read()[-500:]}")
            try:
                with urllib.request.urlopen(self.url + "data/environment", timeout=1):
                    return self.url
            except OSError:
                time.sleep(0.2)  # polling a server we just started; it answers within seconds
        self.stop()
        raise RuntimeError(f"tensorboard did not answer on {self.url} within {timeout:.0f} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
