"""The learning-rate range test: sweep the lr exponentially over ~100 batches from the current state.

The run itself is never changed: the trainer's full state (weights, optimizer, schedule, RNG) is
copied before the sweep and restored after it, nothing is saved, and the sweep is logged to its own
TensorBoard run (``<runs-dir>/_lr-find/<run>-e<epoch>``), outside the run's directory.

Suggestions: *steepest* (where the smoothed loss falls fastest per decade of lr) and *valley*
(fastai's default: inside the longest stretch where the loss keeps falling).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

from lrctl.engine import Trainer


@dataclass
class RangeTest:
    lrs: list[float]
    losses: list[float]  # smoothed
    raw: list[float]
    steepest: float
    valley: float
    stopped_early: bool

    @property
    def suggestion(self) -> float:
        return self.valley


def _steepest(lrs: list[float], losses: list[float]) -> float:
    logs = [math.log10(lr) for lr in lrs]
    first = max(1, len(lrs) // 10)  # the smoothed loss's first points are mostly its warm-up
    slopes = {i: (losses[i + 1] - losses[i - 1]) / (logs[i + 1] - logs[i - 1]) for i in range(first, len(lrs) - 1)}
    if not slopes:
        return lrs[len(lrs) // 2]
    return lrs[min(slopes, key=slopes.__getitem__)]


def _valley(lrs: list[float], losses: list[float]) -> float:
    """fastai's valley: the longest decreasing run of losses; a point two-thirds of the way down it."""
    n = len(losses)
    longest = [1] * n
    best_start = best_end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and longest[i] < longest[j] + 1:
                longest[i] = longest[j] + 1
        if longest[best_end] < longest[i]:
            best_end, best_start = i, i - longest[i]
    sections = (best_end - best_start) / 3
    return lrs[min(n - 1, max(0, best_start + int(sections) + int(sections / 2)))]


def range_test(trainer: Trainer, start: float = 1e-6, end: float = 1.0, batches: int = 100,
               beta: float = 0.98, diverge: float = 4.0) -> RangeTest:
    """Sweep and restore. Reads each batch's loss (a sync per batch: this is a probe, not training)."""
    import torch

    saved = copy.deepcopy(trainer.state_dict())
    model, optimizer, loss_fn = trainer.model, trainer.optimizer, trainer.loss_fn
    lrs, losses, raw = [], [], []
    average, best, stopped = 0.0, math.inf, False
    step = trainer.global_step
    try:
        model.train()
        done = 0
        while done < batches and not stopped:
            for x, y in trainer._batches():
                lr = start * (end / start) ** (done / max(1, batches - 1))
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss = loss_fn(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                value = float(loss.detach())
                average = beta * average + (1 - beta) * value
                smoothed = average / (1 - beta ** (done + 1))
                lrs.append(lr)
                raw.append(value)
                losses.append(smoothed)
                done += 1
                best = min(best, smoothed)
                if not math.isfinite(smoothed) or (done > 5 and smoothed > diverge * best):
                    stopped = True
                if stopped or done >= batches:
                    break
            trainer.global_step += 1  # the next pass over the data takes the next epoch's order
    finally:
        trainer.load_state_dict(saved)
        trainer.global_step = step
        torch.set_rng_state(saved["rng"]["torch"])
    keep = [i for i, v in enumerate(losses) if math.isfinite(v)]
    if stopped and len(keep) > 5:
        keep = keep[:-1]  # the exploding point says nothing about where to train
    lrs_k, losses_k = [lrs[i] for i in keep], [losses[i] for i in keep]
    if len(lrs_k) < 3:
        raise ValueError("the loss exploded at once: try a lower start (find-lr --start)")
    return RangeTest(lrs_k, losses_k, [raw[i] for i in keep], _steepest(lrs_k, losses_k), _valley(lrs_k, losses_k),
                     stopped)


def log_sweep(runs_dir, run: str, epoch: int, result: RangeTest):
    """The sweep as its own TensorBoard run; returns its directory."""
    from pathlib import Path

    from lrctl.tblog import TensorBoardLogger

    logdir = Path(runs_dir) / "_lr-find" / f"{run}-e{epoch}"
    logger = TensorBoardLogger(logdir, purge_step=0 if logdir.exists() else None)
    for i, (lr, loss) in enumerate(zip(result.lrs, result.losses, strict=True)):
        logger.log_dict({"lr_find/loss": loss, "lr_find/lr": lr}, i)
    logger.log_text("lr_find/suggestion", f"valley {result.valley:.3g}, steepest {result.steepest:.3g}", 0)
    logger.close()
    return logdir
