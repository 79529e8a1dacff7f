"""Loading user code named in a config: ``package.module:function`` or ``path/to/file.py:function``."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lrctl.config import ConfigError


def load_callable(spec: str, key: str) -> Callable[..., Any]:
    """Import the function ``spec`` names; ConfigError names ``key`` and what went wrong."""
    module_name, colon, function = spec.partition(":")
    if not colon or not module_name or not function:
        raise ConfigError(f"{key}: {spec!r} is not 'package.module:function' or 'file.py:function'")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.exists():
                raise ConfigError(f"{key}: {spec!r}: no such file {path}")
            name = f"lrctl_user_{abs(hash(str(path.resolve())))}"
            module_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))
            module = importlib.import_module(module_name)
    except ConfigError:
        raise
    except Exception as e:  # the user's module failed to import: say so, with its error
        raise ConfigError(f"{key}: {spec!r} does not import: {type(e).__name__}: {e}") from None
    fn = getattr(module, function, None)
    if not callable(fn):
        raise ConfigError(f"{key}: {spec!r}: module {module_name!r} has no function {function!r}")
    return fn
