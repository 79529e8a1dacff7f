"""Whether ``train.device`` names a device this machine's torch can use.

``lrctl.config`` checks the device's spelling without torch; whether a CUDA or MPS device is actually
there depends on the machine (a run created on a GPU box may be resumed on a laptop), so it is checked
here, before the run directory is created, with a message that names the key and the fix:

>>> device_problem("cpu") is None
True

torch is imported only for a device other than cpu/auto, whose users pay for that import anyway;
the default (cpu) keeps the first prompt instant.
"""

from __future__ import annotations

from typing import Any

from lrctl.config import ConfigError


def device_problem(name: str) -> str | None:
    """Why ``name`` cannot be used on this machine, naming the key; None if it can."""
    if name in ("cpu", "auto"):
        return None  # always there ("auto" falls back to the CPU)
    import torch

    fix = "use --set train.device=cpu (or auto)"
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            return f"train.device: 'mps' but this machine's torch has no MPS device; {fix}"
        return None
    if not name.startswith("cuda"):
        return None  # config.validate refuses other spellings
    if torch.version.cuda is None:
        return f"train.device: {name!r} but this torch ({torch.__version__}) is built without CUDA; {fix}"
    count = torch.cuda.device_count()
    if count == 0:
        return f"train.device: {name!r} but no CUDA device is visible (CUDA_VISIBLE_DEVICES?); {fix}"
    index = int(name[5:]) if name.startswith("cuda:") else 0
    if index >= count:
        visible = ", ".join(f"cuda:{i}" for i in range(count))
        return f"train.device: {name!r} but this machine has {count} CUDA device(s): {visible}"
    return None


def check_device(name: str) -> None:
    """Raise ConfigError if ``name`` is not a device this machine offers."""
    problem = device_problem(name)
    if problem is not None:
        raise ConfigError(problem)


def resolve_device(name: str) -> Any:
    """The torch.device for ``train.device`` (``auto``: CUDA when there is one), or a ConfigError naming
    the key (not torch's AssertionError)."""
    import torch

    check_device(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
