"""The ``>>>`` examples in lrctl's docstrings run, and say what they show."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

import lrctl

# Every module but the entry point (importing it runs lrctl).
MODULES = sorted(m.name for m in pkgutil.iter_modules(lrctl.__path__, "lrctl.") if m.name != "lrctl.__main__")


def test_the_modules_with_examples_are_found():
    assert {"lrctl.plan", "lrctl.savetiming", "lrctl.runlogs", "lrctl.stopping"} <= set(MODULES)
    assert "lrctl.session" in MODULES and "lrctl.__main__" not in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an example that writes a file writes it here
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, report=False,
                             verbose=False)
    if ">>> " in Path(module.__file__).read_text():  # every example written is one doctest finds and runs
        assert result.attempted > 0, f"{name} has >>> examples that doctest does not find"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (run: python -m " \
                               f"doctest -v {module.__file__})"
