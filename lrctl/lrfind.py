"""The learning-rate range test: sweep the lr exponentially from the current state, measure, suggest.

::

    $ lrctl find-lr --run demo                          # 1e-5..1 over 100 batches (or 5 epochs' worth)
    $ lrctl find-lr --run demo --start 1e-6 --end 1 --batches 200
    Learning rate: find start=1e-6 end=1 batches=200    # the same at the prompt

The run itself is never changed: the trainer's full state (weights, optimizer, schedule, RNG) is
copied before the sweep and restored after it, nothing is saved, and the sweep is logged to its own
TensorBoard run (``<runs-dir>/_lr-find/<run>-e<epoch>``), outside the run's directory.

How it differs from fastai's and Lightning's finders (issue #19): they read the loss of the batch
just trained on and smooth it, so their curve is batch-to-batch noise under a lagging average, and
their rules (fastai's *valley* and *steep*, Lightning's steepest gradient) pick points inside that
noise or at the very start of the sweep. Here, after every step, the loss is measured on the same fixed
rows of the training set (up to :data:`EVAL_ROWS`, in eval mode, as the run's own train metric is), so
two points differ only by what the steps did. Then:

- ``best`` is where the (median-filtered) measured loss is lowest: past it, larger steps stop helping;
- the suggestion is :data:`BELOW_BEST` of ``best``: a constant lr trained for a chunk of epochs does
  best some way below the lr at which one pass stops improving (measured: ``python -m lrctl.lrtruth``);
- the band is the same fraction of every lr whose loss is within the noise (or a tenth of the whole
  drop) of the lowest: where the sweep cannot tell the minimum apart;
- when the loss moves less than the sweep can tell (:data:`FLAT` of itself, or three times its
  step-to-step scatter) it names no lr and says so in plain words, with the range that is flat.

``python -m lrctl.lrtruth`` scores this against the lr that actually trains best over 10 epochs (a grid
of constant-lr runs from the same state) and against fastai's and Lightning's rules.
"""

from __future__ import annotations

import copy
import math
import statistics
from dataclasses import dataclass

from lrctl.engine import Trainer

EVAL_ROWS = 2048  # rows of the training set the loss is measured on after every step
BELOW_BEST = 1 / 3  # the suggestion: this fraction of the lr where the measured loss is lowest
FLAT = 0.02  # a loss that moves less than 2% of itself over the sweep cannot tell lrs apart
BAND = 0.1  # the band: lrs whose loss is within this fraction of the whole drop of the lowest (or the noise)


@dataclass
class RangeTest:
    """A sweep and what it says. ``losses[i]`` is the loss on the fixed rows after the step at ``lrs[i]``."""

    lrs: list[float]
    losses: list[float]
    start_loss: float
    suggestion: float | None  # None when the sweep cannot tell (then ``flat`` says why)
    low: float  # the band: suggestions as good as this one, as far as the sweep can tell
    high: float
    best: float  # the lr where the measured loss is lowest
    flat: str | None  # the plain statement when the sweep cannot tell, else None
    stopped_early: bool
    note: str | None = None  # e.g. the loss was still falling when the sweep ended

    def marks(self) -> dict[str, float]:
        """The lrs a chart marks: the suggestion and its band, or the flat range."""
        if self.suggestion is None:
            return {"flat from": self.low, "to": self.high}
        return {"suggested": self.suggestion, "band": self.low, "to": self.high}

    def summary(self) -> str:
        """What the sweep says, in one or two lines."""
        if self.suggestion is None:
            return f"no suggestion: {self.flat}"
        text = (f"suggested lr: {self.suggestion:.3g} (band {self.low:.2g}..{self.high:.2g}) · a third of "
                f"{self.best:.2g}, where the loss measured after each step is lowest "
                f"({self.start_loss:.4g} -> {min(self.losses):.4g})")
        return text + (f"\n{self.note}" if self.note else "")


def _median_filter(values: list[float], half: int = 2) -> list[float]:
    """Each point replaced by the median of its 2*half+1 neighbours: one wild step does not move the minimum."""
    out = []
    for i in range(len(values)):
        window = sorted(values[max(0, i - half):i + half + 1])
        out.append(window[len(window) // 2])
    return out


def suggest(lrs: list[float], losses: list[float], start_loss: float, stopped_early: bool = False) -> RangeTest:
    """What a measured sweep says; pure, so it is tested on made-up curves too."""
    curve = _median_filter(losses)
    best = min(range(len(curve)), key=curve.__getitem__)
    # What the steps themselves add to the measurement: the raw points' scatter around the filtered curve.
    noise = statistics.median(abs(a - b) for a, b in zip(losses, curve, strict=True))
    drop = start_loss - curve[best]
    tolerance = max(FLAT * abs(start_loss), 3 * noise)
    if drop < tolerance:
        top = max(i for i, v in enumerate(curve) if v <= start_loss + tolerance)
        statement = (f"flat from {lrs[0]:.2g} to {lrs[top]:.2g}: the loss moved less than the sweep can tell "
                     f"({start_loss:.4g} -> {curve[best]:.4g}), so any lr in that range is as good after one pass"
                     + (f"; sweep higher to see where a larger lr starts to help (end above {lrs[top]:.2g})"
                        if top == len(curve) - 1 else f"; above {lrs[top]:.2g} the loss rises"))
        return RangeTest(lrs, losses, start_loss, None, lrs[0], lrs[top], lrs[best], statement, stopped_early)
    # Where the lowest loss may lie: every lr whose loss is within the noise (or a tenth of the drop) of it.
    near = [i for i, v in enumerate(curve) if v <= curve[best] + max(2 * noise, BAND * drop)]
    note = None
    if best >= len(curve) - 2 and not stopped_early:
        note = (f"the loss was still falling when the sweep ended at {lrs[-1]:.2g}: a larger lr may do as well "
                f"(sweep further with a higher end)")
    return RangeTest(lrs, losses, start_loss, lrs[best] * BELOW_BEST, lrs[near[0]] * BELOW_BEST,
                     lrs[near[-1]] * BELOW_BEST, lrs[best], None, stopped_early, note)


def _eval_rows(trainer: Trainer):
    """Up to EVAL_ROWS training rows at an even stride, on the trainer's device (the same rows every step)."""
    import torch

    n = trainer.split.n_train
    idx = torch.linspace(0, n - 1, min(n, EVAL_ROWS)).round().long().unique()
    s = trainer.split
    if s.in_memory:
        return s.x_train[idx.to(s.x_train.device)], s.y_train[idx.to(s.y_train.device)]
    from torch.utils.data import default_collate

    x, y = default_collate([s.train_set[i] for i in idx.tolist()])
    return x.to(trainer.device), y.to(trainer.device)


def sweep(trainer: Trainer, start: float = 1e-5, end: float = 1.0, batches: int = 100,
          diverge: float = 4.0) -> tuple[list[float], list[float], float, bool]:
    """(lrs, measured losses, starting loss, stopped early): ``batches`` steps from the trainer's state,
    which is restored afterwards. One host read per step: this is a probe, not training."""
    import torch

    saved = copy.deepcopy(trainer.state_dict())
    model, loss_fn = trainer.model, trainer.loss_fn
    x_eval, y_eval = _eval_rows(trainer)

    def measure() -> float:
        model.eval()
        with torch.inference_mode():
            value = float(loss_fn(model(x_eval), y_eval))
        model.train()
        return value

    lrs: list[float] = []
    losses: list[float] = []
    stopped = False
    try:
        start_loss = measure()
        best = start_loss
        epoch = trainer.global_step
        while len(lrs) < batches and not stopped:
            for x, y in trainer.batches(epoch):
                lr = start * (end / start) ** (len(lrs) / max(1, batches - 1))
                step_at(trainer, lr, x, y)
                value = measure()
                lrs.append(lr)
                losses.append(value)
                best = min(best, value)
                stopped = not math.isfinite(value) or value > diverge * best
                if stopped or len(lrs) >= batches:
                    break
            epoch += 1  # the next pass over the data takes the next epoch's order
    finally:
        trainer.load_state_dict(saved)
    keep = [i for i, v in enumerate(losses) if math.isfinite(v)]
    return [lrs[i] for i in keep], [losses[i] for i in keep], start_loss, stopped


def default_batches(trainer: Trainer) -> int:
    """100 steps, or five epochs' worth when an epoch is shorter than 20 batches (the sweep measures after
    every step, so it costs about twice its steps: ~10 epochs at most)."""
    return max(20, min(100, 5 * trainer.batches_per_epoch))


def step_at(trainer: Trainer, lr: float, x, y):
    """One optimizer step on batch (x, y) at ``lr`` (every sweep's step); returns the batch's loss tensor."""
    for group in trainer.optimizer.param_groups:
        group["lr"] = lr
    loss = trainer.loss_fn(trainer.model(x), y)
    trainer.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    trainer.optimizer.step()
    return loss


def range_test(trainer: Trainer, start: float = 1e-5, end: float = 1.0, batches: int | None = None,
               diverge: float = 4.0) -> RangeTest:
    """Sweep, restore, suggest. ``batches`` defaults to :func:`default_batches`."""
    lrs, losses, start_loss, stopped = sweep(trainer, start, end, batches or default_batches(trainer), diverge)
    if len(lrs) < 5:
        raise ValueError("the loss exploded at once: try a lower start (find-lr --start, or find start=...)")
    return suggest(lrs, losses, start_loss, stopped)


def log_sweep(runs_dir, run: str, epoch: int, result: RangeTest):
    """The sweep as its own TensorBoard run; returns its directory."""
    from pathlib import Path

    from lrctl.tblog import TensorBoardLogger

    logdir = Path(runs_dir) / "_lr-find" / f"{run}-e{epoch}"
    logger = TensorBoardLogger(logdir, purge_step=0 if logdir.exists() else None)
    for i, (lr, loss) in enumerate(zip(result.lrs, result.losses, strict=True)):
        logger.log_dict({"lr_find/loss": loss, "lr_find/lr": lr}, i)
    logger.log_text("lr_find/suggestion", result.summary(), 0)
    logger.close()
    return logdir
