"""The run directory: names, the one-writer lock, atomic checkpoints with checksums, journal, pending work.

Layout of ``<runs-dir>/<run>/``::

    config.toml            the config the run was created with (frozen)
    checkpoint.pt          latest state; torch.load(path, weights_only=True)
    checkpoint.prev.pt     the previous good state, kept until a newer one is complete
    checkpoint.json        sha256 of the good checkpoint files + a summary readable without torch
    pending.json           the command in progress ("train until global epoch E with schedule S")
    journal.jsonl          one JSON line per event: the human-readable story of the run
    lock, lock.json        held while a process trains or prompts; lock.json names the holder
    events.out.tfevents.*  TensorBoard scalars

Nothing here imports torch at module level: the prompt appears before torch has loaded.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import json
import os
import re
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lrctl import __version__
from lrctl._faults import point as _fault_point

CONFIG_FILE = "config.toml"
CHECKPOINT_FILE = "checkpoint.pt"
PREVIOUS_CHECKPOINT_FILE = "checkpoint.prev.pt"
CHECKPOINT_META_FILE = "checkpoint.json"
PENDING_FILE = "pending.json"
JOURNAL_FILE = "journal.jsonl"
LOCK_FILE = "lock"
LOCK_INFO_FILE = "lock.json"
HISTORY_DIR = ".history"
KEPT_DIR = "kept"
BATCH_LOGDIR = "batch"  # the TensorBoard run of per-batch scalars (per-batch schedules' lr)
EVENTS_PREFIX = "events.out.tfevents"
DEFAULT_KEEP = 10
_COPIED = (CONFIG_FILE, CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE, CHECKPOINT_META_FILE, JOURNAL_FILE)

_RUN_NAME = re.compile(r"[A-Za-z0-9_.-]+", re.ASCII)


class RunError(Exception):
    """A run cannot be opened, saved or loaded; the message says why and what to do."""


class RunLocked(RunError):
    """Another live process holds the run."""


def check_run_name(name: str) -> str:
    """Letters, digits and ``-_.`` only, not ``.``/``..``: a run name can never leave the runs directory."""
    if not name or not _RUN_NAME.fullmatch(name) or name in {".", ".."} or len(name) > 100:
        raise RunError(f"invalid run name {name!r}: use letters, digits, '-', '_' and '.' (e.g. demo-1)")
    return name


def _stat_key(path: Path) -> tuple[int, int] | None:
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


def write_synced(path: Path, data: bytes) -> Path:
    """Write ``data`` to a temp file beside ``path`` and fsync it; returns the temp file's path.

    On failure (disk full, permissions) the temp file is removed and the error raised."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            _fault_point(f"write {path.name}")
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
class LoadedCheckpoint:
    state: dict[str, Any]
    path: Path
    warnings: list[str]
    sha: str = ""


class RunStore:
    """Files of one run. Create with :meth:`open`; call :meth:`close` (or use ``with``) to release the lock."""

    def __init__(self, runs_dir: Path, name: str) -> None:
        self.name = check_run_name(name)
        self.runs_dir = Path(runs_dir)
        self.dir = self.runs_dir / self.name
        self._lock = None
        self._journal: io.TextIOWrapper | None = None
        self._summary_cache: tuple[Any, dict[str, Any]] | None = None
        self._written: tuple[Any, str] | None = None  # (stat, sha256) of the checkpoint this process wrote last
        self._loaded_latest: str | None = None  # sha256 of checkpoint.pt when it loaded (weights_only) here

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

    # -- checkpoints -------------------------------------------------------------------------
    def read_meta(self) -> dict[str, Any]:
        try:
            meta = json.loads((self.dir / CHECKPOINT_META_FILE).read_text())
            return meta if isinstance(meta, dict) else {}
        except (OSError, ValueError):
            return {}

    def save_checkpoint(self, state: dict[str, Any], summary: dict[str, Any], replace_latest: bool = False) -> str:
        """Atomically make ``state`` the latest checkpoint; the current one becomes ``checkpoint.prev.pt``.

        The checksum file is written first, listing the new file's sha256 *and* the current
        one's, so every moment of a crash leaves a loadable, verifiable checkpoint behind. A current
        file that does not verify (damaged) is not kept as the previous one, nor is one that
        ``replace_latest`` says is from a dropped timeline (an abandoned or diverged epoch's mid-epoch
        checkpoint). Returns the new sha256.
        """
        from lrctl.checkpoint_writer import write_checkpoint

        latest, previous = self.dir / CHECKPOINT_FILE, self.dir / PREVIOUS_CHECKPOINT_FILE
        try:  # the temp file first: streamed and hashed in one pass (lrctl.checkpoint_writer says why)
            tmp, sha = write_checkpoint(latest, {**state, "lrctl_version": __version__})
        except OSError as e:
            raise RunError(f"could not save checkpoint in {self.dir}: {e.strerror or e}; "
                           "the previous checkpoint is intact") from None
        meta = self.read_meta()
        # The file this process wrote last needs no re-reading: its stat is what it was after the write.
        latest_sha = (self._written[1] if self._written and self._written[0] == _stat_key(latest)
                      else self._file_sha(latest))
        known = meta.get("sha256", {})
        verified = latest_sha is not None and latest_sha in (known.get(CHECKPOINT_FILE), self._loaded_latest)
        rotate = verified and not replace_latest
        if rotate:
            # The old previous file stays listed: a kill between this checksum file and the renames
            # leaves it in place, and it must still verify then.
            good, prev_sha, prev_summary = {sha, latest_sha}, latest_sha, meta.get("summary")
            if known.get(PREVIOUS_CHECKPOINT_FILE):
                good.add(known[PREVIOUS_CHECKPOINT_FILE])
        else:  # the latest file is missing or damaged: the previous one stays as it is
            prev_sha = self._file_sha(previous)
            prev_ok = prev_sha is not None and prev_sha in (known.get(PREVIOUS_CHECKPOINT_FILE),
                                                            known.get(CHECKPOINT_FILE))
            good = {sha} | ({prev_sha} if prev_ok else set())
            prev_summary = (meta.get("previous_summary") if prev_sha == known.get(PREVIOUS_CHECKPOINT_FILE)
                            else meta.get("summary")) if prev_ok else None
            prev_sha = prev_sha if prev_ok else None
        try:
            new_meta = {"sha256": {CHECKPOINT_FILE: sha, PREVIOUS_CHECKPOINT_FILE: prev_sha},
                        "good": sorted(good), "summary": summary, "previous_summary": prev_summary}
            atomic_write(self.dir / CHECKPOINT_META_FILE, json.dumps(new_meta).encode())
            if rotate:
                _fault_point(f"rename {CHECKPOINT_FILE} -> {PREVIOUS_CHECKPOINT_FILE}")
                os.replace(latest, previous)
            _fault_point(f"rename {CHECKPOINT_FILE}")
            os.replace(tmp, latest)
            fsync_dir(self.dir)
            self._written = (_stat_key(latest), sha)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise RunError(f"could not save checkpoint in {self.dir}: {e.strerror or e}; "
                           "the previous checkpoint is intact") from None
        return sha

    @staticmethod
    def _file_sha(path: Path) -> str | None:
        try:
            return hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            return None

    def _verified(self, path: Path, good: set[str]) -> tuple[bytes | None, str | None]:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None, None
        except OSError as e:
            return None, f"{path.name} cannot be read ({e.strerror})"
        if good and hashlib.sha256(data).hexdigest() not in good:
            return None, f"{path.name} is corrupt or truncated (checksum mismatch)"
        return data, None

    def has_checkpoint(self) -> bool:
        return any((self.dir / n).exists() for n in (CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE)) or bool(
            self.kept_steps())

    def check_checkpoints(self) -> tuple[str | None, list[str]]:
        """Without torch: which file would load ('checkpoint.pt'/'checkpoint.prev.pt'/None) and why not the other."""
        good = set(self.read_meta().get("good", []))
        problems = []
        for name in (CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE):
            data, problem = self._verified(self.dir / name, good)
            if data is not None:
                return name, problems
            if problem:
                problems.append(problem)
        return None, problems

    def load_checkpoint(self) -> LoadedCheckpoint:
        """Load the latest good checkpoint with ``weights_only=True``, falling back to the previous one.

        Raises RunError when none is good; no file is deleted either way.
        """
        import pickle

        import torch

        good = set(self.read_meta().get("good", []))
        warnings: list[str] = []
        # Last resort, newest first: the kept chunk-boundary checkpoints (hard links of files that verified
        # when they were kept; torch's zip reader checks their integrity).
        candidates = [(self.dir / n, good) for n in (CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE)]
        candidates += [(self.kept_path(step), set()) for step in reversed(self.kept_steps())]
        for path, checksums in candidates:
            name = path.name if path.parent == self.dir else f"{KEPT_DIR}/{path.name}"
            data, problem = self._verified(path, checksums)
            if data is None:
                if problem:
                    warnings.append(problem)
                continue
            try:
                state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else "unsupported content"
                warnings.append(f"{name} holds something other than plain tensors and was refused "
                                f"(weights_only load: {first[:160]})")
                continue
            except Exception as e:  # torch raises RuntimeError/EOFError/zip errors on damaged files
                warnings.append(f"{name} cannot be loaded ({type(e).__name__}: {str(e)[:120]})")
                continue
            if not isinstance(state, dict) or "model" not in state or "global_step" not in state:
                warnings.append(f"{name} is not an lrctl checkpoint")
                continue
            if warnings or path.name != CHECKPOINT_FILE:
                if path.name == PREVIOUS_CHECKPOINT_FILE and not warnings:
                    warnings.append(f"{CHECKPOINT_FILE} is missing")
                elif path.parent != self.dir and not warnings:
                    warnings.append(f"{CHECKPOINT_FILE} and {PREVIOUS_CHECKPOINT_FILE} are missing")
                warnings.append(f"falling back to {name} (epoch {state['global_step']})")
            sha = hashlib.sha256(data).hexdigest()
            if path.name == CHECKPOINT_FILE and path.parent == self.dir:
                self._loaded_latest = sha
            return LoadedCheckpoint(state, path, warnings, sha)
        raise RunError(f"run '{self.name}' has no loadable checkpoint: " + ("; ".join(warnings) or "none found")
                       + f". Nothing was deleted; inspect {self.dir}")

    # -- kept epoch checkpoints -------------------------------------------------------------------
    def keep_checkpoint(self, step: int, keep: int = DEFAULT_KEEP) -> None:
        """Keep the latest checkpoint as ``kept/step-XXXXXXXX.pt`` (a hard link: no extra disk), newest ``keep``."""
        kept = self.dir / KEPT_DIR
        kept.mkdir(exist_ok=True)
        target = self.kept_path(step)
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
        try:
            os.link(self.dir / CHECKPOINT_FILE, target)
        except OSError:
            import shutil

            shutil.copyfile(self.dir / CHECKPOINT_FILE, target)
        for old in sorted(kept.glob("step-*.pt"))[:-keep] if keep > 0 else []:
            old.unlink()

    def kept_steps(self) -> list[int]:
        return sorted(int(p.stem[5:]) for p in (self.dir / KEPT_DIR).glob("step-*.pt"))

    def load_kept(self, step: int) -> dict[str, Any]:
        """The kept checkpoint at ``step`` (weights_only), or RunError listing the kept steps."""
        import torch

        path = self.kept_path(step)
        if not path.exists():
            kept = ", ".join(map(str, self.kept_steps())) or "none"
            raise RunError(f"run '{self.name}' keeps no checkpoint at epoch {step} (kept: {kept})")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise RunError(f"{path} cannot be loaded ({type(e).__name__}: {str(e)[:120]})") from None

    def copy_to(self, other: RunStore) -> None:
        """Copy this run's files (config, checkpoints, journal, kept, TensorBoard) into a new run ``other``."""
        import shutil

        for name in _COPIED:
            if (self.dir / name).exists():
                shutil.copy2(self.dir / name, other.dir / name)
        for path in self.dir.iterdir():
            if path.name.startswith(EVENTS_PREFIX):
                shutil.copy2(path, other.dir / path.name)
            elif path.is_dir() and path.name in (KEPT_DIR, BATCH_LOGDIR):
                shutil.copytree(path, other.dir / path.name, dirs_exist_ok=True)

    def summary(self) -> dict[str, Any]:
        """What the checkpoint that would load says (global step, last record, lr), read without torch.

        It is the summary of the file whose checksum matches: after a crash between writing the
        checksum file and the renames, or when the latest file is damaged, that is the older one.
        Empty when ``checkpoint.json`` is missing or damaged (the epoch is known only after loading)."""
        key = tuple(_stat_key(self.dir / n) for n in (CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE, CHECKPOINT_META_FILE))
        if self._summary_cache is not None and self._summary_cache[0] == key:
            return self._summary_cache[1]
        summary = self._matching_summary()
        self._summary_cache = (key, summary)
        return summary

    def _matching_summary(self) -> dict[str, Any]:
        meta = self.read_meta()
        known = meta.get("sha256", {})
        for name in (CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE):
            sha = self._file_sha(self.dir / name)
            if sha is None:
                continue
            if sha == known.get(CHECKPOINT_FILE):
                return meta.get("summary") or {}
            if sha == known.get(PREVIOUS_CHECKPOINT_FILE):
                return meta.get("previous_summary") or {}
        return {}

    def previous_problem(self) -> str | None:
        """Why ``checkpoint.prev.pt`` would not load as the fallback (missing, damaged), or None."""
        path = self.dir / PREVIOUS_CHECKPOINT_FILE
        if not path.exists():
            return f"{PREVIOUS_CHECKPOINT_FILE} is missing" if (self.dir / CHECKPOINT_FILE).exists() else None
        good = set(self.read_meta().get("good", []))
        return self._verified(path, good)[1]

    def damage_seen_without_torch(self) -> bool:
        """Whether opening this run will fall back, rebuild or warn (then it is loaded before any question):
        a checkpoint file missing or not matching its checksum, or a damaged checksum or pending file."""
        if not self.has_checkpoint():
            return False
        latest_missing = not (self.dir / CHECKPOINT_FILE).exists()
        return bool(latest_missing or self.check_checkpoints()[1] or self.previous_problem() or self.meta_problem()
                    or self.pending_problem())

    def meta_problem(self) -> str | None:
        """Why ``checkpoint.json`` cannot vouch for the checkpoints (missing or damaged), or None."""
        if not self.has_checkpoint():
            return None
        path = self.dir / CHECKPOINT_META_FILE
        if not path.exists():
            return f"{CHECKPOINT_META_FILE} is missing: the checkpoint's checksum cannot be verified"
        meta = self.read_meta()
        if not isinstance(meta.get("sha256"), dict) or not meta.get("good"):
            return f"{CHECKPOINT_META_FILE} is damaged: the checkpoint's checksum cannot be verified"
        return None

    def prune_kept(self, after: int) -> list[int]:
        """Remove kept checkpoints later than epoch ``after`` (a timeline that was undone or lost)."""
        removed = [s for s in self.kept_steps() if s > after]
        for step in removed:
            with contextlib.suppress(FileNotFoundError):
                self.kept_path(step).unlink()
        return removed

    def drop_kept_linked_to(self, name: str) -> list[int]:
        """Remove the kept checkpoints that are hard links of ``name`` (damaged along with it)."""
        target, dropped = self.dir / name, []
        for step in self.kept_steps():
            with contextlib.suppress(OSError):
                if target.exists() and os.path.samefile(self.kept_path(step), target):
                    self.kept_path(step).unlink()
                    dropped.append(step)
        return dropped

    def kept_path(self, step: int) -> Path:
        return self.dir / KEPT_DIR / f"step-{step:08d}.pt"
