"""``status`` at the prompt: where the run stands, in a few lines (the toolbar is the one-line version).

::

    Learning rate: status
    run 'demo' at epoch 10 · train_mse 17.5551 · test_mse 22.7488
    lr: 0.032805 in the last epoch, 0.0295245 next
    schedule: exp 0.05 gamma=0.9 (the chunk from epoch 5, 5 epochs trained)
    pending: none
    checkpoint: epoch 10, saved 4 s ago (runs/demo/checkpoint.pt)
    TensorBoard: tensorboard --logdir runs (or lrctl tb)
"""

from __future__ import annotations

import time
from typing import Any

from lrctl.runstore import CHECKPOINT_FILE
from lrctl.view import fmt_lr, fmt_metric


def _age(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def status_lines(session: Any, tb_url: str | None = None) -> list[str]:
    """Epoch and last metrics, lr (last used and next), the schedule and where it is, pending work,
    the checkpoint's epoch and age, and where TensorBoard shows the run."""
    s = session.summary()
    metric, last = session.metric, s.get("last") or {}
    store = session.store
    lines = [f"run '{store.name}' at epoch {s.get('global_step', 0)} · train_{metric} "
             f"{fmt_metric(last.get('train'))} · test_{metric} {fmt_metric(last.get('test'))}"]
    last_lr, next_lr = s.get("last_lr"), s.get("lr")
    lr = "lr: " + ("no epoch trained yet" if last_lr is None else f"{fmt_lr(last_lr)} in the last epoch")
    if next_lr is not None:
        lr += f", {fmt_lr(next_lr)} next"
    lines.append(lr)
    runner = session.trainer.runner if session.trainer is not None else None
    if runner is not None:
        schedule = f"schedule: {runner.spec.text}"
        if session.chunks:
            chunk = session.chunks[-1]
            trained = chunk["end"] - chunk["start"]
            if chunk["expr"] in (runner.spec.text, "keep"):
                schedule += f" (the chunk from epoch {chunk['start']}, {trained} epochs trained)"
            else:
                schedule += (f" (changed during the chunk from epoch {chunk['start']}, which began as "
                             f"`{chunk['expr']}`; {trained} epochs trained)")
        lines.append(schedule)
    pending = session.pending
    lines.append("pending: " + (f"{pending.describe(session.global_step)} of interrupted work "
                                f"(lrctl resume {store.name} finishes it)" if pending is not None else "none"))
    path = store.dir / CHECKPOINT_FILE
    if path.exists():
        saved = session.saved_step if session.saved_step is not None else s.get("global_step", 0)
        lines.append(f"checkpoint: epoch {saved}, saved {_age(time.time() - path.stat().st_mtime)} ago ({path})")
    else:
        lines.append("checkpoint: none yet")
    lines.append(f"TensorBoard: {tb_url}" if tb_url else
                 f"TensorBoard: tensorboard --logdir {store.runs_dir} (or lrctl tb; lrctl --tb starts it beside "
                 "the prompt)")
    return lines


def socket_status(session: Any) -> dict[str, Any]:
    """Where the run stands, for ``lrctl send RUN status`` (one JSON object)."""
    summary = session.summary()
    pending = session.pending
    step = session.global_step
    return {"ok": True, "run": session.store.name, "global_step": step, "running": session.running,
            "paused": session.paused, "lr": session.trainer.lr if session.trainer is not None else summary.get("lr"),
            "metric": session.metric, "last": summary.get("last"),
            "pending": pending.describe(step) if pending else None}
