"""What a training session reports, and how a command ended: the interface between the session and
whatever shows it (:mod:`lrctl.view` on a terminal, :mod:`lrctl._notebook` in Jupyter, tests).

The session and the chunk it runs never print; they call an :class:`Observer`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lrctl.engine import EpochRecord


class Observer:
    """What a session reports. Subclass and override what you show; every method is optional."""

    def message(self, text: str) -> None: ...
    def chunk_started(self, start: int, epochs: int, spec_text: str, batches_per_epoch: int) -> None: ...
    def batch_done(self, batch: int, batches: int) -> None: ...
    def epoch_done(self, record: EpochRecord, metric: str) -> None: ...
    def chunk_ended(self, outcome: ChunkOutcome) -> None: ...

    wants_batches: bool = False


@dataclass
class ChunkOutcome:
    """How a command ended. status: done | stopped (kept, pending remains) | abandoned | diverged."""

    status: str
    step: int
    dropped: int = 0
    lr: float | None = None
    detail: str = ""
    batch: int = 0  # abandoned inside an epoch this process resumed mid-way, whose start is not kept: its batch
