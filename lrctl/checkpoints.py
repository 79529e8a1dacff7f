"""A run's checkpoint files: written atomically with checksums, loaded with ``weights_only=True``, kept per chunk.

Files in the run directory::

    checkpoint.pt          latest state; torch.load(path, weights_only=True)
    checkpoint.prev.pt     the previous good state, kept until a newer one is complete
    checkpoint.json        sha256 of the good checkpoint files + a summary readable without torch
    kept/step-NNNNNNNN.pt  the state at chunk boundaries (hard links), for undo and ``fork --at``

:class:`CheckpointFiles` is the checkpoint half of :class:`lrctl.runstore.RunStore` (which adds the
lock, config, journal and pending work). Loading falls back from the latest file to the previous one
to the newest kept one, and says why; nothing is ever deleted while loading. No torch at module level.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lrctl import __version__
from lrctl._faults import point as _fault_point
from lrctl.durable import RunError, atomic_write, fsync_dir, stat_key

CHECKPOINT_FILE = "checkpoint.pt"
PREVIOUS_CHECKPOINT_FILE = "checkpoint.prev.pt"
CHECKPOINT_META_FILE = "checkpoint.json"
KEPT_DIR = "kept"
DEFAULT_KEEP = 10
GOOD_KEPT = 6  # shas checkpoint.json vouches for, newest first: the files on disk and those a kill left


@dataclass
class LoadedCheckpoint:
    state: dict[str, Any]
    path: Path
    warnings: list[str]
    sha: str = ""


class CheckpointFiles:
    """The checkpoint files of run ``name`` in ``dir`` (see the module's docstring)."""

    def __init__(self, run_dir: Path, name: str) -> None:
        self.dir, self.name = run_dir, name
        self._summary_cache: tuple[Any, dict[str, Any]] | None = None
        self._written: tuple[Any, str] | None = None  # (stat, sha256) of the checkpoint this process wrote last
        self._loaded_latest: str | None = None  # sha256 of checkpoint.pt when it loaded (weights_only) here
        self.loaded_summary: dict[str, Any] | None = None  # the summary of what loaded (set by the session)

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
        latest_sha = (self._written[1] if self._written and self._written[0] == stat_key(latest)
                      else self._file_sha(latest))
        known = meta.get("sha256", {})
        verified = latest_sha is not None and latest_sha in (known.get(CHECKPOINT_FILE), self._loaded_latest)
        rotate = verified and not replace_latest
        if rotate:
            # The old previous file stays listed: a kill between this checksum file and the renames
            # leaves it in place, and it must still verify then. So do the files the last checksum file
            # vouched for: after a kill between *its* write and renames, the names it lists are a step
            # ahead of the files on disk. (A damaged file matches no sha, however many are listed.)
            vouched = [sha, latest_sha, known.get(PREVIOUS_CHECKPOINT_FILE)]
            vouched += [g for g in meta.get("good", []) if isinstance(g, str)]
            if not known and previous.exists():
                # No checksum file vouched for anything (missing or damaged), so the previous file was as
                # acceptable as the latest: a kill before the renames must not make it look damaged.
                vouched.append(self._file_sha(previous))
            good = list(dict.fromkeys(g for g in vouched if g))[:GOOD_KEPT]
            # The summary of the file becoming the previous one, by its sha: after a kill between a checksum
            # file and its renames the names it lists are a step ahead of the files, and after a damaged
            # checksum file only the load knows it (``runs`` and the banner read it without torch).
            prev_summary = (meta.get("summary") if latest_sha == known.get(CHECKPOINT_FILE)
                            else meta.get("previous_summary") if latest_sha == known.get(PREVIOUS_CHECKPOINT_FILE)
                            else self.loaded_summary if latest_sha == self._loaded_latest else None)
            prev_sha = latest_sha
        else:  # the latest file is missing or damaged: the previous one stays as it is
            prev_sha = self._file_sha(previous)
            prev_ok = prev_sha is not None and prev_sha in (known.get(PREVIOUS_CHECKPOINT_FILE),
                                                            known.get(CHECKPOINT_FILE))
            good = [sha] + ([prev_sha] if prev_ok and prev_sha != sha else [])
            prev_summary = (meta.get("previous_summary") if prev_sha == known.get(PREVIOUS_CHECKPOINT_FILE)
                            else meta.get("summary")) if prev_ok else None
            prev_sha = prev_sha if prev_ok else None
        try:
            new_meta = {"sha256": {CHECKPOINT_FILE: sha, PREVIOUS_CHECKPOINT_FILE: prev_sha},
                        "good": good, "summary": summary,
                        "previous_summary": prev_summary}
            atomic_write(self.dir / CHECKPOINT_META_FILE, json.dumps(new_meta).encode())
            if rotate:
                _fault_point(f"rename {CHECKPOINT_FILE} -> {PREVIOUS_CHECKPOINT_FILE}")
                os.replace(latest, previous)
            _fault_point(f"rename {CHECKPOINT_FILE}")
            os.replace(tmp, latest)
            fsync_dir(self.dir)
            self._written = (stat_key(latest), sha)
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
        # Made under a temporary name and renamed over the old one: a kill never leaves the epoch unkept.
        staged = target.with_name(target.name + ".tmp")
        with contextlib.suppress(FileNotFoundError):
            staged.unlink()
        try:
            os.link(self.dir / CHECKPOINT_FILE, staged)
        except OSError:
            import shutil

            shutil.copyfile(self.dir / CHECKPOINT_FILE, staged)
        os.replace(staged, target)
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

    def summary(self) -> dict[str, Any]:
        """What the checkpoint that would load says (global step, last record, lr), read without torch.

        It is the summary of the file whose checksum matches: after a crash between writing the
        checksum file and the renames, or when the latest file is damaged, that is the older one.
        Empty when ``checkpoint.json`` is missing or damaged (the epoch is known only after loading)."""
        key = tuple(stat_key(self.dir / n) for n in (CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE, CHECKPOINT_META_FILE))
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

    def kept_linked_to(self, name: str) -> list[int]:
        """The kept checkpoints that are hard links of ``name`` (damaged along with it)."""
        target, linked = self.dir / name, []
        for step in self.kept_steps():
            with contextlib.suppress(OSError):
                if target.exists() and os.path.samefile(self.kept_path(step), target):
                    linked.append(step)
        return linked

    def drop_kept(self, steps: list[int]) -> None:
        for step in steps:
            with contextlib.suppress(FileNotFoundError):
                self.kept_path(step).unlink()

    def kept_path(self, step: int) -> Path:
        return self.dir / KEPT_DIR / f"step-{step:08d}.pt"

    def tidy_temp_files(self) -> None:
        """At open, under the lock: remove the temp files of checkpoint saves a kill interrupted (a
        checkpoint's size each; no one else writes them while the lock is held), and a kept checkpoint's
        staged hard link (``kept/step-N.pt.tmp``: it holds a replaced checkpoint's bytes on disk)."""
        for path in [*self.dir.glob(f".{CHECKPOINT_FILE}.*.tmp"), *self.dir.glob(f"{KEPT_DIR}/step-*.pt.tmp")]:
            with contextlib.suppress(OSError):
                path.unlink()
