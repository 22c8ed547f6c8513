"""The runnable examples in the delay package's docstrings."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "controller.delay",
    "controller.delay.problem",
    "controller.delay.model",
    "controller.delay.solvers",
    "controller.delay.scenario",
    "controller.delay.sim",
    "controller.delay.marl",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted > 0
