"""The control endpoint: a Unix socket in the run directory that takes the keyboard's commands as JSON lines.

::

    $ lrctl send demo status
    {"ok": true, "run": "demo", "global_step": 42, "running": true, "paused": false, "lr": 0.03, ...}
    $ lrctl send demo "lr 0.01"            # or "lr 0.01 scale", "lr 0.01 restart", "lr cos 0.01"
    $ lrctl send demo pause | resume | stop | checkpoint

A line is a JSON object, ``{"cmd": "lr", "value": "0.01", "mode": "scale"}``, or the same as text.
Commands are applied at the next batch boundary in arrival order with the keyboard's, journaled with
their source, and answered with JSON; a malformed line gets ``{"ok": false, "error": ...}`` and
changes nothing. The socket is owner-only (0600) and never a network port.

A connection that sends nothing for ``idle_timeout`` seconds is told so and closed, and at most
``max_clients`` are served at once (one thread each); one more gets a one-line JSON error and is
closed. A socket file left by a process that died is replaced when the run is opened again (only if
nothing answers on it), and the server removes its own file on every exit Python runs (atexit too).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import queue
import socket
import threading
from pathlib import Path
from typing import Any

from lrctl.schedules import ScheduleError, check_change
from lrctl.schedules import parse as parse_schedule
from lrctl.status import socket_status

SOCKET_FILE = "control.sock"
MAX_LINE = 64 * 1024
IDLE_TIMEOUT = 5.0  # seconds a connection may send nothing before it is closed
MAX_CLIENTS = 8  # connections served at once (a thread each); more are refused with a JSON line
COMMANDS = ("status", "lr", "pause", "resume", "stop", "checkpoint")
LR_MODES = ("set", "scale", "restart")


class ControlError(ValueError):
    pass


def parse_control(message: str | dict[str, Any]) -> dict[str, Any]:
    """A control command from a JSON object or text (``lr 0.01 scale``); ControlError says what is wrong."""
    if isinstance(message, str):
        text = message.strip()
        if text.startswith("{"):
            try:
                message = json.loads(text)
            except ValueError as e:
                raise ControlError(f"malformed JSON: {e}") from None
        else:
            words = text.split()
            if not words:
                raise ControlError("empty command")
            message = {"cmd": words[0].lower()}
            if words[0].lower() == "lr":
                mode = words[-1].lower() if len(words) > 2 and words[-1].lower() in LR_MODES else None
                value = " ".join(words[1:-1] if mode else words[1:])
                message.update({"value": value, **({"mode": mode} if mode else {})})
            elif len(words) > 1:
                raise ControlError(f"{words[0]} takes no arguments")
    if not isinstance(message, dict) or not isinstance(message.get("cmd"), str):
        raise ControlError('expected an object like {"cmd": "lr", "value": "0.01"}')
    cmd = message["cmd"].lower()
    if cmd not in COMMANDS:
        raise ControlError(f"unknown command {cmd!r}; commands: {', '.join(COMMANDS)}")
    command: dict[str, Any] = {"cmd": cmd}
    if cmd == "lr":
        value = message.get("value")
        if not isinstance(value, (str, int, float)) or isinstance(value, bool) or str(value).strip() == "":
            raise ControlError("lr needs a value: a number or a schedule expression")
        try:
            spec = parse_schedule(str(value))
        except ScheduleError as e:
            raise ControlError(str(e)) from None
        try:
            check_change(spec)
        except ValueError as e:
            raise ControlError(str(e)) from None
        mode = message.get("mode")
        if mode is not None and mode not in LR_MODES:
            raise ControlError(f"mode must be one of {', '.join(LR_MODES)}")
        command.update({"value": spec, **({"mode": mode} if mode else {})})  # typed here, applied as is
    return command


class ControlServer:
    """Serves one session's control socket from a background thread.

    Args:
        session: the RunSession whose ``status``/``submit`` the commands reach.
        timeout: how long a command waits to be applied at a batch boundary.
        idle_timeout: how long a connection may send nothing before it is closed.
        max_clients: connections served at once; more are refused.
    """

    def __init__(self, session: Any, timeout: float = 60.0, idle_timeout: float = IDLE_TIMEOUT,
                 max_clients: int = MAX_CLIENTS) -> None:
        self.session, self.timeout, self.idle_timeout = session, timeout, idle_timeout
        self.path: Path | None = None
        self._socket: socket.socket | None = None
        self._inode: int | None = None  # which file at ``path`` is ours (never remove another's)
        self._slots = threading.BoundedSemaphore(max_clients)
        self.max_clients = max_clients

    def start(self) -> Path | None:
        """Listen on ``<run>/control.sock``; returns the path (None if the platform or path won't allow it,
        or another process answers on it)."""
        path = self.session.store.dir / SOCKET_FILE
        if not remove_stale(path):
            return None
        try:
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old_umask = os.umask(0o177)  # created owner-only, never briefly world-writable
            try:
                server.bind(str(path))
            finally:
                os.umask(old_umask)
            os.chmod(path, 0o600)
            server.listen(8)
            self._inode = path.stat().st_ino
        except (OSError, AttributeError):
            return None
        self._socket, self.path = server, path
        atexit.register(self.stop)  # an exit path that skips stop() (an error in teardown) still removes it
        threading.Thread(target=self._accept, args=(server,), name="lrctl-control", daemon=True).start()
        return path

    def _accept(self, server: socket.socket) -> None:
        while self._socket is server:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            if not self._slots.acquire(blocking=False):
                with conn, contextlib.suppress(OSError):
                    conn.settimeout(1.0)  # never let a refused client hold up the accept loop
                    conn.sendall(_encode({"ok": False, "error": f"too many connections (at most "
                                                                f"{self.max_clients}); try again"}))
                continue
            threading.Thread(target=self._serve, args=(conn,), name="lrctl-control-client", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with contextlib.suppress(OSError):
                self._talk(conn)
        finally:
            self._slots.release()  # before the close: a client that sees the end may connect again at once
            conn.close()

    def _talk(self, conn: socket.socket) -> None:
        """Answer each line of one connection until it closes, goes idle or sends too long a line."""
        conn.settimeout(self.idle_timeout)  # recv and sendall: a silent or stuck client is let go
        buffer = b""
        while True:
            try:
                chunk = conn.recv(4096)
            except TimeoutError:
                conn.sendall(_encode({"ok": False, "error": f"idle for {self.idle_timeout:g} s; connection closed"}))
                return
            if not chunk:
                return  # the client left, possibly mid-line: nothing was applied for a partial line
            buffer += chunk
            if len(buffer) > MAX_LINE and b"\n" not in buffer:
                conn.sendall(_encode({"ok": False, "error": "line too long"}))
                return
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                conn.sendall(_encode(self.handle(line.decode("utf-8", "replace"))))

    def handle(self, line: str) -> dict[str, Any]:
        try:
            command = parse_control(line)
        except ControlError as e:
            return {"ok": False, "error": str(e)}
        session = self.session
        if command["cmd"] == "status":
            return socket_status(session)
        if not session.running:
            return {"ok": False, "error": "no chunk is running; commands apply to a running chunk",
                    "global_step": session.global_step}
        reply: queue.SimpleQueue = queue.SimpleQueue()
        session.submit({**command, "source": "socket", "reply": reply})
        try:
            return reply.get(timeout=self.timeout)
        except queue.Empty:
            return {"ok": False, "error": f"not applied within {self.timeout:.0f} s"}

    def stop(self) -> None:
        """Stop listening and remove the socket file (if it is still ours). Safe to call twice."""
        server, self._socket = self._socket, None
        atexit.unregister(self.stop)
        if server is not None:
            with contextlib.suppress(OSError):  # wakes the accept thread (close alone leaves it blocked on Linux)
                server.shutdown(socket.SHUT_RDWR)
            server.close()
            with contextlib.suppress(OSError):
                if self.path.stat().st_ino == self._inode:
                    self.path.unlink()


def remove_stale(path: Path) -> bool:
    """Remove a socket file nobody listens on (its process died); False if a process answers on it."""
    if not path.exists() and not path.is_symlink():
        return True
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            pass  # refused (or not a socket): nobody is there
        else:
            return False
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return True


def _encode(reply: dict[str, Any]) -> bytes:
    return (json.dumps(reply) + "\n").encode()


def send(run_dir: Path, text: str, timeout: float = 90.0) -> dict[str, Any]:
    """``lrctl send``: one command to a running lrctl, its JSON answer back."""
    path = Path(run_dir) / SOCKET_FILE
    command = parse_control(text)  # refuse locally what the server would refuse
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(timeout)
        try:
            client.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            run_dir = Path(run_dir)
            if not run_dir.is_dir():
                raise ControlError(f"there is no run '{run_dir.name}' in {run_dir.parent} "
                                   "(lrctl runs lists them; --runs-dir names another directory)") from None
            raise ControlError(f"no lrctl is running on {run_dir} (no control socket)") from None
        client.sendall(_encode({**command, "value": command["value"].text} if "value" in command else command))
        data = b""
        while not data.endswith(b"\n"):
            chunk = client.recv(4096)
            if not chunk:
                break
            data += chunk
    return json.loads(data.decode())
