"""What a run still has to do after a damaged file: its pending work, rebuilt from the checkpoint and journal.

Normally ``pending.json`` says what is left. When it is damaged, or when the latest checkpoint was
lost and an older one loaded (the epochs since are gone and must be trained again), the work left
*from the loaded checkpoint* is rebuilt from what the checkpoint recorded (its own copy of the
pending work when it was saved) and the journal lines written after that save (new commands,
mid-chunk lr changes, abandoned epochs, dropped work). When the journal shows something that cannot
be redone exactly from there (an undo, a fork, a config change after that checkpoint), nothing is
guessed: the work is dropped and the message names it.

:func:`restore` loads a run's checkpoint into a trainer and settles all of that; :func:`recover` is
the decision itself, a pure function over plain data.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from lrctl.runstore import (
    CHECKPOINT_FILE,
    PENDING_FILE,
    PREVIOUS_CHECKPOINT_FILE,
    LoadedCheckpoint,
    Pending,
    RunStore,
)

# Journal events after which the run's timeline cannot be rebuilt from an older checkpoint.
_UNREPLAYABLE = {"undo": "an undo", "fork": "a fork", "forked": "a fork", "config_changed": "a config change"}
_FORKS = ("fork", "forked")  # harmless when at the loaded checkpoint's own epoch: the state is the same


@dataclass
class Restored:
    """What :func:`restore` found: the chunks the checkpoint records, what to tell the user, and
    whether to write a checkpoint at once (``heal``; ``keep_again``: also as this epoch's kept one)."""

    chunks: list[dict[str, Any]]
    warnings: list[str]
    heal: bool
    keep_again: bool


def restore(store: RunStore, trainer: Any) -> Restored | None:
    """Load the latest good checkpoint into ``trainer`` (None: the run has none yet), falling back over
    damaged files; settle the pending work and the kept checkpoints to the epoch that loaded."""
    if not store.has_checkpoint():
        return None
    meta_problem = store.meta_problem()
    latest_summary = store.read_meta().get("summary") or {}
    loaded = store.load_checkpoint()
    warnings = list(loaded.warnings)
    trainer.load_state_dict(loaded.state)
    step = trainer.global_step
    is_latest = loaded.path.name == CHECKPOINT_FILE
    previous_problem = store.previous_problem() if is_latest else None
    if previous_problem:  # the fallback is gone: make a new one now, while the latest is good
        warnings.append(f"{previous_problem}; the fallback checkpoint was written anew")
    if meta_problem:
        warnings.append(f"{meta_problem}; loaded {loaded.path.name} at epoch {step} unverified, "
                        "and wrote a new checksum file")
    fallback_from = None if is_latest else int(latest_summary.get("global_step", _last_saved_step(store)))
    if fallback_from is not None and fallback_from > step:
        warnings.append(f"loaded epoch {step}; the run had reached epoch {fallback_from}")
    pending_changed, rebuilt = _settle_pending(store, loaded, trainer, fallback_from, warnings)
    pruned = [s for s in store.kept_steps() if s > step] if fallback_from is not None else []
    if pruned:
        warnings.append(f"kept checkpoints of lost epochs removed: {pruned}")
    # A damaged checkpoint file damages the kept files that are hard links of it: drop them. The one of
    # the epoch that loaded is not dropped but replaced when the heal writes that epoch again: a kill
    # before then leaves it to be found (and replaced) by the next open, not silently gone.
    torn: list[int] = []
    dropped_all: list[int] = []
    # (only an epoch boundary is kept again: a mid-epoch state is never a kept checkpoint)
    rewritten = step if not getattr(trainer, "batch_in_epoch", 0) else None
    for name, damaged in ((CHECKPOINT_FILE, not is_latest), (PREVIOUS_CHECKPOINT_FILE, bool(previous_problem))):
        linked = store.kept_linked_to(name) if damaged else []
        dropped = [s for s in linked if s != rewritten]
        if dropped:
            warnings.append(f"kept checkpoints damaged with {name} removed (undo and fork --at cannot use "
                            f"them): {dropped}")
        dropped_all += dropped
        torn += linked
    # What was found is journaled before anything is repaired: were this open killed from here on, the
    # repairs would hide the damage from the next open, which says this instead (RunSession.load).
    if warnings:
        store.journal("recovering", durable=True, warnings=warnings)
    if rebuilt is not None:
        store.write_pending(rebuilt.pending)
        store.journal("pending_recovered", durable=True, step=step,
                      chunks=rebuilt.pending.chunks if rebuilt.pending else None, why=rebuilt.messages)
    store.drop_kept(pruned + dropped_all)
    heal = bool(loaded.warnings or meta_problem or previous_problem or pending_changed)
    return Restored(list(loaded.state.get("chunks") or []), warnings, heal, rewritten in torn)


def _last_saved_step(store: RunStore) -> int:
    steps = [e["step"] for e in store.read_journal() if e.get("event") == "saved"]
    return int(steps[-1]) if steps else 0


def _settle_pending(store: RunStore, loaded: LoadedCheckpoint, trainer: Any, fallback_from: int | None,
                    warnings: list[str]) -> tuple[bool, Recovery | None]:
    """The pending work after a damaged file (see :func:`recover`), decided, not written: (whether
    anything was wrong, the recovery to write when ``pending.json`` must be written anew)."""
    problem = store.pending_problem()
    step = trainer.global_step
    snapshot = loaded.state.get("pending") or {}
    missing = problem is None and store.read_pending() is None
    if fallback_from is None and problem is None and not missing:
        return False, None
    events = store.read_journal()
    after = None
    for i in range(len(events) - 1, -1, -1):
        if events[i].get("event") == "saved" and events[i].get("sha") == loaded.sha:
            after = events[i + 1:]
            break
    if missing:  # no pending file: do the checkpoint's copy and the journal since its save say work is left?
        rebuilt, unsure = _replay_journal(snapshot, after, trainer.batches_per_epoch, step)
        if unsure:  # the journal cannot tell: the checkpoint's own copy decides whether work was left
            rebuilt = list(snapshot.get("chunks") or [])
            later = store.last_command_left(step) if Pending(rebuilt).remaining(step) == 0 else None
            if later:  # unless the journal's last command came after that copy and is not done
                rebuilt, snapshot = later, {"chunks": later}
        if Pending(rebuilt).remaining(step) > 0 and fallback_from is None:
            problem = f"{PENDING_FILE} is missing"
        elif fallback_from is None:
            return False, None
    result = recover(loaded_step=trainer.global_step, batches_per_epoch=trainer.batches_per_epoch,
                     fallback_from=fallback_from, file_pending=store.read_pending(), file_problem=problem,
                     snapshot=snapshot or loaded.state.get("pending"), events_after_save=after)
    warnings += result.messages
    return True, result if result.rewritten else None


@dataclass
class Recovery:
    """The pending work to use, and what to tell the user (empty when nothing was wrong)."""

    pending: Pending | None
    messages: list[str] = field(default_factory=list)
    rewritten: bool = False  # pending.json must be written anew


def describe_chunks(chunks: list[dict[str, Any]], step: int) -> str:
    parts = [f"{c['epochs']}@{c['expr']} from epoch {c['start']}" for c in chunks if c["start"] + c["epochs"] > step]
    return "; ".join(parts) or "nothing"


def recover(*, loaded_step: int, batches_per_epoch: int, fallback_from: int | None,
            file_pending: Pending | None, file_problem: str | None, snapshot: dict[str, Any] | None,
            events_after_save: list[dict[str, Any]] | None) -> Recovery:
    """Decide the pending work after opening a run.

    Args:
        loaded_step: the epoch of the checkpoint that loaded.
        batches_per_epoch: to place mid-chunk changes (recorded by global batch) in their chunk.
        fallback_from: the epoch the run had reached when the latest checkpoint was lost (None: it loaded).
        file_pending: what ``pending.json`` says (None: absent or damaged).
        file_problem: why ``pending.json`` could not be read, if it could not.
        snapshot: the pending work stored in the loaded checkpoint when it was saved.
        events_after_save: journal events after that checkpoint's save (None: its save is not in the journal).
    """
    if fallback_from is None and file_problem is None:
        return Recovery(file_pending)
    lost = (f"epochs {loaded_step}..{fallback_from - 1} were lost with the latest checkpoint"
            if fallback_from is not None and fallback_from > loaded_step else "")
    why = "; ".join(x for x in (file_problem, lost) if x)
    if file_pending is not None and file_pending.chunks and file_pending.chunks[0]["start"] <= loaded_step:
        # pending.json still holds the chunk the loaded checkpoint is in: it redoes the lost epochs exactly.
        redo = f": the pending work redoes them exactly ({describe_chunks(file_pending.chunks, loaded_step)})"
        return Recovery(file_pending, [why + redo] if why else [])
    rebuilt, unsure = _replay_journal(snapshot, events_after_save, batches_per_epoch, loaded_step)
    if unsure is None:
        left = [c for c in rebuilt if c["start"] + c["epochs"] > loaded_step]
        if not left or left[0]["start"] <= loaded_step:
            if not left:
                return Recovery(None, [_joined(why, "no unfinished work was pending then")] if why else [],
                                rewritten=file_problem is not None)
            text = describe_chunks(left, loaded_step)
            return Recovery(Pending(left, "recovered"),
                            [_joined(why, "the unfinished work was rebuilt from the checkpoint and the journal "
                                          f"and will be redone exactly: {text}")], rewritten=True)
        unsure = "the journal's work does not start where the loaded checkpoint is"
    dropped = file_pending.chunks if file_pending is not None else (snapshot or {}).get("chunks") or []
    text = describe_chunks(dropped, loaded_step) if dropped else "the interrupted command"
    return Recovery(None, [_joined(why, f"the unfinished work cannot be redone exactly ({unsure}) and was "
                                        f"dropped: {text}. Train it again at the prompt")], rewritten=True)


def _joined(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def _replay_journal(snapshot: dict[str, Any] | None, events: list[dict[str, Any]] | None,
                    batches_per_epoch: int, loaded_step: int) -> tuple[list[dict[str, Any]], str | None]:
    """The pending chunks as of the end of the journal, starting from the checkpoint's own copy."""
    if events is None:
        return [], "the journal does not record when the loaded checkpoint was saved"
    chunks = copy.deepcopy((snapshot or {}).get("chunks") or [])
    for event in events:
        kind = event.get("event")
        if kind in _FORKS and event.get("step") == loaded_step:
            chunks = [] if kind == "forked" else chunks  # a fork starts with no pending work
            continue
        if kind == "undo" and event.get("to_step") == loaded_step:
            chunks = []  # the undo that wrote this very checkpoint (its line follows its saves); it drops the work
            continue
        if kind in _UNREPLAYABLE:
            return [], f"{_UNREPLAYABLE[kind]} came after that checkpoint"
        if kind == "command":
            chunks = copy.deepcopy(event.get("chunks") or [])
        elif kind in ("pending_dropped", "diverged"):
            chunks = []
        elif kind == "control" and event.get("cmd") == "lr":
            change = {k: event[k] for k in ("cmd", "value", "mode", "at_batch", "source") if k in event}
            for chunk in chunks:
                lo, hi = chunk["start"] * batches_per_epoch, (chunk["start"] + chunk["epochs"]) * batches_per_epoch
                if lo < change.get("at_batch", -1) <= hi:
                    known = chunk.setdefault("changes", [])
                    if change not in known:
                        known.append(change)
                    break
        elif kind == "interrupted" and event.get("how") == "abandon":
            cut = int(event["step"]) * batches_per_epoch
            for chunk in chunks:
                chunk["changes"] = [c for c in chunk.get("changes", []) if c["at_batch"] <= cut]
    return chunks, None
