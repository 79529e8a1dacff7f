"""Single keys during a chunk on a terminal: p pause/continue, s stop after the epoch, c checkpoint,
l change the lr, ? help. They act at the next batch boundary, through the session's control queue.

The terminal is put in cbreak mode (no echo, no line buffering, signals kept, so Ctrl-C keeps its
meaning) only while a chunk runs; on a non-TTY stdin nothing is read during a chunk.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import threading
from typing import Any

from lrctl.schedules import check_change
from lrctl.schedules import parse as parse_schedule

KEYS_HELP = "keys: p pause/continue · s stop after this epoch · c checkpoint · l change lr · ? help"


class KeyReader:
    """Reads keys from ``fd`` in a thread while the ``with`` block (a chunk) runs."""

    def __init__(self, session: Any, view: Any, fd: int | None = None, on_ctrl_c: Any = None) -> None:
        """``on_ctrl_c``: read Ctrl-C as a key and call this (the terminal then sends no SIGINT)."""
        self.session, self.view, self.on_ctrl_c = session, view, on_ctrl_c
        self.fd = sys.stdin.fileno() if fd is None else fd
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._saved: Any = None

    def __enter__(self) -> KeyReader:
        import termios

        if not os.isatty(self.fd):
            return self
        self._saved = termios.tcgetattr(self.fd)
        self._cbreak()
        self._thread = threading.Thread(target=self._loop, name="lrctl-keys", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        import termios

        self._done.set()
        if self._thread is not None:
            self._thread.join()
        if self._saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)

    def _loop(self) -> None:
        while not self._done.is_set():
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if not ready:
                continue
            try:
                key = os.read(self.fd, 1).decode(errors="ignore").lower()
            except OSError:
                return
            self.handle(key)

    def _cbreak(self) -> None:
        import termios
        import tty

        tty.setcbreak(self.fd)
        if self.on_ctrl_c is not None:
            mode = termios.tcgetattr(self.fd)
            mode[3] &= ~termios.ISIG
            termios.tcsetattr(self.fd, termios.TCSANOW, mode)

    def handle(self, key: str) -> None:
        session = self.session
        if key == "\x03" and self.on_ctrl_c is not None:
            self.on_ctrl_c()
        elif key == "p":
            session.submit({"cmd": "resume" if session.paused else "pause", "source": "key"})
        elif key == "s":
            session.submit({"cmd": "stop", "source": "key"})
        elif key == "c":
            session.submit({"cmd": "checkpoint", "source": "key"})
        elif key == "?":
            self.view.say(KEYS_HELP)
        elif key == "l":
            self._change_lr()

    def _line(self, prompt: str) -> str:
        """One line typed in canonical mode (echo on), then back to cbreak."""
        import termios

        termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
        try:
            os.write(sys.stdout.fileno(), prompt.encode())
            data = b""
            while not data.endswith(b"\n"):
                chunk = os.read(self.fd, 1024)
                if not chunk:
                    break
                data += chunk
            return data.decode(errors="replace").strip()
        finally:
            self._cbreak()

    def _change_lr(self) -> None:
        """Pause, ask for the lr (and what it means under a schedule), apply, continue."""
        import queue

        session, view = self.session, self.view
        was_paused = session.paused
        if not was_paused:
            # Wait until training holds and its 'paused' line is out: only then is the screen ours (the
            # prompt and training's lines drawn at once shared a line, and rows went missing).
            applied: queue.SimpleQueue = queue.SimpleQueue()
            session.submit({"cmd": "pause", "source": "key", "reply": applied, "brief": True})  # l resumes
            while True:
                try:
                    reply = applied.get(timeout=0.1)
                    break
                except queue.Empty:
                    if self._done.is_set():  # the chunk is over; its end answers the command too
                        return
            if not reply.get("ok"):
                return  # the chunk ended first: nothing to change
        with view.suspended():
            text = self._line("New learning rate (a number or a schedule; empty cancels): ")
            command: dict[str, Any] | None = None
            if text:
                try:
                    spec = parse_schedule(text)
                    check_change(spec)
                    command = {"cmd": "lr", "value": spec, "source": "key"}
                    runner = session.trainer.runner if session.trainer is not None else None
                    if spec.name == "const" and runner is not None and runner.spec.name != "const":
                        mode = self._line(f"a schedule is running ({runner.spec.text}): set, scale or restart? "
                                          "[set] ").lower() or "set"
                        command["mode"] = mode if mode in ("set", "scale", "restart") else "set"
                except ValueError as e:  # a bad expression (ScheduleError) or no change
                    view.warn(f"{e}; the lr is unchanged")
        if command is not None:
            session.submit(command)
        if not was_paused:
            session.submit({"cmd": "resume", "source": "key"})


def keys_active() -> bool:
    with contextlib.suppress(ValueError, OSError):
        return os.isatty(sys.stdin.fileno()) and os.isatty(sys.stdout.fileno())
    return False
