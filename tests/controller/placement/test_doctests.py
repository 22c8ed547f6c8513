"""The runnable examples in the docstrings of the controller's pure modules: placement,
delay, wireless, library, the simulators and their sweep engine."""

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
    "controller.placement.arrays",
    "controller.sim",
    "controller.sweep",
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
