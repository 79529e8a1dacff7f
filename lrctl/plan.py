"""A command to train, typed: what every edge (prompt, ``--plan``, Python, compare) turns text into.

A :class:`ChunkRequest` is "N epochs of this schedule" with the schedule already parsed
(:class:`lrctl.schedules.ScheduleSpec`). Text is parsed once, where it enters: the prompt
(:mod:`lrctl.commands`), the ``--plan`` grammar (:func:`parse_plan`), the Python API
(:func:`requests`). :func:`check_request` is the one place that says what a run cannot do now;
:func:`absolute_chunks` makes requests absolute ("from global epoch 60, 30 epochs of 0.03"), the
form recorded in ``pending.json`` and the journal, where a schedule is its canonical text.

>>> plan = parse_plan("30@0.03; 30@exp 0.05 gamma=0.95")
>>> [(r.epochs, r.spec.text) for r in plan]
[(30, '0.03'), (30, 'exp 0.05 gamma=0.95')]
>>> absolute_chunks(plan, start=60)[1]
{'start': 90, 'epochs': 30, 'expr': 'exp 0.05 gamma=0.95'}
>>> check_request(ChunkRequest(5, parse_schedule("warmup=5 cos 0.03")), has_schedule=False)
Traceback (most recent call last):
...
lrctl.schedules.ScheduleError: warmup=5 leaves none of the chunk's 5 epochs for cos
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from lrctl._numbers import parse_int
from lrctl.schedules import ScheduleError, ScheduleSpec, check_chunk
from lrctl.schedules import parse as parse_schedule


class ChunkRequest(NamedTuple):
    """``epochs`` epochs of ``spec`` (a number is a constant schedule; ``keep`` continues the current one)."""

    epochs: int
    spec: ScheduleSpec


def check_request(request: ChunkRequest, has_schedule: bool) -> None:
    """Refuse what the run cannot do now (a ValueError; :func:`lrctl.schedules.check_chunk` has the
    rules). ``has_schedule``: the run has a schedule to keep."""
    check_chunk(request.spec, request.epochs, has_schedule)


def check_plan(plan: Sequence[ChunkRequest], has_schedule: bool) -> None:
    """:func:`check_request` for every chunk of a plan (a later chunk can keep an earlier one's schedule)."""
    for i, request in enumerate(plan):
        check_request(request, has_schedule or i > 0)


def requests(pairs: Iterable[tuple[int, str | ScheduleSpec]]) -> list[ChunkRequest]:
    """The Python edge: ``[(30, "0.03"), (30, "cos 0.03")]`` -> requests (text parsed here, once)."""
    return [ChunkRequest(int(epochs), lr if isinstance(lr, ScheduleSpec) else parse_schedule(str(lr)))
            for epochs, lr in pairs]


def parse_plan(text: str) -> list[ChunkRequest]:
    """The ``--plan`` grammar: ``"30@0.03;30@exp 0.05 gamma=0.95"``; ValueError names the bad chunk."""
    chunks = []
    for i, part in enumerate(p for p in text.split(";") if p.strip()):
        epochs_text, at, expression = part.partition("@")
        if not at:
            raise ValueError(f"plan chunk {i + 1} {part.strip()!r}: expected EPOCHS@LR, e.g. 30@0.03")
        try:
            epochs = parse_int(epochs_text, "epochs")
            if epochs < 1:
                raise ValueError("epochs must be at least 1")
            spec = parse_schedule(expression)
        except (ValueError, ScheduleError) as e:
            raise ValueError(f"plan chunk {i + 1} {part.strip()!r}: {e}") from None
        chunks.append(ChunkRequest(epochs, spec))
    if not chunks:
        raise ValueError("the plan is empty; e.g. --plan \"30@0.03;30@0.01\"")
    return chunks


def absolute_chunks(plan: Sequence[ChunkRequest], start: int) -> list[dict[str, Any]]:
    """Requests from global epoch ``start`` -> the recorded chunks ``{start, epochs, expr}``."""
    chunks = []
    for request in plan:
        chunks.append({"start": start, "epochs": request.epochs, "expr": request.spec.text})
        start += request.epochs
    return chunks
