"""Learning-rate schedules: the one-line grammar typed at the prompt, and the spec it parses to.

A schedule is saved as the expression the user typed (canonicalised), never as a lambda, and
rebuilt from it; the torch scheduler's own ``state_dict`` carries the clock. This module is pure
Python (the prompt parses without torch); :mod:`lrctl.lr_runner` builds the torch side.

>>> parse("exp 0.05 gamma=0.95").text
'exp 0.05 gamma=0.95'
>>> parse("warmup=5 cos 0.03 min=1e-4").warmup
5
>>> parse("0.03").name
'const'
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from lrctl._numbers import parse_float, parse_int


class ScheduleError(ValueError):
    """An expression that does not parse; the message names the bad token."""


@dataclass(frozen=True)
class Family:
    """One schedule name: its positional numbers, options with defaults, and how it steps."""

    name: str
    positional: tuple[str, ...]
    options: dict[str, Any]
    per_batch: bool = False
    chunk_length: bool = False
    summary: str = ""
    example: str = ""


FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("const", ("lr",), {}, summary="constant", example="0.03"),
    Family("step", ("lr",), {"every": 10, "gamma": 0.5}, summary="x gamma every N epochs (StepLR)",
           example="step 0.03 every=10 gamma=0.5"),
    Family("multistep", ("lr",), {"at": None, "gamma": 0.1},
           summary="x gamma at those epochs of the chunk (MultiStepLR)", example="multistep 0.03 at=10,25 gamma=0.1"),
    Family("piecewise", (), {}, summary="0.03 for 10 epochs, 0.01 for 20, then 0.001",
           example="piecewise 0.03:10 0.01:20 0.001"),
    Family("exp", ("lr",), {"gamma": 0.95}, summary="x gamma every epoch (ExponentialLR)",
           example="exp 0.05 gamma=0.95"),
    Family("power", ("lr",), {"s": 10.0, "c": 1.0}, summary="lr / (1 + t/s)**c, t = epochs into the chunk (alias poly)",
           example="power 0.03 s=10 c=1"),
    Family("plateau", ("lr",), {"factor": 0.5, "patience": 5, "threshold": 1e-4, "cooldown": 0, "min": 0.0},
           summary="x factor when the test metric stops improving (ReduceLROnPlateau)",
           example="plateau 0.03 factor=0.5 patience=5"),
    Family("cyclic", ("lo", "hi"), {"period": 4.0, "mode": "triangular", "gamma": 1.0}, per_batch=True,
           summary="triangular between lo and hi, one cycle per period epochs, every batch (CyclicLR)",
           example="cyclic 0.001 0.03 period=4"),
    Family("cos", ("lr",), {"min": 0.0}, chunk_length=True,
           summary="cosine from lr to min over the chunk (CosineAnnealingLR)", example="cos 0.03 min=0.0001"),
    Family("restarts", ("lr",), {"period": 10, "mult": 1, "min": 0.0},
           summary="cosine with warm restarts (CosineAnnealingWarmRestarts)", example="restarts 0.03 period=10 mult=2"),
    Family("onecycle", ("lr",), {"pct": 0.3, "div": 25.0, "final_div": 1e4, "anneal": "cos"}, per_batch=True,
           chunk_length=True, summary="1cycle over the chunk, every batch (OneCycleLR)", example="onecycle 0.05"),
    Family("linear", ("start", "end"), {}, chunk_length=True,
           summary="straight line from start to end over the chunk (LinearLR)", example="linear 0.03 0.001"),
    Family("keep", (), {}, summary="continue the previous chunk's schedule where it stopped", example="keep"),
]}
MODES = {"mode": ("triangular", "triangular2", "exp_range"), "anneal": ("cos", "linear")}
# Names users type for a family (as written in other libraries); the spec keeps the family's own name.
ALIASES = {"poly": "power"}


@dataclass(frozen=True)
class ScheduleSpec:
    """A parsed expression. ``text`` is canonical: parsing it again gives an equal spec."""

    name: str
    args: tuple[float, ...] = ()
    options: tuple[tuple[str, Any], ...] = ()
    warmup: int = 0
    pieces: tuple[tuple[float, int], ...] = ()  # piecewise: (lr, epochs); the last value follows

    @property
    def family(self) -> Family:
        return FAMILIES[self.name]

    @property
    def opts(self) -> dict[str, Any]:
        return dict(self.family.options) | dict(self.options)

    @property
    def base_lr(self) -> float | None:
        """The lr the schedule starts from (after warm-up), when it has one."""
        if self.name == "piecewise":
            return self.pieces[0][0] if self.pieces else self.args[0]
        if self.name == "cyclic":
            return self.args[0]
        return self.args[0] if self.args else None

    @property
    def text(self) -> str:
        parts = [f"warmup={self.warmup}"] if self.warmup else []
        if self.name == "const":
            return " ".join(parts + [_num(self.args[0])])
        parts.append(self.name)
        parts += [f"{_num(lr)}:{n}" for lr, n in self.pieces]
        parts += [_num(a) for a in self.args]
        parts += [f"{k}={_opt(v)}" for k, v in self.options]
        return " ".join(parts)

    def __str__(self) -> str:
        return self.text


def _num(x: float) -> str:
    return repr(float(x)) if x != int(x) or abs(x) >= 1e16 else str(int(x)) if abs(x) >= 1 else repr(float(x))


def _opt(v: Any) -> str:
    if isinstance(v, tuple):
        return ",".join(str(i) for i in v)
    return _num(v) if isinstance(v, float) else str(v)


def _option_value(name: str, key: str, text: str, default: Any) -> Any:
    what = f"{key} for {name}"
    if key in MODES:
        if text not in MODES[key]:
            raise ScheduleError(f"{what} must be one of {', '.join(MODES[key])}, not {text!r}")
        return text
    if key == "at":
        try:
            values = tuple(parse_int(t, what) for t in text.split(","))
        except ValueError as e:
            raise ScheduleError(f"{e} (e.g. at=10,25)") from None
        if any(v <= 0 for v in values) or list(values) != sorted(set(values)):
            raise ScheduleError(f"{what} must be increasing epochs > 0, e.g. at=10,25")
        return values
    try:
        value: Any = parse_int(text, what) if isinstance(default, int) else parse_float(text, what)
    except ValueError as e:
        raise ScheduleError(str(e)) from None
    low_ok = key in {"min", "cooldown", "threshold"}
    if value < 0 or (value == 0 and not low_ok):
        raise ScheduleError(f"{what} must be {'>= 0' if low_ok else '> 0'}, not {text}")
    if key in {"gamma", "factor"} and value > 1 and name != "cyclic":
        raise ScheduleError(f"{what} must be at most 1 (it multiplies the lr), not {text}")
    if key == "pct" and not value < 1:
        raise ScheduleError(f"{what} must be below 1, not {text}")
    return value


def _positive(text: str, what: str, allow_zero: bool = False) -> float:
    try:
        value = parse_float(text, what)
    except ValueError as e:
        raise ScheduleError(str(e)) from None
    if value < 0 or (value == 0 and not allow_zero):
        raise ScheduleError(f"{what} must be {'>= 0' if allow_zero else '> 0'}, not {text}")
    return value


def parse(text: str) -> ScheduleSpec:
    """Parse ``NAME numbers key=value...`` (or a bare number) into a spec; ScheduleError names the problem."""
    tokens = text.split()
    if not tokens:
        raise ScheduleError("empty learning rate: type a number like 0.03 or a schedule (help lists them)")
    warmup = 0
    rest = []
    for tok in tokens:
        if tok.startswith("warmup="):
            try:
                warmup = parse_int(tok[7:], "warmup")
            except ValueError as e:
                raise ScheduleError(str(e)) from None
            if warmup <= 0:
                raise ScheduleError(f"warmup must be > 0 epochs, not {tok[7:]}")
        else:
            rest.append(tok)
    if not rest:
        raise ScheduleError("warmup needs a schedule after it, e.g. warmup=5 cos 0.03")
    head = rest[0]
    if head[0].isdigit() or head[0] in ".+-" or head.lower().lstrip("+-") in {"nan", "inf", "infinity"}:
        if len(rest) > 1:
            raise ScheduleError(f"unexpected {rest[1]!r} after the learning rate {head}")
        return ScheduleSpec("const", (_positive(head, "learning rate"),), warmup=warmup)
    name = ALIASES.get(head.lower(), head.lower())
    if name not in FAMILIES:
        hint = difflib.get_close_matches(name, FAMILIES, n=1)
        raise ScheduleError(f"unknown schedule {head!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                            + f"; names: {', '.join(f for f in FAMILIES if f != 'const')}")
    family = FAMILIES[name]
    if name == "keep" and warmup:
        raise ScheduleError("keep continues the previous schedule; it takes no warmup")
    numbers, options, pieces = [], {}, []
    for tok in rest[1:]:
        if "=" in tok:
            key, _, value = tok.partition("=")
            if key not in family.options:
                known = ", ".join(family.options) or "none"
                raise ScheduleError(f"unknown option {key!r} for {name} (options: {known})")
            if key in options:
                raise ScheduleError(f"option {key!r} given twice")
            if not value:
                example = _opt(family.options[key] or 1)
                raise ScheduleError(f"option {key!r} for {name} needs a value, e.g. {key}={example}")
            options[key] = _option_value(name, key, value, family.options[key])
        elif name == "piecewise" and ":" in tok:
            lr_text, _, n_text = tok.partition(":")
            if numbers:
                raise ScheduleError(f"piecewise: {tok!r} comes after the final lr; write lr:epochs pieces first")
            try:
                n = parse_int(n_text, "piecewise epochs")
            except ValueError as e:
                raise ScheduleError(str(e)) from None
            if n <= 0:
                raise ScheduleError(f"piecewise epochs must be > 0 in {tok!r}")
            pieces.append((_positive(lr_text, "piecewise lr"), n))
        else:
            numbers.append(_positive(tok, f"{name} value", allow_zero=(name == "linear" and len(numbers) == 1)))
    if name == "piecewise":
        if len(numbers) != 1 or not pieces:
            raise ScheduleError("piecewise needs lr:epochs pieces and a final lr, e.g. piecewise 0.03:10 0.01:20 0.001")
    elif len(numbers) != len(family.positional):
        want = len(family.positional)
        what = f"{want} number{'s' if want != 1 else ''} ({', '.join(family.positional)})" if want else "no numbers"
        raise ScheduleError(f"{name} takes {what}, got {len(numbers)}; e.g. {family.example}")
    if name == "multistep" and "at" not in options:
        raise ScheduleError("multistep needs at=EPOCHS, e.g. multistep 0.03 at=10,25 gamma=0.1")
    if name == "cyclic" and numbers[0] >= numbers[1]:
        raise ScheduleError(f"cyclic needs lo < hi, got {_num(numbers[0])} and {_num(numbers[1])}")
    if name == "cos" and options.get("min", 0.0) >= numbers[0]:
        raise ScheduleError("cos: min must be below the starting lr")
    ordered = tuple((k, options[k]) for k in family.options if k in options)
    return ScheduleSpec(name, tuple(numbers), ordered, warmup, tuple(pieces))


def check_chunk(spec: ScheduleSpec, epochs: int, has_schedule: bool = True) -> None:
    """What a chunk of ``epochs`` epochs of ``spec`` cannot be (ScheduleError): ``keep`` with no schedule
    to keep, or a warm-up as long as the chunk. The one copy of these rules (prompt, plan, engine).

    >>> try:
    ...     check_chunk(parse("warmup=5 cos 0.03"), 5)
    ... except ScheduleError as e:
    ...     print(e)
    warmup=5 leaves none of the chunk's 5 epochs for cos
    """
    if spec.name == "keep" and not has_schedule:
        raise ScheduleError("nothing to keep yet: the run has no schedule; give a learning rate or a schedule first")
    if spec.warmup and spec.family.chunk_length and spec.warmup >= epochs:
        raise ScheduleError(f"warmup={spec.warmup} leaves none of the chunk's {epochs} epochs for {spec.name}")


def check_change(spec: ScheduleSpec) -> None:
    """An lr change to a running chunk (keys, socket, Python) must change something."""
    if spec.name == "keep":
        raise ScheduleError("keep is not a change; give a learning rate or a schedule")


def with_base(spec: ScheduleSpec, lr: float) -> ScheduleSpec:
    """The same schedule started from ``lr`` instead (every lr-valued number scaled alike)."""
    from dataclasses import replace

    base = spec.base_lr
    if spec.name == "keep" or base is None:
        return ScheduleSpec("const", (lr,))
    factor = lr / base
    options = tuple((k, v * factor if k == "min" else v) for k, v in spec.options)
    return replace(spec, args=tuple(a * factor for a in spec.args), options=options,
                   pieces=tuple((v * factor, n) for v, n in spec.pieces))


def help_text() -> str:
    """The grammar, for ``help`` at the prompt and the README."""
    lines = ["A learning rate is a number (0.03) or a schedule: NAME numbers key=value ...",
             "t and the schedule's clock start at 0 at the chunk's first epoch.", ""]
    for f in FAMILIES.values():
        lines.append(f"  {f.example:<40} {f.summary}")
    lines += ["  warmup=5 <any of the above>              linear warm-up over 5 epochs, then the schedule",
              "Cyclic modes: mode=triangular|triangular2|exp_range; onecycle: pct= div= final_div= anneal=cos|linear."]
    return "\n".join(lines)
