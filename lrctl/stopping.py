"""One stop state for a running session, and the one place signal handlers are installed.

Every way of ending or pausing work asks the same :class:`StopState`: Ctrl-C (SIGINT), SIGTERM,
SIGHUP, SIGUSR1, the ``s`` key, ``lrctl send RUN stop``, a closed output pipe and, under torchrun,
the launcher's signals. The engine never sees signals; the session reads this state at batch
boundaries and epoch ends.

=============  ===========================================================================
request        what the session does
=============  ===========================================================================
``stop``       finish the running epoch, save, leave the rest of the command pending
``abandon``    drop the running epoch (back to its start), leave the rest pending
``shutdown``   the process is being ended (SIGTERM, SIGHUP): save at the next batch
               boundary, mid-epoch if need be, and exit (143 / 129); ``lrctl resume`` finishes
``checkpoint`` (SIGUSR1, the ``c`` key) save at the next batch boundary and keep training
=============  ===========================================================================

>>> state = StopState()
>>> state.request("stop"); state.stop_after_epoch
True
>>> state.request("abandon"); state.kind
'abandon'
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator

NONE, STOP, ABANDON = "none", "stop", "abandon"
_ORDER = {NONE: 0, STOP: 1, ABANDON: 2}
SIGNAL_EXIT = {signal.SIGTERM: 143, signal.SIGHUP: 129}


class Shutdown(BaseException):
    """The process is being ended by a signal; the run was saved. Carries the exit code.

    A BaseException, like KeyboardInterrupt: no ``except Exception`` on the way may swallow it."""

    def __init__(self, signum: int, detail: str = "") -> None:
        super().__init__(detail or signal.Signals(signum).name)
        self.signum, self.detail = signum, detail

    @property
    def exit_code(self) -> int:
        return SIGNAL_EXIT.get(self.signum, 128 + self.signum)


class StopState:
    """What has been asked of the running work. ``request()`` only ever escalates; ``clear()`` starts afresh."""

    def __init__(self) -> None:
        self.kind = NONE
        self.shutdown_signal: int | None = None
        self.checkpoint_now = False
        self.reasons: list[str] = []

    def request(self, kind: str, reason: str = "") -> None:
        """``kind``: 'stop', 'abandon', 'checkpoint' or 'shutdown' (then ``reason`` names the signal)."""
        if reason:
            self.reasons.append(reason)
        if kind == "checkpoint":
            self.checkpoint_now = True
        elif kind == "shutdown":
            self.shutdown_signal = self.shutdown_signal or _signal_number(reason)
        elif _ORDER[kind] > _ORDER[self.kind]:
            self.kind = kind

    def clear(self) -> None:
        """A new command starts: earlier stop requests are spent (a shutdown never is)."""
        self.kind, self.checkpoint_now, self.reasons = NONE, False, []

    @property
    def stop_after_epoch(self) -> bool:
        return self.kind != NONE or self.shutdown_signal is not None

    @property
    def abandon(self) -> bool:
        return self.kind == ABANDON

    @property
    def shutdown(self) -> bool:
        return self.shutdown_signal is not None


def _signal_number(name: str) -> int:
    with contextlib.suppress(KeyError, AttributeError):
        return int(signal.Signals[name])
    return int(signal.SIGTERM)


@contextlib.contextmanager
def process_signals(on_end: Callable[[int], None], on_checkpoint: Callable[[], None]) -> Iterator[None]:
    """SIGTERM and SIGHUP call ``on_end(signum)`` once; a second one exits at once (the last checkpoint on
    disk is intact: every file is written atomically). SIGUSR1 calls ``on_checkpoint()``."""
    seen: list[int] = []

    def end(signum: int, frame: object) -> None:
        if seen:
            os._exit(SIGNAL_EXIT.get(signum, 128 + signum))
        seen.append(signum)
        on_end(signum)

    def checkpoint(signum: int, frame: object) -> None:
        on_checkpoint()

    old = {}
    for signum, handler in ((signal.SIGTERM, end), (signal.SIGHUP, end), (signal.SIGUSR1, checkpoint)):
        with contextlib.suppress(ValueError, OSError):  # not the main thread, or no such signal
            old[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, handler in old.items():
            with contextlib.suppress(ValueError, OSError):
                signal.signal(signum, handler)
