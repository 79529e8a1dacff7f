"""Strict parsing of numbers typed by a person: ASCII decimal or scientific notation only.

Python's ``float()`` accepts ``nan``, ``inf``, ``1_0`` and full-width digits, and turns ``1e400``
into ``inf``; none of those is a learning rate anyone meant to type.
"""

from __future__ import annotations

import math
import re

_FLOAT = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_INT = re.compile(r"[+-]?\d+", re.ASCII)


def parse_float(text: str, what: str = "value") -> float:
    """A finite float from strict ASCII text, or ValueError saying why not."""
    text = text.strip()
    if not _FLOAT.fullmatch(text):
        lowered = text.lower().lstrip("+-")
        if lowered in {"nan", "inf", "infinity"}:
            raise ValueError(f"{what} must be a finite number, not {text!r}")
        raise ValueError(f"{what} must be a number like 0.03 or 3e-2, not {text!r}")
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{what} {text!r} is too large")
    return value


def parse_int(text: str, what: str = "value") -> int:
    """An int from strict ASCII digits, or ValueError saying why not."""
    text = text.strip()
    if not _INT.fullmatch(text):
        raise ValueError(f"{what} must be a whole number like 30, not {text!r}")
    return int(text)
