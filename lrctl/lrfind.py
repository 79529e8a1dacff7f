"""The learning-rate range test: sweep the lr from the current state, try a ladder of lrs for real, suggest.

::

    $ lrctl find-lr --run demo                          # a sweep 1e-4..1, then 2-epoch trials on a ladder
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
   times its step-to-step scatter) it says so, and the trials start at the top of the flat range (where
   the loss starts to rise); when the whole range is flat it names no lr.
2. **Trials on a ladder**: from the run's state, :data:`TRIAL_EPOCHS` epochs at a constant lr over the
   run's own next batches (the orders its next epochs will take), first at the geometric middle of
   ``knee`` and ``best``, then one rung (:data:`STEP`, a third of a decade) below; then on down, or up,
   one rung at a time while the loss keeps improving (at most :data:`MAX_TRIALS`): the ladder brackets
   the lr that trains best over two epochs. Each trial is measured on the same rows after each of its
   last :data:`LAST` steps: their mean is its loss, half their range its scatter.
3. **Horizon**: the suggestion is one rung *below* the two-epoch winner (a trial already run, as the
   ladder brackets the winner). Two epochs favour a large lr, which has reached its floor by then while
   a lower one is still falling; over ten epochs the lower one catches up and passes it with less step
   noise and no late instability. Measured over ten epochs from the same states (``lrctl.lrtruth``),
   the best constant lr is about half the two-epoch best on every workload (0.3x..0.7x); ranking the
   trials by their extrapolated curves, by their trend over the last epoch, or by how often their
   steps push the loss up, or running them for one or one and a half epochs, did worse (README).
   When the sweep's loss stayed under its start well above every trial, one more trial (:func:`scout`)
   goes up there: a sweep's lowest point can be a plateau that more steps at a larger lr leave.
4. **Cannot tell**: the finder says so in ``cannot_tell``, and why, and keeps the suggestion as the
   band's safe (lower) end, when the trial at the suggestion still jumps by more than :data:`NOISY` of
   its loss between its last steps (where ten epochs end there is decided by which batches come last
   more than by the lr: on ``custom-factory`` the 10-epoch MSE at one lr varies 4x with the batch
   order), or when the trials did not bracket the two-epoch best (still improving at the top or the
   bottom of the ladder, or the scout trained better: a plateau), or when the trial at the suggestion
   ended more than :data:`STEEP` above the winner's (on ``custom-factory`` 12..115% above on the stored
   states, elsewhere at most 31%: a loss that steep in the lr is a lottery over ten epochs), or when the
   rungs either side of the winner end within :data:`SAME` of it while two epochs took the loss down by
   more than :data:`EARLY` (:func:`flat_and_early`: so early in training a flat ladder does not rank the
   lrs for ten epochs; on the fresh lesson the ten-epoch result across such a band changes by ±15% with
   a 1.2x change of lr, and no lr is within 10% of the best on more than 4 of its 6 scored states).

A sweep of up to 40 steps plus three or four trials costs about eight to fourteen epochs of the run (11.5 on
average over the 42 states of ``lrtruth --more --orders 3`` and ``--seed 25 --orders 3``).

``python -m lrctl.lrtruth`` scores this against the lr that actually trains best over 10 epochs (a grid
of constant-lr runs from the same state) and against fastai's and Lightning's rules.
"""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from lrctl.engine import Trainer

EVAL_ROWS = 2048  # rows of the training set the loss is measured on after every step
FLAT = 0.02  # a sweep whose loss moves less than 2% of the starting loss cannot tell lrs apart
TRIAL_EPOCHS = 2  # each candidate lr trains this many epochs from the run's state
KNEE = 0.9  # the knee: the first lr of the sweep where the loss has made this fraction of its drop
STEP = 10 ** (-1 / 3)  # one rung of the trials' ladder: a third of a decade
MAX_TRIALS = 4  # the ladder stops here even if the loss is still improving (then it cannot tell)
LAST = 5  # a trial is measured after each of its last LAST steps
NOISY = 0.15  # the suggestion's trial jumps by more than this fraction of its loss: the finder cannot tell
SAME = 0.10  # the winner's neighbour rungs end within this fraction of its loss: the ladder is flat there
STEEP = 0.5  # the suggestion's trial ended more than this fraction above the winner's: the finder cannot tell
EARLY = 0.3  # and its two epochs took the loss down by more than this fraction: training's early, fast phase


@dataclass
class Trial:
    """TRIAL_EPOCHS epochs at a constant ``lr`` from the run's state, measured on the fixed rows at the end."""

    lr: float
    loss: float  # the mean of the last LAST measurements (inf when the trial diverged)
    noise: float = 0.0  # half their range: how far the loss jumps between the last steps


@dataclass
class RangeTest:
    """A sweep, the trials, and what they say. ``losses[i]`` is the loss on the fixed rows after the step
    at ``lrs[i]``."""

    lrs: list[float]
    losses: list[float]
    start_loss: float
    suggestion: float | None  # None only when the whole swept range is flat (then ``flat`` says why)
    low: float  # the band: from the suggestion up to the lr that trained best over two epochs
    high: float
    best: float  # the lr where the loss measured along the sweep is lowest
    knee: float  # the first lr where it has made KNEE of its drop
    flat: str | None  # the sweep's plain statement when its loss moved less than it can tell, else None
    stopped_early: bool
    note: str | None = None  # that a larger lr may do as well (the best trial was at the range's end)
    trials: list[Trial] = field(default_factory=list)
    cannot_tell: str | None = None  # why it cannot tell (a lottery, or no bracket); then the suggestion is
    # only the band's safe (lower) end

    def marks(self) -> dict[str, float]:
        """The lrs a chart marks: the suggestion and its band, or the flat range."""
        if self.suggestion is None:
            return {"flat from": self.low, "to": self.high}
        if self.low == self.high:
            return {"suggested": self.suggestion}
        return {"suggested": self.suggestion, "2-epoch best": self.high}

    def summary(self) -> str:
        """What the finder says, in one to four lines."""
        if self.suggestion is None:
            return f"no suggestion: {self.flat}"
        lead = f"suggested lr: {self.suggestion:.3g}" + (", only as the safe end" if self.cannot_tell else "")
        if self.cannot_tell:
            lead = f"cannot tell: {self.cannot_tell}\n{lead}"
        winner = min(self.trials, key=lambda t: t.loss)
        text = (f"{lead} · {_trials_text(self)}; {winner.lr:.2g} trained best over {TRIAL_EPOCHS} epochs, and over "
                "more epochs the lr a rung below catches up with less step noise")
        extra = [line for line in (self.flat and f"the sweep: {self.flat}", self.note) if line]
        return "\n".join([text, *extra])


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


def first_trial(lrs: list[float], losses: list[float], start_loss: float) -> float | None:
    """Where the ladder starts: between the knee and the sweep's lowest point (geometric middle), or at the
    top of a flat range; None when the whole range is flat (no lr above it was seen to hurt); pure."""
    best, knee, flat, top = read_sweep(lrs, losses, start_loss)
    if flat is None:
        return math.sqrt(best * knee)
    return None if top == lrs[-1] else top


def ladder(start: float, trial: Callable[[float], Trial], end: float = math.inf,
           max_trials: int = MAX_TRIALS) -> list[Trial]:
    """Trials at ``start`` and a rung below, then on down (or up) one rung at a time while the loss
    improves, never above ``end``: the trials bracket the lr that trains best over TRIAL_EPOCHS."""
    trials = [trial(start), trial(start * STEP)]
    down = trials[1].loss < trials[0].loss or math.isinf(trials[0].loss)
    last = trials[1] if down else trials[0]
    while len(trials) < max_trials:
        lr = last.lr * STEP if down else last.lr / STEP
        if lr > end * (1 + 1e-9):
            break
        trials.append(trial(lr))
        if not (trials[-1].loss < last.loss or (down and math.isinf(last.loss))):
            break
        last = trials[-1]
    return trials


def scout(lrs: list[float], losses: list[float], start_loss: float, trials: list[Trial]) -> float | None:
    """One more trial two rungs below the largest lr at which the sweep's loss was still under its start,
    when that is more than a rung above every trial; else None; pure. A sweep's lowest point can be a
    plateau that a few steps at a growing lr reach and more steps at a larger lr leave (Adam on
    ``custom-factory``: 0.002, where ten epochs want about 0.05): one trial up there shows it."""
    curve = _median_filter(losses)
    under = [lr for lr, v in zip(lrs, curve, strict=True) if v < start_loss]
    if not under:
        return None
    up = max(under) * STEP * STEP
    return up if up > max(t.lr for t in trials) / STEP * 1.01 else None


def suggest(lrs: list[float], losses: list[float], start_loss: float, trials: list[Trial],
            stopped_early: bool = False, end: float = math.inf) -> RangeTest:
    """What a measured sweep and its trials (a :func:`ladder`, at most ``end``) say; pure, so it is tested
    on made-up numbers too."""
    best, knee, flat, top = read_sweep(lrs, losses, start_loss)
    if not trials:
        return RangeTest(lrs, losses, start_loss, None, lrs[0], top, best, knee, flat, stopped_early)
    trials = sorted(trials, key=lambda t: -t.lr)
    winner = min(trials, key=lambda t: t.loss)
    if math.isinf(winner.loss):
        raise ValueError(f"every trial diverged ({trials[-1].lr:.2g}..{trials[0].lr:.2g}): try a lower end")
    # One rung below the two-epoch winner: over ten epochs the best constant lr is about that (lrtruth).
    below = [t for t in trials if winner.lr * STEP * 0.99 <= t.lr < winner.lr]
    pick = below[0] if below else None
    suggestion = pick.lr if pick else winner.lr * STEP
    result = RangeTest(lrs, losses, start_loss, suggestion, suggestion, winner.lr, best, knee, flat, stopped_early,
                       trials=trials)
    at_end = winner.lr / STEP > end * (1 + 1e-9)  # the next rung up is past the range asked for
    above = [t for t in trials if winner.lr < t.lr <= winner.lr / STEP * 1.01]
    if not above and not at_end:
        lower = [t for t in trials if t.lr < winner.lr]
        result.cannot_tell = (
            (f"a trial at {winner.lr:.2g}, near the top of the sweep's usable range, trained better over "
             f"{TRIAL_EPOCHS} epochs than the ladder around the sweep's lowest point ({best:.2g}): that point is a "
             "plateau, and the lr that trains best lies at or above "
             f"{winner.lr:.2g}, where the finder has no bracket" if lower and winner.lr > lower[0].lr / STEP ** 2
             else f"the {len(trials)} trials were still improving at the largest lr tried ({winner.lr:.2g}): the lr "
             f"that trains best lies above them")
            + f"; {suggestion:.2g} is only a safe lower end")
        return result
    if not below:
        result.cannot_tell = (f"the {len(trials)} trials were still improving at the lowest lr tried "
                              f"({winner.lr:.2g}): the lr that trains best lies below them; {suggestion:.2g}, a rung "
                              "lower, was not tried")
        return result
    assert pick is not None  # bracketed below (else returned above)
    judged = pick  # the trial at the suggestion: its step noise says how much ten epochs there owe to luck
    jump = judged.noise / judged.loss if judged.loss > 0 else 0.0
    if jump > NOISY:
        result.cannot_tell = (
            f"between {suggestion:.2g} and {winner.lr:.2g} where ten epochs end depends on the batch order more "
            f"than on the lr: at {judged.lr:.2g} the loss still jumps by ±{jump:.0%} between the last steps of "
            f"{TRIAL_EPOCHS} epochs (which batches come last decides it); the lower end is the safer")
    elif judged.loss > (1 + STEEP) * winner.loss:
        result.cannot_tell = (
            f"over {TRIAL_EPOCHS} epochs the loss at {judged.lr:.2g} ({judged.loss:.4g}) ended "
            f"{judged.loss / winner.loss - 1:.0%} above that at {winner.lr:.2g} ({winner.loss:.4g}), a rung up: it "
            "changes too steeply with the lr for two epochs to place the ten-epoch best between them, and where ten "
            "epochs end there depends on the batch order as much as on the lr; the lower end is the safer")
    elif flat_and_early(trials, winner, start_loss):
        result.cannot_tell = (
            f"the trials from {below[0].lr:.2g} to {winner.lr / STEP:.2g} end within {SAME:.0%} of each other after "
            f"{TRIAL_EPOCHS} epochs, which took the loss from {start_loss:.4g} to {winner.loss:.4g}: this early in "
            "training their ranking says nothing about where ten epochs end, and across such a band that can "
            "change by more than 10% with a 1.2x change of lr or another batch order; any lr in the band is a "
            "fair start, none is known to be the best")
    elif at_end:
        result.note = (f"the largest lr tried ({winner.lr:.2g}, the end of the range) trained best over "
                       f"{TRIAL_EPOCHS} epochs: a larger one may do as well (find end=... to try above)")
    return result


def flat_and_early(trials: list[Trial], winner: Trial, start_loss: float) -> bool:
    """Whether the rungs either side of the two-epoch winner ended within SAME of it, and its two epochs
    took the loss down by more than EARLY of where it started; pure. Then two epochs cannot rank the lrs:
    on the fresh lesson (MSE 90 -> 31 after two epochs, 17 after ten) three rungs end within 1..10% of
    each other, and the ten-epoch MSE across them jumps by ±15% with a 1.2x change of lr (no lr of a
    25-point grid ends within 10% of the best on more than 6 of its 8 batch orders x seeds, and none on
    more than 4 of the 6 that ``lrtruth`` scores). A state near its floor (the lesson after 20 epochs, 3..13%
    down in two epochs) is flat too, but there every lr of the band ends within 10%: no lottery."""
    near = [t for t in trials if t is not winner and abs(math.log(t.lr / winner.lr)) < abs(math.log(STEP)) * 1.01]
    return (len(near) == 2 and all(t.loss <= winner.loss * (1 + SAME) for t in near)
            and winner.loss < (1 - EARLY) * start_loss)


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


def sweep(trainer: Trainer, start: float = 1e-4, end: float = 1.0, batches: int = 100,
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
    """40 steps (ten a decade over the default 1e-4..1), or four epochs' worth when an epoch is shorter
    than 10 batches (at least 20): enough to place the ladder's first trial, which the trials then correct
    (a 100-step sweep placed it no better; one of 30 steps worse; the decade below 1e-4 changed no
    suggestion on any stored state and cost about an epoch). With a measurement after every step the
    sweep costs about three to six epochs, the trials about six to eight."""
    return max(20, min(40, 4 * trainer.batches_per_epoch))


def step_at(trainer: Trainer, lr: float, x, y):
    """One optimizer step on batch (x, y) at ``lr`` (every sweep's and trial's step), as the engine takes
    it (:meth:`lrctl.engine.Trainer.step_on`); returns the batch's loss tensor."""
    return trainer.step_on(x, y, lr)


def range_test(trainer: Trainer, start: float = 1e-4, end: float = 1.0, batches: int | None = None,
               diverge: float = 4.0) -> RangeTest:
    """Sweep, climb the ladder of trials, restore, suggest. ``batches`` defaults to :func:`default_batches`."""
    probe = _Probe(trainer)
    try:
        start_loss = probe.start_loss
        lrs, losses, stopped = probe.sweep(start, end, batches or default_batches(trainer), diverge)
        keep = [i for i, v in enumerate(losses) if math.isfinite(v)]
        lrs, losses = [lrs[i] for i in keep], [losses[i] for i in keep]
        if len(lrs) < 5:
            raise ValueError("the loss exploded at once: try a lower start (find-lr --start, or find start=...)")
        first = first_trial(lrs, losses, start_loss)
        trials = [] if first is None else ladder(min(first, end), probe.trial, end)
        if trials and (up := scout(lrs, losses, start_loss, trials)) is not None:
            trials.append(probe.trial(up))
    finally:
        probe.restore()
    return suggest(lrs, losses, start_loss, trials, stopped, end)


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
