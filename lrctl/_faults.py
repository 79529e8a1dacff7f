"""Fault injection for the durable writes: every write, fsync and rename of a run's files passes here.

Production code calls :func:`point` before each durable step; it does nothing unless a test has
installed a hook (the lifecycle simulation test raises a simulated ``kill -9`` at a random point).
"""

from __future__ import annotations

from collections.abc import Callable

_hook: Callable[[str], None] | None = None


def point(name: str) -> None:
    """A durable write is about to happen (``name``: e.g. 'rename checkpoint.pt', 'fsync journal')."""
    if _hook is not None:
        _hook(name)


def install(hook: Callable[[str], None] | None) -> None:
    """Set (or with None, remove) the hook called at every durable write point."""
    global _hook
    _hook = hook
