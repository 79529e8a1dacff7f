"""The learning-rate range test: sweep the lr from the current state, try a few lrs for real, suggest.

::

    $ lrctl find-lr --run demo                          # a sweep 1e-5..1, then two 2-epoch trials
    $ lrctl find-lr --run demo --start 1e-6 --end 1 --batches 200
    Learning rate: find start=1e-6 end=1 batches=200    # the same at the prompt

The run itself is never changed: the trainer's full state (weights, optimizer, schedule, RNG, batch
order) is copied before and restored after, nothing is saved, and the sweep is logged to its own
TensorBoard run (``<runs-dir>/_lr-find/<run>-e<epoch>``), outside the run's directory.

How it differs from fastai's and Lightning's finders (issue #19): they read the loss of the batch just
trained on and smooth it, so their curve is batch-to-batch noise under a lagging average, and their
rules (fastai's *valley* and *steep*, Lightning's steepest gradient) pick points inside that noise or
at the very start of the sweep; and one pass at a growing lr says where a *step* stops helping, not
which lr trains best over the next epochs. Here:

1. **Sweep**: the lr grows exponentially over :func:`default_batches` steps and after every step the
   loss is measured on the same fixed rows of the training set (up to :data:`EVAL_ROWS`, in eval mode,
   as the run's own train metric is), so two points differ only by what the steps did. ``best`` is
   where that (median-filtered) loss is lowest, ``knee`` the first lr where it has made :data:`KNEE`
   of its drop. When the loss moves less than the sweep can tell (:data:`FLAT` of itself, or three
   times its step-to-step scatter) it names no lr and says so.
2. **Trials**: from the run's state, :data:`TRIAL_EPOCHS` epochs at a constant lr over the run's own
   next batches (the orders its next epochs will take), at ``knee`` and at ``knee`` times :data:`STEP`
   (0.46x). They start from the knee, not from ``best``: where the lowest point falls is decided by the
   last few noisy steps before the loss explodes (on ``diabetes`` it moves from 0.24 to 0.79 with the
   batch order), while the knee sits on the steep part of the curve and moves much less (0.24..0.39).
   Each trial is measured on the same rows after each of its last :data:`LAST` steps: their mean is its
   loss, half their range its scatter. The band is the trial whose loss is lowest and every trial that ends
   within the two trials' scatter of it (the trials cannot tell them apart); the suggestion is the
   lowest lr of the band: two epochs favour a large lr, and over more epochs a lower one catches up
   with less step noise and no late instability.

Why trials: the lr that trains best over ten epochs is not where one pass at a growing lr stops
improving, and its distance below that point differs by workload (about 0.5x on the lesson, 0.1x on
``diabetes``); two epochs at a constant lr see what the next epochs will do, at two lrs. A sweep plus
two trials costs about ten to fourteen epochs of the run (about twelve). Two epochs are still a short
horizon: they favour a larger lr than ten epochs do where a large lr turns unstable only later.

``python -m lrctl.lrtruth`` scores this against the lr that actually trains best over 10 epochs (a grid
of constant-lr runs from the same state) and against fastai's and Lightning's rules.
"""

from __future__ import annotations

import copy
import math
import statistics
from dataclasses import dataclass, field

from lrctl.engine import Trainer

EVAL_ROWS = 2048  # rows of the training set the loss is measured on after every step
FLAT = 0.02  # a sweep whose loss moves less than 2% of the starting loss cannot tell lrs apart
TRIAL_EPOCHS = 2  # each candidate lr trains this many epochs from the run's state
KNEE = 0.9  # the knee: the first lr of the sweep where the loss has made this fraction of its drop
STEP = 10 ** (-1 / 3)  # the trials' lrs: ``knee`` and ``knee`` times STEP (a third of a decade below)
LAST = 5  # a trial is measured after each of its last LAST steps


@dataclass
class Trial:
    """TRIAL_EPOCHS epochs at a constant ``lr`` from the run's state, measured on the fixed rows at the end."""

    lr: float
    loss: float  # the mean of the last LAST measurements (inf when the trial diverged)
    noise: float = 0.0  # half their range: how far apart two trials may end by chance


@dataclass
class RangeTest:
    """A sweep, the trials, and what they say. ``losses[i]`` is the loss on the fixed rows after the step
    at ``lrs[i]``."""

    lrs: list[float]
    losses: list[float]
    start_loss: float
    suggestion: float | None  # None when the finder cannot tell (then ``flat`` says why)
    low: float  # the band: lrs as good as the suggestion, as far as the finder can tell
    high: float
    best: float  # the lr where the loss measured along the sweep is lowest
    knee: float  # the first lr where it has made KNEE of its drop: the trials start here
    flat: str | None  # the plain statement when the finder cannot tell, else None
    stopped_early: bool
    note: str | None = None  # which way a better lr may lie, or that the trials cannot tell theirs apart
    trials: list[Trial] = field(default_factory=list)

    def marks(self) -> dict[str, float]:
        """The lrs a chart marks: the suggestion and its band, or the flat range."""
        if self.suggestion is None:
            return {"flat from": self.low, "to": self.high}
        if self.low == self.high:
            return {"suggested": self.suggestion}
        return {"suggested": self.suggestion, "band": self.low, "to": self.high}

    def summary(self) -> str:
        """What the finder says, in one to three lines."""
        if self.suggestion is None:
            return f"no suggestion: {self.flat}"
        band = f" (band {self.low:.2g}..{self.high:.2g})" if self.low < self.high else ""
        text = (f"suggested lr: {self.suggestion:.3g}{band} · {_trials_text(self)}"
                f"; the trials start at {self.knee:.2g}, where one pass of the sweep made {KNEE:.0%} of its drop "
                f"({self.start_loss:.4g} -> {min(_median_filter(self.losses)):.4g} at {self.best:.2g})")
        return text + (f"\n{self.note}" if self.note else "")


def _trials_text(result: RangeTest) -> str:
    trials = sorted(result.trials, key=lambda t: -t.lr)
    return (f"{TRIAL_EPOCHS} epochs from here at " + " / ".join(f"{t.lr:.2g}" for t in trials)
            + " leave the loss at " + " / ".join("diverged" if math.isinf(t.loss) else f"{t.loss:.4g}" for t in trials)
            + f" (it is {result.start_loss:.4g})")


def _median_filter(values: list[float], half: int = 2) -> list[float]:
    """Each point replaced by the median of its 2*half+1 neighbours: one wild step does not move the minimum."""
    out = []
    for i in range(len(values)):
        window = sorted(values[max(0, i - half):i + half + 1])
        out.append(window[len(window) // 2])
    return out


def read_sweep(lrs: list[float], losses: list[float], start_loss: float) -> tuple[float, float, str | None, float]:
    """(``best``, ``knee``, the statement when the sweep is flat or None, the top of the flat range); pure."""
    curve = _median_filter(losses)
    best = min(range(len(curve)), key=curve.__getitem__)
    # What the steps themselves add to the measurement: the raw points' scatter around the filtered curve.
    noise = statistics.median(abs(a - b) for a, b in zip(losses, curve, strict=True))
    tolerance = max(FLAT * abs(start_loss), 3 * noise)
    drop = start_loss - curve[best]
    if drop >= tolerance:
        knee = next(i for i, v in enumerate(curve) if start_loss - v >= KNEE * drop)
        return lrs[best], lrs[knee], None, lrs[best]
    top = max(i for i, v in enumerate(curve) if v <= start_loss + tolerance)
    statement = (f"flat from {lrs[0]:.2g} to {lrs[top]:.2g}: the loss moved less than the sweep can tell "
                 f"({start_loss:.4g} -> {curve[best]:.4g}), so any lr in that range is as good after one pass"
                 + (f"; sweep higher to see where a larger lr starts to help (end above {lrs[top]:.2g})"
                    if top == len(curve) - 1 else f"; above {lrs[top]:.2g} the loss rises"))
    return lrs[best], lrs[best], statement, lrs[top]


def suggest(lrs: list[float], losses: list[float], start_loss: float, trials: list[Trial],
            stopped_early: bool = False) -> RangeTest:
    """What a measured sweep and its trials say; pure, so it is tested on made-up numbers too."""
    best, knee, flat, top = read_sweep(lrs, losses, start_loss)
    if flat is not None:
        return RangeTest(lrs, losses, start_loss, None, lrs[0], top, best, knee, flat, stopped_early, trials=trials)
    trials = sorted(trials, key=lambda t: -t.lr)
    winner = min(trials, key=lambda t: t.loss)
    if math.isinf(winner.loss):
        raise ValueError(f"every trial diverged ({trials[-1].lr:.2g}..{trials[0].lr:.2g}): try a lower end")
    # Trials that end within their noise of the lowest: the trials cannot tell these lrs apart.
    near = [t.lr for t in trials if t.loss <= winner.loss + winner.noise + t.noise]
    # Among lrs the trials cannot tell apart, the lowest: over more epochs than the trials' a lower lr
    # catches up, with less step noise and no late instability (two epochs favour a large lr).
    result = RangeTest(lrs, losses, start_loss, min(near), min(near), max(near), best, knee, None, stopped_early,
                       trials=trials)
    if len(near) > 1:
        result.note = (f"the trials cannot tell {min(near):.2g} from {max(near):.2g} after {TRIAL_EPOCHS} epochs "
                       "(each ends within the other's step-to-step scatter): the lower is the safer over more epochs")
    elif winner is trials[0]:
        result.note = (f"the larger lr trained best: a larger one may do as well over {TRIAL_EPOCHS} epochs (the "
                       f"sweep's loss was lowest at {best:.2g}), though over more epochs a large lr may turn unstable")
    elif winner is trials[-1]:
        result.note = "the lowest lr tried trained best: a lower one may do better still"
    return result


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


class _Probe:
    """The trainer, its state to come back to, and the fixed rows every measurement reads."""

    def __init__(self, trainer: Trainer) -> None:
        import torch

        torch.set_num_threads(trainer.threads)  # the trainer's threads on this thread (it may be built on another)
        self.trainer = trainer
        self.saved = copy.deepcopy(trainer.state_dict())
        self.x, self.y = _eval_rows(trainer)

    def measure(self) -> float:
        import torch

        model = self.trainer.model
        model.eval()
        with torch.inference_mode():
            value = float(self.trainer.loss_fn(model(self.x), self.y))
        model.train()
        return value

    def restore(self) -> None:
        self.trainer.load_state_dict(copy.deepcopy(self.saved))

    def sweep(self, start: float, end: float, batches: int, diverge: float) -> tuple[list[float], list[float], bool]:
        """(lrs, measured losses, stopped early): one step per lr, one host read per step."""
        trainer = self.trainer
        lrs: list[float] = []
        losses: list[float] = []
        best, stopped = self.start_loss, False
        epoch = trainer.global_step
        while len(lrs) < batches and not stopped:
            for x, y in trainer.batches(epoch):
                lr = start * (end / start) ** (len(lrs) / max(1, batches - 1))
                step_at(trainer, lr, x, y)
                value = self.measure()
                lrs.append(lr)
                losses.append(value)
                best = min(best, value)
                stopped = not math.isfinite(value) or value > diverge * best
                if stopped or len(lrs) >= batches:
                    break
            epoch += 1  # the next pass over the data takes the next epoch's order
        return lrs, losses, stopped

    def trial(self, lr: float) -> Trial:
        """TRIAL_EPOCHS epochs at ``lr`` from the saved state over the run's own next batches (the orders
        its next epochs will take), measured after each of the last LAST steps."""
        self.restore()
        trainer = self.trainer
        steps = TRIAL_EPOCHS * trainer.batches_per_epoch
        values = []
        for epoch in range(trainer.global_step, trainer.global_step + TRIAL_EPOCHS):
            for x, y in trainer.batches(epoch):
                step_at(trainer, lr, x, y)
                steps -= 1
                if steps < LAST:
                    values.append(self.measure())
        if not all(math.isfinite(v) for v in values):
            return Trial(lr, math.inf, math.inf)
        return Trial(lr, statistics.fmean(values), (max(values) - min(values)) / 2)

    @property
    def start_loss(self) -> float:
        if not hasattr(self, "_start"):
            self._start = self.measure()
        return self._start


def sweep(trainer: Trainer, start: float = 1e-5, end: float = 1.0, batches: int = 100,
          diverge: float = 4.0) -> tuple[list[float], list[float], float, bool]:
    """(lrs, measured losses, starting loss, stopped early): ``batches`` steps from the trainer's state,
    which is restored afterwards."""
    probe = _Probe(trainer)
    try:
        start_loss = probe.start_loss
        lrs, losses, stopped = probe.sweep(start, end, batches, diverge)
    finally:
        probe.restore()
    keep = [i for i, v in enumerate(losses) if math.isfinite(v)]
    return [lrs[i] for i in keep], [losses[i] for i in keep], start_loss, stopped


def default_batches(trainer: Trainer) -> int:
    """100 steps, or five epochs' worth when an epoch is shorter than 20 batches (with a measurement after
    every step the sweep costs about seven epochs; the two trials about four)."""
    return max(20, min(100, 5 * trainer.batches_per_epoch))


def step_at(trainer: Trainer, lr: float, x, y):
    """One optimizer step on batch (x, y) at ``lr`` (every sweep's and trial's step), as the engine takes
    it (:meth:`lrctl.engine.Trainer.step_on`); returns the batch's loss tensor."""
    return trainer.step_on(x, y, lr)


def range_test(trainer: Trainer, start: float = 1e-5, end: float = 1.0, batches: int | None = None,
               diverge: float = 4.0) -> RangeTest:
    """Sweep, try the candidates, restore, suggest. ``batches`` defaults to :func:`default_batches`."""
    probe = _Probe(trainer)
    try:
        start_loss = probe.start_loss
        lrs, losses, stopped = probe.sweep(start, end, batches or default_batches(trainer), diverge)
        keep = [i for i, v in enumerate(losses) if math.isfinite(v)]
        lrs, losses = [lrs[i] for i in keep], [losses[i] for i in keep]
        if len(lrs) < 5:
            raise ValueError("the loss exploded at once: try a lower start (find-lr --start, or find start=...)")
        _, knee, flat, _ = read_sweep(lrs, losses, start_loss)
        trials: list[Trial] = []
        if flat is None:
            trials = [probe.trial(knee), probe.trial(knee * STEP)]
    finally:
        probe.restore()
    return suggest(lrs, losses, start_loss, trials, stopped)


def log_sweep(runs_dir, run: str, epoch: int, result: RangeTest):
    """The sweep as its own TensorBoard run (the trials in its text); returns its directory."""
    from pathlib import Path

    from lrctl.tblog import TensorBoardLogger

    logdir = Path(runs_dir) / "_lr-find" / f"{run}-e{epoch}"
    logger = TensorBoardLogger(logdir, purge_step=0 if logdir.exists() else None)
    for i, (lr, loss) in enumerate(zip(result.lrs, result.losses, strict=True)):
        logger.log_dict({"lr_find/loss": loss, "lr_find/lr": lr}, i)
    logger.log_text("lr_find/suggestion", result.summary(), 0)
    logger.close()
    return logdir
