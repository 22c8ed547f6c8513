"""Delay minimisation (the second research system): PB caching, migration, CoMP broadcast.

Pure code beside :mod:`controller.placement`: the problem and result
(:mod:`controller.delay.problem`, ``trimcache.delay-problem/v1``), the one delay definition
(:func:`evaluate_delay` in :mod:`controller.delay.model`, written down in
``docs/delay-model.md``), the solvers and :data:`DELAY_SOLVERS`, which maps each public name to
``solve(problem, *, seed=None, time_limit_s=None) -> DelayResult`` (style P1/P4). ``marl``
imports torch only when it is called.

Example:
    >>> from controller.delay import DELAY_SOLVERS
    >>> from controller.delay.scenario import tiny_problem
    >>> p = tiny_problem(seed=0)
    >>> r = DELAY_SOLVERS["delay-greedy"](p)
    >>> r.delay == evaluate_delay(p, r.placement)
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Protocol

from controller.delay import solvers
from controller.delay.model import DelayInstance, evaluate_delay
from controller.delay.problem import (
    DELAY_PROBLEM_SCHEMA,
    DelayProblem,
    DelayResult,
    DelayStats,
    delay_problem_from_json,
    delay_problem_to_json,
    delay_result_to_json,
)
from controller.delay.solvers import InstanceTooLargeError
from controller.placement import lookup


class DelaySolver(Protocol):
    def __call__(
        self,
        problem: DelayProblem,
        *,
        seed: int | None = None,
        time_limit_s: float | None = None,
    ) -> DelayResult: ...


def _solve_marl(
    problem: DelayProblem, *, seed: int | None = None, time_limit_s: float | None = None
) -> DelayResult:
    from controller.delay import marl  # torch is imported only here

    return marl.solve(problem, seed=seed, time_limit_s=time_limit_s)


DELAY_SOLVERS: Mapping[str, DelaySolver] = MappingProxyType(
    {
        "coarse": solvers.solve_coarse,
        "fine-unicast": solvers.solve_fine_unicast,
        "trimcaching-gen": solvers.solve_trimcaching_gen,
        "delay-greedy": solvers.solve_delay_greedy,
        "marl": _solve_marl,
        "optimal": solvers.solve_optimal,
    }
)


def get_delay_solver(name: str) -> DelaySolver:
    """The delay solver registered as ``name``.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    return lookup(DELAY_SOLVERS, name, what="delay solver")


__all__ = [
    "DELAY_PROBLEM_SCHEMA",
    "DELAY_SOLVERS",
    "DelayInstance",
    "DelayProblem",
    "DelayResult",
    "DelaySolver",
    "DelayStats",
    "InstanceTooLargeError",
    "delay_problem_from_json",
    "delay_problem_to_json",
    "delay_result_to_json",
    "evaluate_delay",
    "get_delay_solver",
]
