"""Durable file writes: a file is either its old content or its new one, on disk, whatever kill comes.

Every write of a run's files goes through here (temp file beside the target, fsync, rename, fsync
of the directory), and each step passes a fault point (:mod:`lrctl._faults`) where the lifecycle
simulation kills the process. Errors that name a run live here too, so every layer can raise them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from lrctl._faults import point as _fault_point


class RunError(Exception):
    """A run cannot be opened, saved or loaded; the message says why and what to do."""


class RunLocked(RunError):
    """Another live process holds the run."""


def stat_key(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def now_iso() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def fsync_dir(path: Path) -> None:
    _fault_point(f"fsync dir {path.name}")
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(path: Path, data: bytes | Callable[[BinaryIO], object]) -> Path:
    """Write ``data`` (bytes, or a function that writes into the open file) to a temp file beside ``path``
    and fsync it; returns the temp file's path.

    On failure (disk full, permissions, a simulated kill) the temp file is removed and the error raised."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            _fault_point(f"write {path.name}")
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            _fault_point(f"fsync {path.name}")
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return tmp


def atomic_write(path: Path, data: bytes) -> None:
    """Write to a temp file beside ``path``, fsync, rename over it, fsync the directory.

    A failure (disk full, permissions) leaves ``path`` as it was.
    """
    tmp = write_synced(path, data)
    _fault_point(f"rename {path.name}")
    os.replace(tmp, path)
    fsync_dir(path.parent)
