"""``lrctl compare``: several plans from the same initial state, over seeds, as sibling runs.

::

    $ lrctl compare --plans "60@0.03" "30@0.03;30@0.01" "60@exp 0.05 gamma=0.95" --seeds 24,25 --name lesson

Each (plan, seed) is an ordinary run under ``<runs-dir>/<name>/<plan-label>[-s<seed>]`` (TensorBoard
shows them side by side with ``--logdir <runs-dir>/<name>``), trained with the same data and, per
seed, the same initial weights. With no plans it reproduces the lesson's experiment, and with the
lesson config (``train.order = "lesson"``) its numbers are the lesson's own, bit for bit. A plan whose
loss becomes NaN/inf stays in the table, marked diverged (its run is rolled back to its last finite state).
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from lrctl.config import RunConfig

LESSON_PLANS = ["60@0.03", "60@0.01", "60@0.005", "60@0.001", "30@0.03;30@0.01", "60@exp 0.05 gamma=0.95"]


def plan_label(plan: str) -> str:
    """A run name for a plan: '30@0.03;30@0.01' -> '30x0.03_30x0.01'."""
    label = plan.replace("@", "x").replace(";", "_").replace(" ", "-").replace("=", "")
    return re.sub(r"[^A-Za-z0-9_.-]", "", label)[:90] or "plan"


@dataclass
class Result:
    plan: str
    seed: int | None
    run: str
    train: list[float]
    test: list[float]
    diverged: str | None = None  # why the plan ended early (the loss became NaN/inf), else None


@dataclass
class Row:
    plan: str
    final_train: float  # means over the seeds that did not diverge (nan when every seed did)
    final_test: float
    best_test: float
    spread_test: float  # std of the final test metric over seeds (0 for one seed)
    diverged: int = 0  # how many of the seeds diverged
    seeds: int = 1

    @property
    def note(self) -> str:
        if not self.diverged:
            return ""
        return "diverged" + (f" in {self.diverged} of {self.seeds} seeds" if self.seeds > 1 else "")


def run_all(runs_dir: Path, name: str, plans: list[list[tuple[int, str]]], plan_texts: list[str],
            seeds: list[int] | None, cfg: RunConfig, report: Callable[[str], None]) -> list[Result]:
    """Train (or finish) every plan for every seed; returns their per-epoch metrics."""
    from lrctl.session import RunSession

    group = Path(runs_dir) / name
    results = []
    todo = [(p, t, s) for s in (seeds or [None]) for p, t in zip(plans, plan_texts, strict=True)]
    for i, (plan, text, seed) in enumerate(todo, start=1):
        run_cfg = cfg if seed is None else replace(cfg, model=replace(cfg.model, seed=seed))
        run = plan_label(text) + (f"-s{seed}" if seed is not None else "")
        session = RunSession.open(group, run, run_cfg, save_every=30.0)
        try:
            session.load()
            session.say_warnings(lambda warning, run=run: report(f"{run}: {warning}"))  # a damaged member's fallback
            total = sum(epochs for epochs, _ in plan)
            outcome = None
            if session.global_step == 0:
                outcome = session.run_plan(plan, source="compare")
            elif session.global_step < total and session.pending is not None:
                outcome = session.finish_pending()
            history = session.trainer.history
            diverged = None
            if outcome is not None and outcome.status == "diverged":
                diverged = outcome.detail
            elif session.global_step < total and session.pending is None:  # an earlier compare saw it diverge
                diverged = f"ended at epoch {session.global_step} of {total} (diverged in an earlier compare)"
        finally:
            session.close("compare")
        result = Result(text, seed, run, [h["train"] for h in history], [h["test"] for h in history], diverged)
        results.append(result)
        metric = cfg.metric
        label = f"[{i}/{len(todo)}] {text}" + (f" seed {seed}" if seed is not None else "")
        if diverged:
            report(f"{label}: diverged: {diverged}  ({group / run})")
        else:
            report(f"{label}: train_{metric} {result.train[-1]:.5g} test_{metric} {result.test[-1]:.5g}  "
                   f"({group / run})")
    return results


def summarize(results: list[Result], plan_texts: list[str], higher_is_better: bool) -> list[Row]:
    rows = []
    best = max if higher_is_better else min
    nan = float("nan")
    for text in plan_texts:
        every = [r for r in results if r.plan == text]
        mine = [r for r in every if r.diverged is None]
        finals = [r.test[-1] for r in mine]
        if not mine:
            rows.append(Row(text, nan, nan, nan, nan, len(every), len(every)))
            continue
        rows.append(Row(text, statistics.mean(r.train[-1] for r in mine), statistics.mean(finals),
                        statistics.mean(best(r.test) for r in mine),
                        statistics.stdev(finals) if len(finals) > 1 else 0.0, len(every) - len(mine), len(every)))
    return rows


def chart(results: list[Result], plan_texts: list[str], metric: str, width: int = 100, height: int = 25) -> str:
    """Mean test metric per plan against the epoch."""
    import plotext as plt

    plt.clear_figure()
    plt.clear_color()
    plt.plotsize(width, height)
    for text in plan_texts:
        mine = [r.test for r in results if r.plan == text and r.diverged is None]
        if not mine:
            continue  # every seed diverged: nothing to draw (the table says so)
        length = min(len(t) for t in mine)
        mean = [statistics.mean(t[e] for t in mine) for e in range(length)]
        plt.plot(list(range(length)), mean, label=text, marker="braille")
    if metric in ("mse", "mae"):
        plt.yscale("log")
    plt.title(f"test_{metric} by epoch (mean over seeds)")
    from lrctl.plots import plain

    return plain(plt.build())
