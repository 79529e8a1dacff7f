"""What a person sees: the banner, a progress bar during a chunk, one row per epoch, messages.

On a terminal a rich progress bar (epochs and batches) sits under the rows; anywhere else the
output is plain lines with no cursor codes, so transcripts and pipes read cleanly. Output into a
closed pipe (``lrctl ... | head``) marks the view closed and asks the session to stop after the
epoch; the run is saved and lrctl ends quietly.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from rich.console import Console

from lrctl.reports import ChunkOutcome, Observer

if TYPE_CHECKING:
    from rich.progress import Progress

    from lrctl.engine import EpochRecord


def fmt_lr(lr: float | None) -> str:
    return "-" if lr is None else f"{lr:.6g}"


def lr_now(summary: dict[str, Any]) -> str:
    """The lr of the last epoch trained and, where it differs, the next one: '0.03', '0.0003 (next 0)'."""
    last, nxt = summary.get("last_lr"), summary.get("lr")
    if last is None:
        return fmt_lr(nxt)
    if nxt is None or fmt_lr(nxt) == fmt_lr(last):
        return fmt_lr(last)
    return f"{fmt_lr(last)} (next {fmt_lr(nxt)})"


def fmt_metric(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 30) -> str:
    """A one-line chart of ``values`` (down-sampled to ``width``)."""
    if not values:
        return ""
    if len(values) > width:
        values = [values[int(i * len(values) / width)] for i in range(width)]
    lo, hi = min(values), max(values)
    span = hi - lo or 1.0
    return "".join(SPARK[min(len(SPARK) - 1, int((v - lo) / span * (len(SPARK) - 1) + 0.5))] for v in values)


class View(Observer):
    """Renders session events to ``file`` (stdout by default).

    Args:
        file: where to write.
        interactive: draw a progress bar (a terminal); otherwise plain rows only.
        on_closed: called once when the output turns out to be a closed pipe.
    """

    def __init__(self, file: TextIO | None = None, interactive: bool | None = None,
                 on_closed: Callable[[], None] | None = None) -> None:
        self.file = file or sys.stdout
        self.interactive = self.file.isatty() if interactive is None else interactive
        self.console = Console(file=self.file, highlight=False, soft_wrap=True,
                               force_terminal=self.interactive, no_color=not self.interactive,
                               emoji=False)
        self.console.on_broken_pipe = self._broken_pipe  # rich's own exits the process with code 1
        self.closed = False
        self.on_closed = on_closed
        self.progress: Progress | None = None
        self._epoch_task: Any = None
        self._batch_task: Any = None
        self._chunk_values: list[float] = []
        self.wants_batches = self.interactive
        self.keys_help = ""  # shown under the bars while keys are read

    # -- output that survives a closed pipe ----------------------------------------------------
    def _write(self, text: str, style: str | None = None) -> None:
        if self.closed:
            return
        try:
            target = self.progress.console if self.progress is not None else self.console
            target.print(text, style=style, markup=False)
            if not self.interactive:
                self.file.flush()
        except BrokenPipeError:
            self._mark_closed()

    @staticmethod
    def _broken_pipe() -> None:
        raise BrokenPipeError

    def _mark_closed(self) -> None:
        self.closed = True
        try:  # later writes (and the interpreter's final flush) go nowhere instead of raising
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.file.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        if self.on_closed is not None:
            self.on_closed()

    def say(self, text: str) -> None:
        self._write(text)

    def warn(self, text: str) -> None:
        self._write(text, style="yellow")

    def error(self, text: str) -> None:
        self._write(text, style="bold red")

    message = say

    # -- run-level lines -------------------------------------------------------------------------
    def banner(self, name: str, is_new: bool, summary: dict[str, Any], description: str, logdir: str) -> None:
        if is_new:
            self.say(f"run '{name}' (new) · {description} · TensorBoard: {logdir}")
            return
        step = summary.get("global_step", 0)
        metric = summary.get("metric", "mse")
        last = summary.get("last") or {}
        inside = f", batch {summary['batch']} of {summary['batches']}" if summary.get("batch") else ""
        where = (f"at epoch {step}{inside} · train_{metric} {fmt_metric(last.get('train'))} "
                 f"test_{metric} {fmt_metric(last.get('test'))} · lr {lr_now(summary)}")
        self.say(f"run '{name}' (resumed {where}) · {description} · TensorBoard: {logdir}")

    # -- Observer ----------------------------------------------------------------------------------
    def chunk_started(self, start: int, epochs: int, spec_text: str, batches_per_epoch: int) -> None:
        self._chunk_values = []
        self.say(f"training epochs {start}..{start + epochs - 1} · lr {spec_text}")
        if self.interactive and not self.closed:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
            from rich.text import Text

            keys_help = self.keys_help

            class Bars(Progress):
                """The two bars, then the keys as a plain line (a task of its own drew an empty bar, 0/?)."""

                def get_renderables(self):
                    yield from super().get_renderables()
                    if keys_help:
                        yield Text(keys_help, style="dim")

            self.progress = Bars(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), console=self.console, transient=True)
            self.progress.start()
            self._epoch_task = self.progress.add_task("epochs ", total=epochs)
            self._batch_task = self.progress.add_task("batches", total=batches_per_epoch)

    @contextlib.contextmanager
    def suspended(self):
        """Hide the progress bar while something else uses the terminal (the lr key's prompt)."""
        progress = self.progress
        if progress is not None:
            progress.stop()
            # rich keeps the stopped bars' height and, on start, moves the cursor up that far and clears:
            # it erased what was written meanwhile (the lr prompt and its refusal, e.g. an unknown schedule).
            # Forget it: the bars start again below those lines.
            progress.live._live_render._shape = None
        try:
            yield
        finally:
            if progress is not None and self.progress is progress:
                progress.start()

    def batch_done(self, batch: int, batches: int) -> None:
        if self.progress is not None:
            self.progress.update(self._batch_task, completed=batch)

    def epoch_done(self, record: EpochRecord, metric: str) -> None:
        self._chunk_values.append(record.train)
        if self.progress is not None:
            self.progress.update(self._epoch_task, advance=1)
        self._write(f"epoch {record.step:>5}  lr {record.lr:<10.6g} train_{metric} {record.train:<12.6g} "
                    f"test_{metric} {record.test:<12.6g} {record.seconds:.3f}s")

    def chunk_ended(self, outcome: ChunkOutcome) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        if outcome.status == "done" and len(self._chunk_values) > 1:
            v = self._chunk_values
            self.say(f"chunk done at epoch {outcome.step} · train {sparkline(v)} {v[0]:.4g} -> {v[-1]:.4g}")
        elif outcome.status == "stopped":
            self.say(f"stopped at epoch {outcome.step} ({outcome.detail}); saved")
        elif outcome.status == "abandoned":
            dropped = (f"{outcome.dropped} finished epoch{'s' if outcome.dropped != 1 else ''} dropped, rewritten "
                       "when trained again" if outcome.dropped else "no finished epoch dropped")
            where = (f"back to batch {outcome.batch}, where this session resumed it (its start is not kept)"
                     if outcome.batch else "back to where it began")
            self.warn(f"abandoned epoch {outcome.step}: {where} ({dropped}"
                      + (f"; {outcome.detail}" if outcome.detail else "") + ")")
        elif outcome.status == "diverged":
            self.error(f"diverged: {outcome.detail}; rolled back to epoch {outcome.step}, the last finite "
                       f"state (that epoch dropped, the rest of the command too). "
                       "Try a smaller learning rate than "
                       f"{fmt_lr(outcome.lr)}.")

    def lr_table(self, lrs: list[float]) -> None:
        """``preview``: the lr of each epoch, with a bar for its size."""
        top = max(lrs) or 1.0
        for epoch, lr in enumerate(lrs):
            self._write(f"{epoch:>5}  {lr:<12.6g} {'█' * max(1, round(30 * lr / top))}")
