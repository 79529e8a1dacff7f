"""The lr finders measured against the truth: the lr that trains best over the next K epochs.

::

    $ python -m lrctl.lrtruth                 # the table (also: python -m lrctl.bench --lr-finders)
    $ python -m lrctl.lrtruth --more          # and four more states, kept out of the finder's tuning
    $ python -m lrctl.lrtruth --orders 3      # each state also with two other batch orders
    $ python -m lrctl.lrtruth --seed 25       # another initial model (model.seed) for every state

For every workload state, the ground truth is a grid: from the same state, K epochs (10) at each of 13
constant lrs from 1e-4 to 1 (three per decade), and the final train metric of each; the best grid lr is
the truth. Each finder then suggests an lr from the same state, K epochs are trained at the suggestion,
and its score is that final metric's distance from the grid's best (``+4%`` = 4% worse; negative =
better than every grid point). The finders:

- **lrctl**: :func:`lrctl.lrfind.range_test` with its defaults, exactly as ``lrctl find-lr`` runs it
  (a sweep, then a ladder of 2-epoch trials). Where it says it cannot tell (and why), its row says so and
  is counted apart; the lr it still gives there (the safe end of its band) is scored all the same;
- **fastai valley** and **fastai steep**: fastai's ``lr_find`` (100 iterations from 1e-7 to 10, the
  loss of each batch smoothed with beta 0.98, stop when it passes 4x its best, the first 10% and the
  last 5 points trimmed), then ``valley`` (two thirds of the way down the longest decreasing stretch) and
  ``steep`` (the steepest fall of the smoothed loss per unit of log lr);
- **Lightning**: ``Tuner.lr_find`` (100 steps from 1e-8 to 1, the same smoothing and stop), then
  ``suggestion()``: the steepest fall of the smoothed loss per step, skipping the first 10 points and the
  last one.

The fastai and Lightning rules are implemented here from their published code and documentation (the
libraries are not dependencies), on lrctl's own engine, so all finders see the same model, data and
batch order. lrctl's cost is given in epochs of training of the same run (CPU time, which other
processes on the machine disturb less than wall time).
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lrctl.config import RunConfig, load, with_overrides
from lrctl.engine import Diverged, Trainer
from lrctl.lrfind import step_at
from lrctl.schedules import parse

K = 10
GRID = [10 ** (-4 + i / 3) for i in range(13)]
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PASS = 0.10  # done when lrctl's suggestion ends within 10% of the grid's best


@dataclass(frozen=True)
class Workload:
    name: str
    config: str | None  # a file in configs/, None for the built-in lesson
    before: tuple[int, str] | None = None  # epochs and lr trained before the finders are asked


WORKLOADS = [Workload("lesson, fresh", None), Workload("lesson, after 20@0.03", None, (20, "0.03")),
             Workload("lesson-classification", "lesson-classification.toml"), Workload("diabetes", "diabetes.toml"),
             Workload("custom-factory", "custom-factory.toml")]
# States the finder's constants were not chosen on: a check that they are not fitted to the five above.
MORE = [Workload("lesson, after 5@0.01", None, (5, "0.01")),
        Workload("lesson-classification, after 10@0.1", "lesson-classification.toml", (10, "0.1")),
        Workload("diabetes, after 10@0.1", "diabetes.toml", (10, "0.1")),
        Workload("custom-factory, after 10@0.01", "custom-factory.toml", (10, "0.01"))]


def _config(workload: Workload, seed: int | None = None) -> RunConfig:
    cfg = RunConfig() if workload.config is None else load(CONFIGS / workload.config)[0]
    return cfg if seed is None else with_overrides(cfg, [f"model.seed={seed}"])


def train_final(trainer: Trainer, state: dict, lr: float, epochs: int = K) -> float:
    """The final train metric after ``epochs`` at constant ``lr`` from ``state`` (nan if it diverges)."""
    trainer.load_state_dict(copy.deepcopy(state))
    trainer.start_schedule(parse(f"{lr:.6g}"), epochs)
    try:
        return trainer.fit_rec(epochs)[-1].train
    except Diverged:
        return math.nan


def classic_sweep(trainer: Trainer, start: float, end: float, iterations: int, beta: float = 0.98,
                  diverge: float = 4.0) -> tuple[list[float], list[float]]:
    """fastai's and Lightning's range test: the loss of each batch just trained on, smoothed (debiased
    exponential average), stopped when it passes ``diverge`` times its best. Restores the trainer."""
    saved = copy.deepcopy(trainer.state_dict())
    model = trainer.model
    lrs, losses = [], []
    average, best = 0.0, math.inf
    epoch = trainer.global_step
    model.train()
    try:
        while len(lrs) < iterations:
            for x, y in trainer.batches(epoch):
                lr = start * (end / start) ** (len(lrs) / iterations)
                loss = step_at(trainer, lr, x, y)
                average = beta * average + (1 - beta) * float(loss.detach())
                smoothed = average / (1 - beta ** (len(lrs) + 1))
                lrs.append(lr)
                losses.append(smoothed)
                if len(lrs) > 1 and (not math.isfinite(smoothed) or smoothed > diverge * best):
                    return lrs, losses
                best = min(best, smoothed)
                if len(lrs) >= iterations:
                    break
            epoch += 1
        return lrs, losses
    finally:
        trainer.load_state_dict(saved)


def fastai_valley_and_steep(trainer: Trainer) -> tuple[float, float]:
    """fastai ``lr_find()`` defaults, then its ``valley`` and ``steep`` suggestions."""
    iterations = 100
    lrs, losses = classic_sweep(trainer, 1e-7, 10.0, iterations)
    lrs, losses = lrs[iterations // 10:-5], losses[iterations // 10:-5]
    if any(math.isnan(v) for v in losses):
        cut = next(i for i, v in enumerate(losses) if math.isnan(v))
        lrs, losses = lrs[:cut], losses[:cut]
    # valley: the longest decreasing subsequence, a point two thirds of the way down it
    n = len(losses)
    longest = [1] * n
    max_start = max_end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and longest[i] < longest[j] + 1:
                longest[i] = longest[j] + 1
            if longest[max_end] < longest[i]:
                max_end, max_start = i, i - longest[i]
    sections = (max_end - max_start) / 3
    valley = lrs[max_start + int(sections) + int(sections / 2)]
    # steep: the most negative slope of the loss against log lr
    slopes = [(losses[i + 1] - losses[i]) / (math.log(lrs[i + 1]) - math.log(lrs[i])) for i in range(n - 1)]
    steep = lrs[min(range(n - 1), key=slopes.__getitem__)]
    return valley, steep


def lightning_suggestion(trainer: Trainer) -> float:
    """Lightning ``Tuner.lr_find()`` defaults, then ``suggestion(skip_begin=10, skip_end=1)``."""
    lrs, losses = classic_sweep(trainer, 1e-8, 1.0, 100)
    kept = [v for v in losses[10:-1] if math.isfinite(v)]
    n = len(kept)
    # numpy/torch.gradient with unit spacing: central differences inside, one-sided at the ends
    gradient = [kept[1] - kept[0]] + [(kept[i + 1] - kept[i - 1]) / 2 for i in range(1, n - 1)] + [kept[-1] - kept[-2]]
    return lrs[min(range(n), key=gradient.__getitem__) + 10]


@dataclass
class Row:
    workload: str
    metric: str
    start: float  # the metric before the K epochs
    best_lr: float
    best: float
    scores: dict[str, tuple[float | None, float]]  # finder -> (lr or None when it names none, gap)
    lrctl_note: str | None  # lrctl's "cannot tell" and why (then its lr is the band's safe end), else None
    lrctl_epochs: float  # what lrctl's finder cost, in epochs of this run


def gap(metric: str, value: float, best: float) -> float:
    """How much worse than the grid's best, as a fraction of it (accuracy: higher is better)."""
    if not math.isfinite(value):
        return math.inf
    return (best - value) / best if metric == "accuracy" else (value - best) / best


def measure(workload: Workload, say: Callable[[str], None] = lambda _: None, shift: int = 0,
            seed: int | None = None) -> Row:
    """The grid and every finder on one workload state; ``shift`` > 0 takes the batch orders of epochs
    that many later (another state as good as the first: how much do the scores owe to one order?);
    ``seed`` builds the model from another seed (``model.seed``)."""
    from lrctl.lrfind import range_test

    cfg = _config(workload, seed)
    trainer = Trainer(cfg)
    if workload.before is not None:
        trainer.start_schedule(parse(workload.before[1]), workload.before[0])
        trainer.fit_rec(workload.before[0])
    # Another batch order: the seeded order is a function of the epoch, the lesson's a stream (skip ahead).
    for _ in range(shift):
        trainer.orders.draw(trainer.global_step)
    state = copy.deepcopy(trainer.state_dict())
    state["global_step"] += shift
    trainer.load_state_dict(copy.deepcopy(state))
    start = trainer.evaluate()[0]
    grid, seconds = [], []
    for lr in GRID:
        began = time.process_time()
        grid.append(train_final(trainer, state, lr))
        if math.isfinite(grid[-1]):
            seconds.append((time.process_time() - began) / K)
    epoch_s = statistics.median(seconds)
    finite = [(v, lr) for v, lr in zip(grid, GRID, strict=True) if math.isfinite(v)]
    best, best_lr = (max if cfg.metric == "accuracy" else min)(finite)
    say(f"{workload.name}: grid " + " ".join(f"{lr:.2g}:{v:.4g}" for lr, v in zip(GRID, grid, strict=True)))

    runs = []
    for _ in range(3):  # CPU time, median of three: the machine may be shared and noisy
        trainer.load_state_dict(copy.deepcopy(state))
        began = time.process_time()
        found = range_test(trainer)
        runs.append(time.process_time() - began)
    lrctl_epochs = statistics.median(runs) / epoch_s
    suggestions: dict[str, float | None] = {"lrctl": found.suggestion}
    trainer.load_state_dict(copy.deepcopy(state))
    suggestions["fastai valley"], suggestions["fastai steep"] = fastai_valley_and_steep(trainer)
    trainer.load_state_dict(copy.deepcopy(state))
    suggestions["Lightning"] = lightning_suggestion(trainer)
    scores = {}
    for name, lr in suggestions.items():
        scores[name] = (lr, gap(cfg.metric, train_final(trainer, state, lr), best) if lr is not None else math.nan)
    name = workload.name + (f", batch orders +{shift}" if shift else "") + (f", model.seed={seed}" if seed else "")
    cannot = found.cannot_tell or (found.flat if found.suggestion is None else None)
    return Row(name, cfg.metric, start, best_lr, best, scores, cannot, lrctl_epochs)


def _cell(lr: float | None, g: float, cannot: bool = False) -> str:
    if lr is None:
        return "cannot tell"
    scored = f"{lr:.2g} ({'diverged' if math.isinf(g) else f'{g:+.0%}'})"
    return f"cannot tell; safe end {scored}" if cannot else scored


def table(rows: list[Row]) -> str:
    """A Markdown table: the grid's best, then each finder's lr and its gap after K epochs."""
    finders = list(rows[0].scores)
    lines = [f"| state (train metric after {K} epochs) | grid best lr: metric | " + " | ".join(finders)
             + " | lrctl's cost |", "| --- " * (len(finders) + 3) + "|"]
    for r in rows:
        lines.append(f"| {r.workload} ({r.metric}, {r.start:.3g} before) | {r.best_lr:.2g}: {r.best:.4g} | "
                     + " | ".join(_cell(*r.scores[f], f == "lrctl" and r.lrctl_note is not None) for f in finders)
                     + f" | {r.lrctl_epochs:.1f} epochs |")
    return "\n".join(lines)


def verdict(rows: list[Row]) -> str:
    """How many states each finder passes (within 10% of the grid's best); lrctl's "cannot tell" rows
    are counted apart, with how its safe end did there, and each with the finder's words."""
    cannot = [r for r in rows if r.lrctl_note]
    counts = {f: sum(g <= PASS for lr, g in (r.scores[f] for r in rows if not (f == "lrctl" and r.lrctl_note)))
              for f in rows[0].scores}
    anyway = sum(r.scores["lrctl"][1] <= PASS for r in cannot)
    notes = [f"  {r.workload}: cannot tell: {r.lrctl_note}" for r in cannot]
    return (f"within {PASS:.0%} of the grid's best, of {len(rows)}: "
            + ", ".join(f"{f} {n}" for f, n in counts.items())
            + (f"; lrctl says it cannot tell on {len(cannot)} more (its safe end within {PASS:.0%} on {anyway} of them)"
               if cannot else "") + "".join("\n" + n for n in notes))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lrctl.lrtruth", description=__doc__.split("\n")[0])
    parser.add_argument("--more", action="store_true", help="also the states the finder was not tuned on")
    parser.add_argument("--orders", type=int, default=1,
                        help="also each state with the batch orders of 1..N-1 epochs later (default 1: as is)")
    parser.add_argument("--seed", type=int, default=None, help="build every model from this model.seed instead")
    parser.add_argument("--verbose", action="store_true", help="print every grid point")
    args = parser.parse_args(argv)
    say = print if args.verbose else (lambda _: None)  # every grid point, or nothing
    rows = [measure(w, say, shift, args.seed) for w in WORKLOADS for shift in range(args.orders)]
    print(table(rows))
    print(verdict(rows))
    if args.more:
        more = [measure(w, say, shift, args.seed) for w in MORE for shift in range(args.orders)]
        print("\nstates not used to choose the finder's constants:\n" + table(more))
        print(verdict(more))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
