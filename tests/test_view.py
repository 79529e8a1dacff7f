"""The terminal view (lrctl/view.py): what stays on screen, read back through a VT100 emulator (pyte)."""

from __future__ import annotations

import io

import pytest

from lrctl.view import View

pyte = pytest.importorskip("pyte")


def _screen(raw: str, columns: int = 120, lines: int = 30) -> list[str]:
    screen = pyte.Screen(columns, lines)
    pyte.Stream(screen).feed(raw.replace("\n", "\r\n"))  # a tty's output post-processing (onlcr)
    return [line.rstrip() for line in screen.display]


def test_lines_written_while_the_bars_are_suspended_stay_on_screen_when_they_return():
    out = io.StringIO()
    view = View(file=out, interactive=True)
    view.keys_help = "keys: p pause/continue"
    view.chunk_started(0, 10, "0.01", 14)
    view.batch_done(3, 14)
    view.progress.refresh()
    with view.suspended():  # what the l key does: its prompt, the answer, a refusal
        out.write("New learning rate (a number or a schedule; empty cancels): abc\n")
        view.warn("unknown schedule 'abc'; the lr is unchanged")
    view.progress.refresh()  # the bars are drawn again below
    view.progress.stop()
    shown = _screen(out.getvalue())
    assert "New learning rate (a number or a schedule; empty cancels): abc" in shown
    assert "unknown schedule 'abc'; the lr is unchanged" in shown
