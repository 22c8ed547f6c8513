"""The ``>>>`` examples in core's docstrings run and pass."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import core

MODULES = sorted(m.name for m in pkgutil.iter_modules(core.__path__, "core."))


def test_every_core_module_is_listed() -> None:
    assert {"core.blocks", "core.digest", "core.manifest", "core.safetensors", "core.store"} <= set(
        MODULES
    )


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
