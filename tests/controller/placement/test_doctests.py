"""The runnable examples in the placement, wireless, library and simulator docstrings."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "controller.placement",
    "controller.placement.problem",
    "controller.placement.greedy",
    "controller.placement.spec",
    "controller.placement.popularity",
    "controller.placement.online",
    "controller.placement.optimal",
    "controller.placement.replan",
    "controller.library",
    "controller.wireless",
    "controller.sim",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
