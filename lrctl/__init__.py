"""lrctl: an interactive terminal trainer for tuning the learning rate of a PyTorch model by hand.

``lrctl.Run`` is the same trainer from Python and Jupyter (:mod:`lrctl.api`); it is imported on first
use, so ``import lrctl`` stays cheap (no torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Run", "__version__"]

if TYPE_CHECKING:
    from lrctl.api import Run


def __getattr__(name: str) -> Any:
    if name == "Run":
        from lrctl.api import Run

        return Run
    raise AttributeError(f"module 'lrctl' has no attribute {name!r}")
