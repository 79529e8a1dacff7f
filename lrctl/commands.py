"""What a typed answer means: a pure ``parse(question, text)`` for every prompt, tested without a terminal.

>>> parse(Question.CONTINUE, " Yes ")
Answer(value=True)
>>> parse(Question.EPOCHS, "0")
Invalid(message='epochs must be at least 1, not 0')
>>> parse(Question.LR, "exp 0.05 gama=0.9")
Invalid(message="unknown option 'gama' for exp (options: gamma)")
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from lrctl._numbers import parse_float, parse_int
from lrctl.schedules import ALIASES, FAMILIES, ScheduleError, check_chunk, help_text
from lrctl.schedules import parse as parse_schedule

MAX_EPOCHS = 1_000_000


class Question(enum.Enum):
    """Each prompt, with its exact text."""

    CONTINUE = "Continue training? [y/n] "
    EPOCHS = "Epochs: "
    LR = "Learning rate: "
    FINISH = "Finish the interrupted chunk ({detail})? [y/n] "


@dataclass(frozen=True)
class Answer:
    value: Any


@dataclass(frozen=True)
class Invalid:
    message: str


@dataclass(frozen=True)
class Help:
    text: str


@dataclass(frozen=True)
class Quit:
    pass


@dataclass(frozen=True)
class Preview:
    expression: str
    epochs: int


@dataclass(frozen=True)
class Status:
    pass


@dataclass(frozen=True)
class Undo:
    pass


@dataclass(frozen=True)
class Fork:
    name: str


@dataclass(frozen=True)
class Plot:
    pass


@dataclass(frozen=True)
class Find:
    """``find [start=1e-4] [end=1] [batches=N]``: the options of ``lrctl find-lr``."""

    start: float = 1e-4
    end: float = 1.0
    batches: int | None = None  # None: the finder's default (40, or 4 epochs' worth)


Command = Answer | Invalid | Help | Quit | Preview | Status | Undo | Fork | Plot | Find

_YES, _NO = {"y", "yes"}, {"n", "no"}
_QUIT = {"q", "quit", "exit"}

GENERAL_HELP = """\
lrctl asks three questions per chunk of training:
  Continue training? [y/n]   y trains another chunk; n (or Ctrl-D, quit) saves the run and exits
  Epochs:                    how many epochs this chunk trains (a whole number >= 1)
  Learning rate:             a number (0.03) or a schedule (type help there for the list)
At any prompt: help, status (where the run stands), plot (curves of the run), undo (back to where the
last chunk began), fork NAME (continue in a copy of this run), quit. Empty answer = your previous answer.
At Learning rate: also find [start=1e-4 end=1 batches=N] (an lr range test from the current state, the
options of lrctl find-lr; its suggestion becomes the default).
During a chunk: Ctrl-C stops after the current epoch (kept and saved); Ctrl-C twice abandons it.
Up-arrow recalls earlier answers. Curves: tensorboard --logdir runs"""

LR_HELP = (help_text() + "\n  preview <expression> [epochs]            print the lr per epoch without training"
           "\n  find [start=1e-4 end=1 batches=N]        lr range test from here; its suggestion becomes the default")


def _yes_no(text: str) -> Command:
    word = text.strip().lower()
    if word in _YES:
        return Answer(True)
    if word in _NO:
        return Answer(False)
    return Invalid(f"answer y or n, not {text.strip()!r}" if text.strip() else "answer y or n")


def parse(question: Question, text: str, previous: Any = None) -> Command:
    """Interpret ``text`` typed at ``question``. ``previous`` is what an empty answer repeats."""
    stripped = text.strip()
    word = stripped.lower()
    if word in {"help", "?", "h"}:
        return Help(LR_HELP if question is Question.LR else GENERAL_HELP)
    if word in _QUIT:
        return Quit()
    if word == "status":
        return Status()
    if word == "undo":
        return Undo()
    if word == "plot":
        return Plot()
    if word == "fork" or word.startswith("fork "):
        name = stripped[4:].strip()
        return Fork(name) if name else Invalid("fork needs a name for the new run, e.g. fork try-0.01")
    if (word == "find" or word.startswith("find ")) and question is Question.LR:
        return parse_find(stripped)
    if question in (Question.CONTINUE, Question.FINISH):
        if not stripped and previous is not None:
            return Answer(bool(previous))
        return _yes_no(text)
    if not stripped:
        if previous is not None:
            return Answer(previous)
        return Invalid("type a value (help explains)")
    if question is Question.EPOCHS:
        try:
            epochs = parse_int(stripped, "epochs")
        except ValueError as e:
            return Invalid(str(e))
        if epochs < 1:
            return Invalid(f"epochs must be at least 1, not {epochs}")
        if epochs > MAX_EPOCHS:
            return Invalid(f"epochs must be at most {MAX_EPOCHS:,}")
        return Answer(epochs)
    if word.startswith("preview"):
        return _preview(stripped)
    try:
        return Answer(parse_schedule(stripped))  # typed once, here: the session takes the spec
    except ScheduleError as e:
        return Invalid(str(e))


def find_range_error(start: float, end: float, batches: int | None) -> str | None:
    """Why a range test's options cannot work, or None (shared by ``find`` and ``lrctl find-lr``)."""
    if not 0 < start < end:
        return f"find needs 0 < start < end, not start={start:g} end={end:g}"
    if batches is not None and not 5 <= batches <= 100_000:
        return f"find needs batches between 5 and 100000, not {batches}"
    return None


def parse_find(text: str) -> Command:
    """``find start=1e-5 end=1 batches=200`` (any of the three, in any order)."""
    values: dict[str, float | int] = {}
    for part in text.split()[1:]:
        key, eq, value = part.partition("=")
        key = key.lower()
        if not eq or key not in ("start", "end", "batches"):
            return Invalid(f"find takes start=, end= and batches= (e.g. find start=1e-5 end=1 batches=200), "
                           f"not {part!r}")
        try:
            values[key] = parse_int(value, key) if key == "batches" else parse_float(value, key)
        except ValueError as e:
            return Invalid(str(e))
    command = Find(**values)  # type: ignore[arg-type]
    error = find_range_error(command.start, command.end, command.batches)
    return Invalid(error) if error else command


def _preview(text: str) -> Command:
    parts = text.split()[1:]
    epochs = 30
    if len(parts) >= 2 and parts[-1].isdigit() and not parts[-2].endswith("="):
        epochs = int(parts.pop())
    if not parts:
        return Invalid("preview needs an expression, e.g. preview exp 0.05 gamma=0.95 30")
    try:
        spec = parse_schedule(" ".join(parts))
    except ScheduleError as e:
        return Invalid(str(e))
    if spec.name == "keep":
        return Invalid("preview shows a new schedule; keep continues the current one")
    if not 1 <= epochs <= 10_000:
        return Invalid("preview epochs must be between 1 and 10000")
    try:
        check_chunk(spec, epochs)  # a warm-up as long as the preview: refused like the chunk it shows
    except ScheduleError as e:
        return Invalid(str(e))
    return Preview(spec.text, epochs)


def completions(text: str) -> list[str]:
    """Words that may come next at the ``Learning rate:`` prompt (schedule names, then their options)."""
    tokens = text.split()
    if text.endswith(" ") or not tokens:
        tokens.append("")
    current = tokens[-1]
    earlier = [t for t in tokens[:-1] if not t.startswith("warmup=")]
    if not earlier or earlier == ["preview"]:
        words = [n for n in FAMILIES if n != "const"] + ["warmup=", "preview", "find", "help"]
        return [w for w in words if w.startswith(current)]
    if earlier[0].lower() == "find":
        used = {t.partition("=")[0] for t in tokens[:-1]}
        return [f"{k}=" for k in ("start", "end", "batches") if k not in used and f"{k}=".startswith(current)]

    def family_of(word: str):
        return FAMILIES.get(ALIASES.get(word.lower(), word.lower()))

    family = family_of(earlier[-1] if earlier[0] == "preview" and len(earlier) == 2 else earlier[0])
    if family is None and len(earlier) > 1:
        family = family_of(earlier[1])
    if family is None:
        return []
    used = {t.partition("=")[0] for t in tokens[:-1] if "=" in t}
    return [f"{k}=" for k in family.options if k not in used and f"{k}=".startswith(current)]
