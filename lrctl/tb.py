"""TensorBoard on demand: the real ``tensorboard`` server for a runs directory, on 127.0.0.1 only.

``--load_fast=false`` makes TensorBoard read event files with its Python loader, which honours the
purge events lrctl writes when a run resumes after a crash or an undo (each step shows once).

``lrctl tb`` serves in the foreground until SIGINT (Ctrl-C), SIGTERM or SIGHUP, then ends its
TensorBoard (its own process group: a terminal's Ctrl-C does not reach it) and exits 0; a signal
handler only sets a flag, so no handler ever waits on the child while the main thread does.

``--samples_per_plugin=scalars=1000000`` keeps every point of a scalar tag up to a million (TensorBoard
keeps 1,000 by default, so a long run's curves would be downsampled; ``scalars=0`` is no way out: the
server's scalars plugin then downsamples to 0 points and draws nothing). Flags the user passes come
last and win.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO

DEFAULT_FLAGS = ("--load_fast=false", "--reload_interval=2", "--samples_per_plugin=scalars=1000000")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _the_error(stderr: str) -> str:
    """TensorBoard's own "ERROR: ..." line when it printed one (its log also warns about every purge lrctl
    wrote, which would bury the reason), else the end of what it printed."""
    errors = [line.removeprefix("ERROR: ") for line in stderr.splitlines() if line.startswith("ERROR: ")]
    return errors[-1] if errors else stderr.strip()


class TensorBoard:
    """A TensorBoard process; ``url`` once :meth:`start` returns; :meth:`stop` ends it."""

    def __init__(self, logdir: Path, port: int | None = None, extra_args: list[str] | tuple[str, ...] = ()) -> None:
        self.logdir, self.port = Path(logdir), port or free_port()
        self.port_chosen_here = port is None
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen | None = None
        self.errors: IO[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def command(self) -> list[str]:
        """The tensorboard command line: lrctl's defaults, then the user's flags (argparse: the last one wins)."""
        return [sys.executable, "-m", "tensorboard.main", "--logdir", str(self.logdir), "--host", "127.0.0.1",
                "--port", str(self.port), *DEFAULT_FLAGS, *self.extra_args]

    def start(self, timeout: float = 60.0, cancel: threading.Event | None = None) -> str:
        """Start TensorBoard and wait until it answers; RuntimeError if it does not (or ``cancel`` is set)."""
        cancel = cancel or threading.Event()
        self.logdir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout
        self._launch()
        while time.monotonic() < deadline and not cancel.is_set():
            if self.process.poll() is not None:
                message = self._error_tail()
                if "could not bind" in message and self.port_chosen_here:
                    # The free port was taken between our probe and TensorBoard's bind (another
                    # server starting at the same moment): pick another one, as a user would.
                    self.port = free_port()
                    self._launch()
                    continue
                self.stop()
                raise RuntimeError(f"tensorboard exited: {_the_error(message)}")
            try:
                with urllib.request.urlopen(self.url + "data/environment", timeout=1):
                    return self.url
            except OSError:
                cancel.wait(0.2)  # polling a server we just started; it answers within seconds
        self.stop()
        if cancel.is_set():
            raise RuntimeError("stopped before TensorBoard answered")
        raise RuntimeError(f"tensorboard did not answer on {self.url} within {timeout:.0f} s")

    def _launch(self) -> None:
        # stderr goes to a file, not a pipe: nobody reads a pipe while TensorBoard serves, and a
        # chatty TensorBoard would block once the pipe's 64 KiB filled.
        if self.errors is not None:
            self.errors.close()
        self.errors = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            self.command, stdout=subprocess.DEVNULL, stderr=self.errors, text=True, start_new_session=True)

    def _error_tail(self) -> str:
        if self.errors is None:
            return ""
        self.errors.seek(0)
        return self.errors.read()[-500:]

    def serve(self, on_ready: Callable[[str], None]) -> int | None:
        """Start TensorBoard, call ``on_ready(url)``, and wait until it exits or a stop signal arrives;
        then :meth:`stop` it. A signal during the start is answered too (the child is never orphaned).

        Returns the signal that ended it, or None if TensorBoard exited by itself; RuntimeError if it
        did not start. Main thread only (signal handlers)."""
        stopped = threading.Event()
        received: list[int] = []

        def on_signal(signum: int, frame: object) -> None:
            received.append(signum)  # only a flag: waiting on the child here deadlocked with the main thread
            stopped.set()

        signals = [s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None]
        previous = {s: signal.signal(s, on_signal) for s in signals}
        try:
            try:
                url = self.start(cancel=stopped)
            except RuntimeError:
                if received:
                    return received[0]
                raise
            on_ready(url)
            # The short wait also notices TensorBoard exiting by itself; a signal ends it at once.
            while not stopped.is_set() and self.process is not None and self.process.poll() is None:
                stopped.wait(0.5)
        finally:
            self.stop()  # before the old handlers are back: a second signal is absorbed, not a traceback
            for s, handler in previous.items():
                signal.signal(s, handler)
        return received[0] if received else None

    def stop(self, grace: float = 5.0) -> None:
        """End TensorBoard and anything it started (SIGTERM, then SIGKILL after ``grace`` seconds); reap it."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            self._signal_group(process, signal.SIGTERM)
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self._signal_group(process, signal.SIGKILL)
                process.wait()
        errors, self.errors = self.errors, None
        if errors is not None:
            with contextlib.suppress(OSError, ValueError):
                errors.close()

    @staticmethod
    def _signal_group(process: subprocess.Popen, signum: int) -> None:
        """Signal TensorBoard's process group (start_new_session made its pid the group id)."""
        try:
            os.killpg(process.pid, signum)
        except (ProcessLookupError, PermissionError, AttributeError):
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signum)
