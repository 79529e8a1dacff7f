"""The torch side of a schedule: builds torch's scheduler from a spec, steps it, saves and restores it.

A :class:`ScheduleRunner` belongs to the chunk that started it (``chunk_start``, ``chunk_epochs``)
and lives on across ``keep`` chunks and sessions: its :meth:`state_dict` is plain data (the
spec text plus torch's own scheduler ``state_dict``), so a resumed chunk replays exactly the lr
sequence it would have had. Chunk-length schedules stop stepping at their horizon and hold their
final lr, which is also what ``keep`` past the end means.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim import lr_scheduler as sched

from lrctl.schedules import ScheduleError, ScheduleSpec, check_chunk, parse


class PowerLR(sched.LRScheduler):
    """Power scheduling, which torch lacks: lr0 / (1 + t/s)**c at epoch t of the chunk."""

    def __init__(self, optimizer: Optimizer, s: float, c: float, last_epoch: int = -1) -> None:
        self.s, self.c = s, c
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        return [base / (1 + self.last_epoch / self.s) ** self.c for base in self.base_lrs]


class PiecewiseLR(sched.LRScheduler):
    """Piecewise constant with exact values (no base*ratio rounding): values[k] for its epochs, then the last."""

    def __init__(self, optimizer: Optimizer, values: list[float], bounds: list[int], last_epoch: int = -1) -> None:
        self.values, self.bounds = values, bounds
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        k = sum(1 for b in self.bounds if self.last_epoch >= b)
        return [self.values[k] for _ in self.base_lrs]


def _set_lr(optimizer: Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
        # torch's schedulers use setdefault('initial_lr'): a stale value would silently win.
        group.pop("initial_lr", None)


class Chunk:
    """What a builder knows of the chunk: its optimizer, length in epochs and batches, metric direction."""

    def __init__(self, optimizer: Optimizer, epochs: int, batches_per_epoch: int, mode: str) -> None:
        self.optimizer, self.epochs, self.batches_per_epoch, self.mode = optimizer, epochs, batches_per_epoch, mode


def _start(c: Chunk, spec: ScheduleSpec, lr: float | None = None) -> Optimizer:
    _set_lr(c.optimizer, spec.args[0] if lr is None else lr)
    return c.optimizer


def _piecewise(spec: ScheduleSpec, c: Chunk) -> sched.LRScheduler:
    values = [lr for lr, _ in spec.pieces] + [spec.args[0]]
    bounds = [sum(n for _, n in spec.pieces[: i + 1]) for i in range(len(spec.pieces))]
    return PiecewiseLR(_start(c, spec, values[0]), values, bounds)


def _cyclic(spec: ScheduleSpec, c: Chunk) -> sched.LRScheduler:
    (lo, hi), o = spec.args, spec.opts
    half = max(1, round(o["period"] * c.batches_per_epoch / 2))
    return sched.CyclicLR(_start(c, spec, lo), lo, hi, step_size_up=half, step_size_down=half, mode=o["mode"],
                          gamma=o["gamma"], cycle_momentum=False)


def _onecycle(spec: ScheduleSpec, c: Chunk) -> sched.LRScheduler:
    o = spec.opts
    return sched.OneCycleLR(_start(c, spec, spec.args[0] / o["div"]), spec.args[0],
                            total_steps=c.epochs * c.batches_per_epoch, pct_start=o["pct"],
                            anneal_strategy=o["anneal"], div_factor=o["div"], final_div_factor=o["final_div"],
                            cycle_momentum=False)


# The torch side of every family in lrctl.schedules.FAMILIES (the grammar side): one entry each.
# A builder sets the optimizer's lr to the schedule's first value and returns torch's scheduler
# (None: the lr stays as set). Tests check that the two registries name the same families.
BUILDERS: dict[str, Callable[[ScheduleSpec, Chunk], sched.LRScheduler | None]] = {
    "const": lambda s, c: (_start(c, s), None)[1],
    "step": lambda s, c: sched.StepLR(_start(c, s), step_size=s.opts["every"], gamma=s.opts["gamma"]),
    "multistep": lambda s, c: sched.MultiStepLR(_start(c, s), milestones=list(s.opts["at"]), gamma=s.opts["gamma"]),
    "piecewise": _piecewise,
    "exp": lambda s, c: sched.ExponentialLR(_start(c, s), gamma=s.opts["gamma"]),
    "power": lambda s, c: PowerLR(_start(c, s), s.opts["s"], s.opts["c"]),
    "plateau": lambda s, c: sched.ReduceLROnPlateau(
        _start(c, s), mode=c.mode, factor=s.opts["factor"], patience=s.opts["patience"],
        threshold=s.opts["threshold"], cooldown=s.opts["cooldown"], min_lr=s.opts["min"]),
    "cyclic": _cyclic,
    "cos": lambda s, c: sched.CosineAnnealingLR(_start(c, s), T_max=c.epochs, eta_min=s.opts["min"]),
    "restarts": lambda s, c: sched.CosineAnnealingWarmRestarts(_start(c, s), T_0=s.opts["period"],
                                                               T_mult=s.opts["mult"], eta_min=s.opts["min"]),
    "onecycle": _onecycle,
    "linear": lambda s, c: sched.LinearLR(_start(c, s), start_factor=1.0, end_factor=s.args[1] / s.args[0],
                                          total_iters=c.epochs),
}


def _build_main(spec: ScheduleSpec, optimizer: Optimizer, epochs: int, batches_per_epoch: int,
                mode: str) -> sched.LRScheduler | None:
    builder = BUILDERS.get(spec.name)
    if builder is None:
        raise ScheduleError(f"cannot build schedule {spec.name!r}")
    return builder(spec, Chunk(optimizer, epochs, batches_per_epoch, mode))


class ScheduleRunner:
    """Drives one schedule over a chunk: warm-up phase (LinearLR) then the main torch scheduler.

    Args:
        spec: the parsed expression (never ``keep``: keep reuses the previous runner).
        optimizer: its param groups' lr is what the runner sets.
        chunk_start: global epoch at which the schedule's clock is 0.
        chunk_epochs: the chunk's length; chunk-length schedules end there.
        batches_per_epoch: for per-batch schedules' cycle lengths.
        mode: 'min' or 'max', the direction in which the test metric improves (plateau).
    """

    def __init__(self, spec: ScheduleSpec, optimizer: Optimizer, chunk_start: int, chunk_epochs: int,
                 batches_per_epoch: int, mode: str = "min") -> None:
        if spec.name == "keep":
            raise ScheduleError("keep has no schedule of its own")
        check_chunk(spec, chunk_epochs)
        self.spec, self.optimizer = spec, optimizer
        self.chunk_start, self.chunk_epochs, self.batches_per_epoch, self.mode = (
            chunk_start, chunk_epochs, batches_per_epoch, mode)
        self.phase = "warmup" if spec.warmup else "main"
        self.steps = 0  # torch scheduler steps taken in the current phase
        self.scale = 1.0  # a mid-chunk 'scale' change multiplies every lr of the schedule from then on
        self.scheduler = self._build_phase()

    def _build_phase(self) -> sched.LRScheduler | None:
        if self.phase == "warmup":
            base = self.spec.base_lr
            if self.spec.name == "onecycle":
                base = self.spec.args[0] / self.spec.opts["div"]
            _set_lr(self.optimizer, base)
            n = self.spec.warmup
            return sched.LinearLR(self.optimizer, start_factor=1 / (n + 1), end_factor=1.0, total_iters=n)
        return _build_main(self.spec, self.optimizer, self.chunk_epochs - self.spec.warmup,
                           self.batches_per_epoch, self.mode)

    @property
    def per_batch(self) -> bool:
        return self.phase == "main" and self.spec.family.per_batch

    @property
    def _horizon(self) -> int | None:
        """Steps after which this phase holds its last lr (None: it runs on forever)."""
        if self.phase == "warmup":
            return self.spec.warmup
        if not self.spec.family.chunk_length:
            return None
        epochs = self.chunk_epochs - self.spec.warmup
        return epochs * self.batches_per_epoch if self.per_batch else epochs

    def _step(self, metric: float | None = None) -> None:
        horizon = self._horizon
        if self.scheduler is None or (horizon is not None and self.steps >= horizon and self.phase == "main"):
            return
        if self.spec.family.name == "onecycle" and self.phase == "main" and self.steps + 1 >= horizon:
            # OneCycleLR refuses a step past total_steps; its final lr is the one it reaches there.
            self.steps += 1
            return
        if isinstance(self.scheduler, sched.ReduceLROnPlateau):
            self.scheduler.step(metric if metric is not None and math.isfinite(metric) else math.inf)
        else:
            self.scheduler.step()
        self.steps += 1
        if self.phase == "warmup" and self.steps >= self.spec.warmup:
            self.phase, self.steps = "main", 0
            self.scheduler = self._build_phase()
            if self.scale != 1.0:
                self._scale_state(self.scale)

    def after_batch(self) -> None:
        """Call after every optimizer step."""
        if self.per_batch:
            self._step()

    def after_epoch(self, test_metric: float | None) -> None:
        """Call after every epoch with the epoch's test metric (used by plateau only)."""
        if not self.per_batch:
            self._step(test_metric)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def apply_scale(self, factor: float) -> None:
        """Multiply the current lr and every later one of this schedule by ``factor``."""
        self.scale *= factor
        self._scale_state(factor)

    def _scale_state(self, factor: float) -> None:
        """Scale every lr-valued number torch's schedulers keep (in them and in the param groups)."""
        for group in self.optimizer.param_groups:
            for key in ("lr", "initial_lr", "max_lr", "min_lr"):
                if key in group:
                    group[key] *= factor
        s = self.scheduler
        if s is None:
            return
        for name in ("base_lrs", "max_lrs", "min_lrs", "_last_lr", "values"):
            if isinstance(getattr(s, name, None), list):
                setattr(s, name, [v * factor for v in getattr(s, name)])
        if isinstance(getattr(s, "eta_min", None), float):
            s.eta_min *= factor

    def state_dict(self) -> dict[str, Any]:
        """Plain data: loads with ``torch.load(weights_only=True)``."""
        return {"spec": self.spec.text, "chunk_start": self.chunk_start, "chunk_epochs": self.chunk_epochs,
                "batches_per_epoch": self.batches_per_epoch, "mode": self.mode, "phase": self.phase,
                "steps": self.steps, "scale": self.scale,
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None}

    @classmethod
    def from_state(cls, state: dict[str, Any], optimizer: Optimizer) -> ScheduleRunner:
        """Rebuild from :meth:`state_dict`. Load the optimizer's own state afterwards: it holds the lr."""
        runner = cls(parse(state["spec"]), optimizer, state["chunk_start"], state["chunk_epochs"],
                     state["batches_per_epoch"], state["mode"])
        runner.phase, runner.steps = state["phase"], state["steps"]
        runner.scale = state.get("scale", 1.0)
        if runner.phase == "main" and runner.spec.warmup:
            runner.scheduler = runner._build_phase()
        if runner.scheduler is not None and state["scheduler"] is not None:
            runner.scheduler.load_state_dict(state["scheduler"])
        return runner


def preview(spec: ScheduleSpec, epochs: int, batches_per_epoch: int = 14) -> list[float]:
    """The lr of each epoch's first batch for a fresh chunk of ``epochs`` (plateau: as if never improving)."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=spec.base_lr or 0.1)
    runner = ScheduleRunner(spec, optimizer, 0, epochs, batches_per_epoch)
    param.grad = torch.zeros_like(param)  # a real (no-op) step keeps torch's step-order check quiet
    lrs = []
    for _ in range(epochs):
        lrs.append(runner.lr)
        for _ in range(batches_per_epoch):
            optimizer.step()
            runner.after_batch()
        runner.after_epoch(1.0)
    return lrs
