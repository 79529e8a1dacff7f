"""A run's TensorBoard side: the epoch-indexed log, the batch-indexed one, purges and interventions.

:class:`RunLogs` is what the session writes curves through. It owns two loggers made by an injected
factory (TensorBoard's by default, :class:`lrctl.tblog.MemoryLogger` in tests): the run's own, at
global epochs, and ``<run>/batch`` at global batches (per-batch lrs), opened on first use so a run
without per-batch schedules has no batch directory. A reopened run purges the steps after its
checkpoint in both, so the curves continue with no gap or duplicate.

>>> from lrctl.tblog import MemoryLogger
>>> made = []
>>> logs = RunLogs(Path("run"), "mse", factory=lambda d, purge, layout: made.append(MemoryLogger()) or made[-1])
>>> logs.open(step=0)
>>> logs.intervention("chunk: 30 epochs of `0.03`", 0)
>>> made[0].texts["interventions"]
[(0, 'chunk: 30 epochs of `0.03`')]
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lrctl.runstore import BATCH_LOGDIR, EVENTS_PREFIX

if TYPE_CHECKING:
    from lrctl.engine import EpochRecord
    from lrctl.tblog import MetricLogger

# (log directory, purge step or None, custom-scalars layout or None) -> a logger
LoggerFactory = Callable[[Path, "int | None", "Any"], "MetricLogger"]


def tensorboard_logger(logdir: Path, purge_step: int | None, layout: Any) -> MetricLogger:
    from lrctl.tblog import TensorBoardLogger

    return TensorBoardLogger(logdir, purge_step=purge_step, layout=layout)


def null_logger(logdir: Path, purge_step: int | None, layout: Any) -> MetricLogger:
    """Ranks other than 0 write no files."""
    from lrctl.tblog import NullLogger

    return NullLogger()


def _has_events(logdir: Path | None) -> bool:
    return logdir is not None and logdir.is_dir() and any(p.name.startswith(EVENTS_PREFIX) for p in logdir.iterdir())


class RunLogs:
    """The TensorBoard logs of one run directory, for a metric (``mse``, ``accuracy``)."""

    def __init__(self, run_dir: Path | None, metric: str, factory: LoggerFactory = tensorboard_logger) -> None:
        """``run_dir``: None for a rank that writes no files (its factory makes null loggers)."""
        self.run_dir, self.metric, self.factory = run_dir, metric, factory
        self.epochs: MetricLogger | None = None
        self._batches: MetricLogger | None = None
        self._opened_step = 0  # where this process started writing (the batch log purges from here)

    def open(self, step: int, purge: bool | None = None) -> None:
        """Start writing at global epoch ``step``; steps at or after it that are on disk already (a
        crash after the checkpoint, a fork's copy) are hidden now and rewritten identically.
        ``purge``: None purges only when the run has events already."""
        from lrctl.tbplugins import run_layout

        if purge is None:
            purge = _has_events(self.run_dir)
        self._opened_step = step
        self.epochs = self.factory(self.run_dir, step if purge else None, run_layout(self.metric))

    def batch_log(self, batches_per_epoch: int) -> MetricLogger:
        """Batch-indexed scalars live in their own TensorBoard run (``<run>/batch``): a purge at an
        epoch step must not hide them, and theirs is counted in batches."""
        if self._batches is None:
            logdir = self.run_dir / BATCH_LOGDIR if self.run_dir is not None else None
            purge = self._opened_step * batches_per_epoch if _has_events(logdir) else None
            self._batches = self.factory(logdir, purge, None)
        return self._batches

    def epoch(self, record: EpochRecord, batches_per_epoch: int) -> None:
        """One epoch's scalars at its global step (and its batch lrs at their global batches)."""
        metric = self.metric
        self.epochs.log_dict({f"train_{metric}": record.train, f"test_{metric}": record.test, "lr": record.lr},
                             record.step)
        if record.batch_lrs is not None:
            batches = self.batch_log(batches_per_epoch)
            base = record.step * batches_per_epoch
            for i, lr in enumerate(record.batch_lrs):
                batches.log("lr_batch", lr, base + i)
            batches.flush()
        self.epochs.flush()

    def intervention(self, text: str, step: int) -> None:
        """A human decision, as a TensorBoard text entry at its global step (the curves explain themselves)."""
        if self.epochs is not None:
            self.epochs.log_text("interventions", text, step)
            self.epochs.flush()

    def purge(self, step: int, batches_per_epoch: int) -> None:
        """Hide everything at or after global epoch ``step`` (a rollback, an undo)."""
        self.epochs.purge(step)
        self.epochs.flush()
        if self._batches is not None:
            self._batches.purge(step * batches_per_epoch)
            self._batches.flush()

    def open_loggers(self) -> list[MetricLogger]:
        return [logger for logger in (self.epochs, self._batches) if logger is not None]

    def flush(self, durable: bool = False) -> None:
        for logger in self.open_loggers():
            logger.flush(durable=durable)

    def close(self) -> None:
        for logger in self.open_loggers():
            logger.close()
