"""What an ``lrctl.Run`` shows and how it asks: plain-text rows on the current ``sys.stdout``, a progress
bar in a notebook (HTML updated in place, no widgets needed) or rich's on a terminal, and the prompt's
questions through ``input()`` (a notebook's input box) when there is no terminal."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from lrctl.commands import Question
from lrctl.reports import ChunkOutcome
from lrctl.view import View


def in_notebook() -> bool:
    """True inside a Jupyter kernel (an IPython shell with a kernel); never imports IPython itself."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and getattr(shell, "kernel", None) is not None


def isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class _NotebookBar:
    """An HTML ``<progress>`` bar updated in place through IPython's display ids: no ipywidgets needed."""

    def __init__(self, epochs: int, batches: int) -> None:
        from IPython.display import HTML, display

        self._html, self.epochs, self.batches = HTML, epochs, batches
        self.done_epochs, self._shown = 0, 0.0
        self.handle = display(HTML(self._render(0)), display_id=True)

    def _render(self, batch: int) -> str:
        total = max(1, self.epochs * self.batches)
        done = min(total, self.done_epochs * self.batches + batch)
        return (f'<progress value="{done}" max="{total}" style="width: 320px"></progress> '
                f"epoch {self.done_epochs}/{self.epochs} · batch {batch}/{self.batches}")

    def update(self, batch: int, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._shown >= 0.2:  # a few updates a second: each is a message to the frontend
            self._shown = now
            self.handle.update(self._html(self._render(batch)))


class RunView(View):
    """Rows and messages as plain text on the current ``sys.stdout`` (a notebook cell's output, a script's
    stdout); a progress bar in a notebook, or rich's on a terminal."""

    def __init__(self, progress: bool | None) -> None:
        terminal = progress is not False and isatty(sys.stdout)
        super().__init__(file=sys.stdout, interactive=terminal)
        self.notebook = progress is not False and not terminal and in_notebook()
        self.wants_batches = self.interactive or self.notebook
        self._bar: _NotebookBar | None = None

    def _write(self, text: str, style: str | None = None) -> None:
        if self.interactive:
            super()._write(text, style)
            return
        try:  # the stream of the moment: notebooks and test runners swap sys.stdout
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
        except (OSError, ValueError):
            pass

    def chunk_started(self, start: int, epochs: int, spec_text: str, batches_per_epoch: int) -> None:
        super().chunk_started(start, epochs, spec_text, batches_per_epoch)
        if self.notebook:
            self._bar = _NotebookBar(epochs, batches_per_epoch)

    def batch_done(self, batch: int, batches: int) -> None:
        super().batch_done(batch, batches)
        if self._bar is not None:
            self._bar.update(batch)

    def epoch_done(self, record: Any, metric: str) -> None:
        if self._bar is not None:
            self._bar.done_epochs += 1
            self._bar.update(0, force=True)
        super().epoch_done(record, metric)

    def chunk_ended(self, outcome: ChunkOutcome) -> None:
        self._bar = None
        super().chunk_ended(outcome)


class InputAsker:
    """The prompt's questions through ``input()``: the notebook's input box, or a script's stdin."""

    def ask(self, question: Question, text: str, placeholder: str | None = None,
            on_shown: Callable[[], None] | None = None) -> str:
        if on_shown is not None:
            on_shown()
        if placeholder and text.endswith(": "):
            text = f"{text[:-2]} [{placeholder}]: "  # an empty answer repeats it
        try:
            return input(text)
        except Exception as e:  # a frontend without input (a notebook run by nbclient): like end of input
            if type(e).__name__ == "StdinNotImplementedError":
                raise EOFError from None
            raise
