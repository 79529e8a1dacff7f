"""``lrctl replay RUN --to NEW``: re-execute a run's journal from its initial state into a new run.

The journal records every command (absolute: from global epoch E, N epochs of expression S), every
mid-chunk change with the global batch it took effect at, and the global epoch the run stood at
after each stop, rollback, undo, divergence or session end. Replay trains lazily: whenever the
journal says "the run stood at epoch S", the new run trains its pending work up to S. Training is
deterministic, so the new run ends bit-identical (weights and scalars) to the original.
"""

from __future__ import annotations

from pathlib import Path

from lrctl.runops import read_frozen_config
from lrctl.runstore import Pending, RunError, RunStore
from lrctl.session import Observer, RunSession

STEP_OF = {"chunk_end": "step", "interrupted": "step", "session_end": "step", "pending_dropped": "step",
           "pending_replaced": "step", "diverged": "rolled_back_to"}


def replay(runs_dir: Path, source: str, target: str, observer: Observer | None = None) -> int:
    """Returns the new run's final global epoch."""
    src = RunStore(runs_dir, source)
    if not src.exists:
        raise RunError(f"no run '{source}' in {runs_dir}")
    if RunStore(runs_dir, target).exists:
        raise RunError(f"run '{target}' exists already; replay needs a new name")
    events = src.read_journal()
    if any(e["event"] == "config_changed" for e in events):
        raise RunError(f"run '{source}' changed its config with --force-config; its journal cannot be replayed")
    cfg, _ = read_frozen_config(src)
    final = int(src.summary().get("global_step", 0))
    session = RunSession.open(runs_dir, target, cfg, save_every=1e9, observer=observer,
                              config_origin=f"replay of run '{source}'")
    try:
        session.load()
        session.store.journal("replay_of", source=source)

        def advance(step: int) -> None:
            if session.global_step < step:
                session.finish_pending(stop_at=step)
            if session.global_step != step:
                raise RunError(f"replay reached epoch {session.global_step}, the journal says {step}: "
                               "the journal is incomplete")

        for event in events:
            kind = event["event"]
            if kind == "command":
                pending = Pending([dict(c) for c in event["chunks"]], event.get("source", "repl"))
                session.work.replace(pending)
            elif kind == "control" and event.get("cmd") == "lr":
                change = {k: event[k] for k in ("cmd", "value", "mode", "at_batch", "source")}
                bpe = session.trainer.batches_per_epoch
                pending = session.work.current
                owner = next((c for c in (pending.chunks if pending else [])
                              if c["start"] * bpe < change["at_batch"] <= (c["start"] + c["epochs"]) * bpe), None)
                if owner is None:
                    raise RunError(f"the journal's lr change at batch {change['at_batch']} belongs to no command")
                owner.setdefault("changes", []).append(change)
                session.work.replace(pending)
                session.store.journal("control", durable=True, step=event.get("step"), **change)
            elif kind == "undo":
                advance(event["from_step"])
                session.undo()
            elif kind in STEP_OF:
                advance(int(event[STEP_OF[kind]]))
                if kind == "pending_dropped":
                    session.drop_pending(f"replayed: {event.get('reason', '')}")
                elif kind == "interrupted" and event.get("how") == "abandon":  # its epoch's lr changes went too
                    session.work.drop_changes_after(int(event["step"]) * session.trainer.batches_per_epoch)
        advance(final)
        return session.global_step
    finally:
        session.close("replay")
