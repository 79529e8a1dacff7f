"""When a run checkpoints: the rules, apart from how a checkpoint is written (:mod:`lrctl.runstore`).

A checkpoint is written at every chunk's end and on close (the session does those), and in between:
- at an epoch's end, when ``save_every`` seconds have passed since the last one, or every
  ``train.checkpoint_every`` epochs (config), or when asked (``c``, SIGUSR1, the socket);
- inside a long epoch, at a batch boundary, on the same cadence but at most once a second, and only
  once the epoch itself has run that long, so short epochs checkpoint only at their ends.

The clock is injected: the lifecycle simulation gives one that moves a fixed amount per reading,
which puts mid-epoch checkpoints among every other operation.

>>> ticks = iter([0.0, 6.0, 6.0, 6.0, 6.5])
>>> timing = SaveTiming(save_every=5.0, every_epochs=0, clock=lambda: next(ticks))
>>> timing.due_at_epoch_end(step=0)
True
>>> timing.saved(); timing.epoch_started(); timing.due_mid_epoch()
False
"""

from __future__ import annotations

import time
from collections.abc import Callable

DEFAULT_SAVE_EVERY = 5.0
MID_EPOCH_MIN_SECONDS = 1.0  # mid-epoch checkpoints come at most this often, whatever --save-every says


class SaveTiming:
    """The seconds-and-epochs rules above, for one session."""

    def __init__(self, save_every: float = DEFAULT_SAVE_EVERY, every_epochs: int = 0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.save_every, self.every_epochs, self.clock = save_every, every_epochs, clock
        self.last_save = clock()
        self.epoch_start = self.last_save

    def saved(self) -> None:
        self.last_save = self.clock()

    def epoch_started(self) -> None:
        self.epoch_start = self.clock()

    def due_at_epoch_end(self, step: int) -> bool:
        """At the end of global epoch ``step``: is a checkpoint due?"""
        every = self.every_epochs
        return self.clock() - self.last_save >= self.save_every or bool(every and (step + 1) % every == 0)

    def due_mid_epoch(self) -> bool:
        """At a batch boundary inside an epoch: is a checkpoint due?"""
        now = self.clock()
        cadence = max(self.save_every, MID_EPOCH_MIN_SECONDS)
        return now - self.last_save >= cadence and now - self.epoch_start >= cadence
