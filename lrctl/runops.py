"""Operations on whole run directories: the frozen config, a fork (from the latest or a kept checkpoint),
and the summary of a state that ``lrctl runs``, banners and checksum files show.

:mod:`lrctl.runstore` owns the files of one run and how each is written; this module combines them
into what a command does to a run as a whole. Nothing here imports torch at module level.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lrctl import config as config_mod
from lrctl.runstore import (
    BATCH_LOGDIR,
    CHECKPOINT_FILE,
    CHECKPOINT_META_FILE,
    CONFIG_FILE,
    PREVIOUS_CHECKPOINT_FILE,
    RunError,
    RunStore,
)


def state_summary(state: dict[str, Any], metric: str) -> dict[str, Any]:
    """What a person wants to know of a checkpoint: epoch, last metrics, the next lr (``lr``) and the last
    epoch's (``last_lr``: they differ after a schedule's last epoch, or an lr changed mid-epoch)."""
    history = state.get("history") or []
    last = history[-1] if history else None
    return {"global_step": int(state["global_step"]), "lr": state.get("lr") if last else None, "metric": metric,
            "last": {"train": last["train"], "test": last["test"]} if last else None,
            "last_lr": last["lr"] if last else None}


def fork_run(runs_dir: Path, source: str, name: str, at: int | None = None, notes: list[str] | None = None) -> int:
    """``lrctl fork``: copy run ``source`` into new run ``name``, optionally from its kept checkpoint at epoch ``at``.

    TensorBoard shows the new run's own timeline at once (both loaders): the source's later epochs,
    batch-level scalars included, are purged in the copy. Nothing is left behind when it fails.
    ``notes`` gets what the user must be told (a partial copy of an earlier, killed fork removed).
    Returns the new run's global epoch."""
    import shutil

    from lrctl.tblog import TensorBoardLogger
    from lrctl.tbplugins import run_layout

    src, dst = RunStore(runs_dir, source), RunStore(runs_dir, name)
    if not src.exists:
        raise RunError(f"no run '{source}' in {runs_dir}")
    if not dst.vacant():
        raise RunError(f"run '{name}' exists already; pick another name")
    src.acquire()
    try:
        cfg, _ = read_frozen_config(src)
        if at is None:
            state = src.load_checkpoint().state
        else:
            state = src.load_kept(at)  # refuses before anything is copied
        step = int(state["global_step"])
        dst.acquire()
        try:
            removed = dst.remove_unfinished_copy()  # what an earlier fork into this name, killed, left
            if removed and notes is not None:
                notes.append(removed)
            src.copy_to(dst)
            dst.prune_kept(step)
            if at is not None:
                for old in (PREVIOUS_CHECKPOINT_FILE, CHECKPOINT_META_FILE, CHECKPOINT_FILE):
                    (dst.dir / old).unlink(missing_ok=True)
                state["pending"] = None  # a fork starts with no pending work (the source keeps its own)
                dst.save_checkpoint(state, state_summary(state, cfg.metric))
                sha = dst.save_checkpoint(state, state_summary(state, cfg.metric))  # twice: the fallback too
                dst.journal("saved", step=step, sha=sha)  # recovery finds the fork's checkpoint in its journal
            TensorBoardLogger(dst.dir, purge_step=step, layout=run_layout(cfg.metric)).close()
            batch_dir = dst.dir / BATCH_LOGDIR
            if batch_dir.is_dir():
                TensorBoardLogger(batch_dir, purge_step=step * _batches_per_epoch(state, cfg)).close()
            dst.journal("forked", durable=True, source=source, step=step)
            dst.finish_copy(src)
        except BaseException:
            dst.close()
            shutil.rmtree(dst.dir, ignore_errors=True)
            raise
        dst.close()
    finally:
        src.close()
    return step


def _batches_per_epoch(state: dict[str, Any], cfg: config_mod.RunConfig) -> int:
    if state.get("batches_per_epoch"):
        return int(state["batches_per_epoch"])
    from lrctl.engine import Trainer

    return Trainer(cfg).batches_per_epoch


def read_frozen_config(store: RunStore) -> tuple[config_mod.RunConfig, str]:
    from lrctl.config import tomllib

    path = store.dir / CONFIG_FILE
    try:
        raw = tomllib.loads(store.read_config_text())
        if isinstance(raw.get("train"), dict):  # frozen before train.order existed: those runs used the seeded order
            raw["train"].setdefault("order", "seeded")
        return config_mod.from_dict(raw, origin=str(path)), str(path)
    except (OSError, tomllib.TOMLDecodeError, config_mod.ConfigError) as e:
        raise RunError(f"run '{store.name}': its frozen config {path} cannot be read: {e}") from None


def create_run(store: RunStore, cfg: config_mod.RunConfig, origin: str,
               chunks: list[dict[str, Any]] | None, job: dict[str, str]) -> str | None:
    """Make run ``store`` exist with ``cfg``. ``chunks``: the ``--plan`` that creates it, recorded
    (pending work + journal, fsynced) before ``config.toml`` makes the run exist, so no run exists
    without it: a kill while torch loads leaves either no run or one that ``lrctl resume`` finishes."""
    from lrctl.runstore import Pending, now_iso

    note = store.remove_unfinished_copy()
    store.clear_unborn()
    if chunks:  # the journal first, as every command (lrctl.work.PendingWork.record says why)
        store.journal("command", durable=True, source="plan", chunks=chunks, **job)
        store.write_pending(Pending(chunks, "plan"))
    store.write_config(config_mod.to_toml(cfg, header=f"lrctl run '{store.name}', created {now_iso()} "
                                          f"from {origin or 'the built-in lesson config'}."))
    return note


def settle_config(store: RunStore, cfg: config_mod.RunConfig, force_config: bool) -> config_mod.RunConfig:
    """An existing run goes on with its frozen config: a different one is refused (naming the changes)
    unless ``force_config``, which freezes the new one (journaled). Runtime settings (device, workers)
    may differ: they are journaled and the given ones used."""
    from lrctl.runstore import now_iso

    frozen, _ = read_frozen_config(store)
    changes = config_mod.diff(frozen, cfg)
    runtime = config_mod.diff(frozen, cfg, runtime=True)
    if changes and not force_config:
        raise RunError(f"run '{store.name}' was created with a different config:\n  " + "\n  ".join(changes)
                       + "\nuse the run's own config (omit --config/--set), another --run name, "
                         "or --force-config to change it")
    if changes:
        store.write_config(config_mod.to_toml(cfg, header=f"lrctl run '{store.name}', config changed "
                                              f"{now_iso()} with --force-config."))
        store.journal("config_changed", durable=True, changes=changes)
    elif not force_config:
        cfg = config_mod.with_runtime_of(frozen, cfg)
    if runtime:
        store.journal("runtime_settings", changes=runtime)
    return cfg


def copy_for_fork(store: RunStore, name: str, step: int, notes: list[str] | None = None) -> RunStore:
    """An open run's files into new run ``name`` (locked; the caller saved first). Nothing is left
    behind when it fails. ``notes`` gets what the user must be told (a killed fork's partial copy removed)."""
    new_store = RunStore(store.runs_dir, name)
    if new_store.exists:
        raise RunError(f"run '{name}' exists already; pick another name")
    new_store.acquire()
    try:
        removed = new_store.remove_unfinished_copy()  # what an earlier fork into this name, killed, left
        if removed and notes is not None:
            notes.append(removed)
        store.copy_to(new_store)
        new_store.journal("forked", durable=True, source=store.name, step=step)
        new_store.finish_copy(store)
    except BaseException:
        new_store.close()
        raise
    store.journal("fork", to=name, step=step)
    return new_store
