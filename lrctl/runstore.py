"""The run directory: names, the one-writer lock, config, journal, pending work, and (through
:class:`lrctl.checkpoints.CheckpointFiles`) its checkpoints. Every file name of a run is here or there.

Layout of ``<runs-dir>/<run>/``::

    config.toml            the config the run was created with (frozen)
    checkpoint.pt          latest state; torch.load(path, weights_only=True)  (lrctl.checkpoints)
    checkpoint.prev.pt     the previous good state, kept until a newer one is complete
    checkpoint.json        sha256 of the good checkpoint files + a summary readable without torch
    kept/step-N.pt         chunk boundaries, for undo and fork --at
    pending.json           the command in progress ("train until global epoch E with schedule S")
    journal.jsonl          one JSON line per event: the human-readable story of the run
    lock, lock.json        held while a process trains or prompts; lock.json names the holder
    events.out.tfevents.*  TensorBoard scalars

Nothing here imports torch at module level: the prompt appears before torch has loaded.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lrctl._faults import point as _fault_point
from lrctl.checkpoints import (  # noqa: F401  (re-exported: the run directory's names in one place)
    CHECKPOINT_FILE,
    CHECKPOINT_META_FILE,
    DEFAULT_KEEP,
    KEPT_DIR,
    PREVIOUS_CHECKPOINT_FILE,
    CheckpointFiles,
    LoadedCheckpoint,
)
from lrctl.durable import (  # noqa: F401  (re-exported)
    RunError,
    RunLocked,
    atomic_write,
    fsync_dir,
    now_iso,
    stat_key,
    write_synced,
)

CONFIG_FILE = "config.toml"
PENDING_FILE = "pending.json"
JOURNAL_FILE = "journal.jsonl"
LOCK_FILE = "lock"
LOCK_INFO_FILE = "lock.json"
HISTORY_DIR = ".history"
BATCH_LOGDIR = "batch"  # the TensorBoard run of per-batch scalars (per-batch schedules' lr)
EVENTS_PREFIX = "events.out.tfevents"
COPYING_FILE = "copying.json"  # a fork being copied in: its config (what makes a run exist) comes last
_COPIED = (CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE, CHECKPOINT_META_FILE, JOURNAL_FILE)

_RUN_NAME = re.compile(r"[A-Za-z0-9_.-]+", re.ASCII)


def check_run_name(name: str) -> str:
    """Letters, digits and ``-_.`` only, not ``.``/``..``: a run name can never leave the runs directory."""
    if not name or not _RUN_NAME.fullmatch(name) or name in {".", ".."} or len(name) > 100:
        raise RunError(f"invalid run name {name!r}: use letters, digits, '-', '_' and '.' (e.g. demo-1)")
    return name


@dataclass
class Pending:
    """Work that was asked for and not finished: chunks, each absolute ("from global epoch start, N epochs").

    ``source`` is 'repl' or 'plan'. The first chunk may be partly done; ``remaining(step)`` says how much.
    """

    chunks: list[dict[str, Any]] = field(default_factory=list)
    source: str = "repl"

    def remaining(self, step: int) -> int:
        return sum(max(0, c["start"] + c["epochs"] - max(step, c["start"])) for c in self.chunks)

    def describe(self, step: int) -> str:
        left = self.remaining(step)
        n = len([c for c in self.chunks if c["start"] + c["epochs"] > step])
        return f"{left} epoch{'s' if left != 1 else ''} left" + (f" in {n} chunks" if n > 1 else "")


@dataclass
class _JournalFacts:
    """What opening a run asks of its journal (see :meth:`RunStore._journal_facts`)."""

    unsaid: list[str]  # warnings journaled (``recovering``) and not yet said (``recovery_said``)
    undoing: dict[str, Any] | None  # an undo's intent that no ``undo``/``undo_abandoned`` finished
    last_command: list[dict[str, Any]] | None  # the last command's chunks unless dropped/rebuilt/undone since

    @classmethod
    def of(cls, events: list[dict[str, Any]]) -> _JournalFacts:
        unsaid: list[str] = []
        undoing = last_command = None
        for event in events:
            kind = event.get("event")
            if kind == "recovering":
                unsaid = [str(w) for w in event.get("warnings") or []]
            elif kind == "recovery_said":
                unsaid = []
            if kind == "undoing":
                undoing = event
            elif kind in ("undo", "undo_abandoned"):
                undoing = None
            # the work was dropped (undo and divergence drop it too), rebuilt, or never this run's (a fork's
            # copy) ("undoing": an undo drops the work before it journals itself done)
            if kind in ("pending_dropped", "pending_recovered", "undoing", "undo", "diverged", "forked"):
                last_command = None
            elif kind == "command":
                last_command = [c for c in event.get("chunks") or [] if isinstance(c, dict)]
        return cls(unsaid, undoing, last_command)


class RunStore(CheckpointFiles):
    """Files of one run. Create with :meth:`open`; call :meth:`close` (or use ``with``) to release the lock."""

    def __init__(self, runs_dir: Path, name: str) -> None:
        self.runs_dir = Path(runs_dir)
        super().__init__(self.runs_dir / check_run_name(name), name)
        self._lock = None
        self._journal: io.TextIOWrapper | None = None
        self._facts: tuple[tuple[int, int] | None, _JournalFacts] | None = None  # keyed by the journal's stat

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def exists(self) -> bool:
        return (self.dir / CONFIG_FILE).exists()

    def acquire(self) -> str | None:
        """Take the run's lock or raise RunLocked naming the holder.

        Returns a note when the lock of a holder that died was taken over."""
        from filelock import FileLock, Timeout

        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunError(f"cannot create run directory {self.dir}: {e.strerror or e}") from None
        lock = FileLock(str(self.dir / LOCK_FILE), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise RunLocked(f"run '{self.name}' is in use by {self._holder()}; "
                            "wait for it to finish or stop that process") from None
        except OSError as e:
            raise RunError(f"cannot lock run directory {self.dir}: {e.strerror or e}") from None
        self._lock = lock
        self.tidy_temp_files()
        note = None
        info_path = self.dir / LOCK_INFO_FILE
        if info_path.exists():  # the kernel released a dead holder's lock; its info file stayed
            note = f"took over the run from {self._holder()}, which ended without closing it"
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": now_iso()}
        with contextlib.suppress(OSError):
            atomic_write(info_path, json.dumps(info).encode())
        return note

    def _holder(self) -> str:
        try:
            info = json.loads((self.dir / LOCK_INFO_FILE).read_text())
            return f"pid {info['pid']} on {info['host']} since {info['since']}"
        except (OSError, ValueError, KeyError):
            return "another process"

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        if self._lock is not None:
            with contextlib.suppress(OSError):
                (self.dir / LOCK_INFO_FILE).unlink()
            self._lock.release()
            self._lock = None

    def clear_unborn(self) -> None:
        """A run being created: remove what a start-up killed before ``config.toml`` was written left behind.

        Never a checkpoint: a directory with checkpoints but no config is refused, not overwritten."""
        if self.has_checkpoint():
            raise RunError(f"{self.dir} holds checkpoints but no {CONFIG_FILE}; restore the config file "
                           "(or move the directory away) before using this run name")
        for name in (PENDING_FILE, JOURNAL_FILE):
            with contextlib.suppress(FileNotFoundError):
                (self.dir / name).unlink()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- config ----------------------------------------------------------------------------------
    def read_config_text(self) -> str:
        return (self.dir / CONFIG_FILE).read_text(encoding="utf-8")

    def write_config(self, text: str) -> None:
        atomic_write(self.dir / CONFIG_FILE, text.encode("utf-8"))

    # -- journal -----------------------------------------------------------------------------------
    def journal(self, event: str, durable: bool = False, **fields: Any) -> None:
        """Append one JSON line, flushed (and fsynced when ``durable``: commands before they run)."""
        if self._journal is None:
            self._journal = open(self.dir / JOURNAL_FILE, "a", encoding="utf-8")
        _fault_point(f"write {JOURNAL_FILE}")
        self._journal.write(json.dumps({"t": now_iso(), "event": event, **fields}) + "\n")
        self._journal.flush()
        if durable:
            _fault_point(f"fsync {JOURNAL_FILE}")
            os.fsync(self._journal.fileno())

    def read_journal(self) -> list[dict[str, Any]]:
        path = self.dir / JOURNAL_FILE
        events = []
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                with contextlib.suppress(ValueError):
                    events.append(json.loads(line))
        return events

    # -- pending work ----------------------------------------------------------------------------
    def read_pending(self) -> Pending | None:
        """The pending work, or None when there is none or ``pending.json`` is damaged (see :meth:`pending_problem`)."""
        return self._read_pending()[0]

    def pending_problem(self) -> str | None:
        """Why ``pending.json`` cannot be read (it exists but is damaged), or None."""
        return self._read_pending()[1]

    def _read_pending(self) -> tuple[Pending | None, str | None]:
        try:
            raw = json.loads((self.dir / PENDING_FILE).read_text())
            chunks = raw["chunks"]
            if not isinstance(chunks, list) or not all(
                    isinstance(c, dict) and {"start", "epochs", "expr"} <= c.keys() for c in chunks):
                raise TypeError("chunks")
            return Pending(chunks=chunks, source=raw.get("source", "repl")), None
        except FileNotFoundError:
            return None, None
        except (OSError, ValueError, KeyError, TypeError) as e:
            return None, f"{PENDING_FILE} is damaged ({type(e).__name__})"

    def write_pending(self, pending: Pending | None) -> None:
        path = self.dir / PENDING_FILE
        if pending is None or not pending.chunks:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return
        atomic_write(path, json.dumps(asdict(pending)).encode())

    def copy_to(self, other: RunStore) -> None:
        """Copy this run's files (checkpoints, journal, kept, TensorBoard) into a new run ``other``, all
        but its config: :meth:`finish_copy` writes that last, so a kill while copying leaves no run
        (the next use of the name removes what was copied: :meth:`remove_unfinished_copy`)."""
        import shutil

        atomic_write(other.dir / COPYING_FILE, json.dumps({"source": self.name, "since": now_iso()}).encode())
        for name in _COPIED:
            if (self.dir / name).exists():
                shutil.copy2(self.dir / name, other.dir / name)
        for path in self.dir.iterdir():
            if path.name.startswith(EVENTS_PREFIX):
                shutil.copy2(path, other.dir / path.name)
            elif path.is_dir() and path.name in (KEPT_DIR, BATCH_LOGDIR):
                shutil.copytree(path, other.dir / path.name, dirs_exist_ok=True)

    def vacant(self) -> bool:
        """No run and nothing but what a killed start-up or fork leaves (lock files, an unfinished copy)."""
        if self.exists:
            return False
        if (self.dir / COPYING_FILE).exists() or not self.dir.is_dir():
            return True
        # (".NAME.PID.tmp": an atomic write's temp file, e.g. of the copy marker, that a kill left)
        return all(p.name in (LOCK_FILE, LOCK_INFO_FILE) or (p.name.startswith(".") and p.name.endswith(".tmp"))
                   for p in self.dir.iterdir())

    def finish_copy(self, source: RunStore) -> None:
        """The copy's last step: ``source``'s config makes this run exist (atomically), then the marker goes."""
        self.write_config(source.read_config_text())
        with contextlib.suppress(FileNotFoundError):
            (self.dir / COPYING_FILE).unlink()

    def remove_unfinished_copy(self) -> str | None:
        """A fork killed while copying into this name left files but no config: remove them (the source
        run is whole) and say so; None when there was none."""
        marker = self.dir / COPYING_FILE
        if self.exists or not marker.exists():
            return None
        import shutil

        try:
            source = json.loads(marker.read_text()).get("source", "?")
        except (OSError, ValueError):
            source = "?"
        for path in self.dir.iterdir():
            if path.name in (LOCK_FILE, LOCK_INFO_FILE, COPYING_FILE):
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        marker.unlink(missing_ok=True)
        return (f"a fork of run '{source}' into '{self.name}' was interrupted before it finished; "
                "its partial copy was removed")

    def damage_seen_without_torch(self) -> bool:
        """Whether opening this run will fall back, rebuild or warn (then it is loaded before any question):
        a checkpoint file missing or not matching its checksum, or a damaged checksum or pending file; or
        an undo a kill interrupted (the open finishes it: the run is not where its checkpoint says); or
        repairs an earlier open made and was killed before saying (they are said before any question)."""
        if not self.has_checkpoint():
            return False
        latest_missing = not (self.dir / CHECKPOINT_FILE).exists()
        return bool(latest_missing or self.check_checkpoints()[1] or self.previous_problem() or self.meta_problem()
                    or self.pending_problem() or self.pending_file_lost() or self.interrupted_undo() is not None
                    or self.unsaid_recovery())

    def unsaid_recovery(self) -> list[str]:
        """What the last open found and journaled (``recovering``) but never said: it was killed before
        the warnings reached the user (``recovery_said``). Empty when everything was said."""
        return list(self._journal_facts().unsaid)

    def interrupted_undo(self) -> dict[str, Any] | None:
        """The journal's last ``undoing`` intent when no ``undo`` (done) or ``undo_abandoned`` follows it."""
        intent = self._journal_facts().undoing
        return dict(intent) if intent is not None else None

    def pending_file_lost(self) -> bool:
        """``pending.json`` is absent, yet the journal's last command reaches past the checkpoint's epoch and
        was never dropped: work may be left, which loading rebuilds (and the first question must offer)."""
        if (self.dir / PENDING_FILE).exists():
            return False
        step = self.summary().get("global_step")
        return self.last_command_left(None if step is None else int(step)) is not None

    def last_command_left(self, step: int | None) -> list[dict[str, Any]] | None:
        """The chunks of the journal's last command when it reaches past epoch ``step`` (None: any) and was
        never dropped, rebuilt or undone; else None."""
        chunks = self._journal_facts().last_command
        if chunks is None:
            return None
        ends = [c["start"] + c["epochs"] for c in chunks]
        return [dict(c) for c in chunks] if step is None or max(ends, default=0) > step else None

    def _journal_facts(self) -> _JournalFacts:
        """The three answers above, from one reading of the journal (opening a run asks all of them,
        some twice); read again when the journal changed."""
        key = stat_key(self.dir / JOURNAL_FILE)
        if self._facts is None or key is None or self._facts[0] != key:
            self._facts = (key, _JournalFacts.of(self.read_journal()))
        return self._facts[1]
