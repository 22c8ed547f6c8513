"""Placement algorithms: which blocks each edge server holds (pure code, no I/O).

The problem, result, JSON formats and the one objective live in
:mod:`controller.placement.problem`. :data:`SOLVERS` maps each solver's public name to its
``solve(problem, *, seed=None, time_limit_s=None, current=None) -> PlacementResult`` function
(style P1/P4; ``current``, server id -> the blocks it holds now, warm-starts the solver so that
what is held wins ties); settings and the CLI choose solvers by these names, and the tests run
every invariant over every entry. Whether a re-plan is worth its moves is decided by
:func:`~controller.placement.replan.decide_replan`.

Example:
    >>> from controller.placement import SOLVERS, PlacementProblem
    >>> p = PlacementProblem(blocks={"b": 1}, models={"m": ["b"]}, servers={"s": 1},
    ...     requests={"u": {"m": 1.0}}, reachable={"u": {"s": ["m"]}})
    >>> SOLVERS["trimcaching-gen"](p).hit_ratio
    1.0
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from types import MappingProxyType
from typing import Protocol, TypeVar

from controller.placement import greedy, online, optimal, popularity, spec
from controller.placement.problem import (
    PROBLEM_SCHEMA,
    RESULT_SCHEMA,
    PlacementProblem,
    PlacementResult,
    ServerPlacement,
    Status,
    evaluate,
    make_result,
    problem_from_json,
    problem_to_json,
    result_from_json,
    result_to_json,
    used_bytes,
)
from controller.placement.replan import (
    Moves,
    ReplanDecision,
    decide_replan,
    invalid_reason,
    moved_bytes,
)
from controller.placement.spec import TooManySharedBlocksError

T = TypeVar("T")


class Solver(Protocol):
    def __call__(
        self,
        problem: PlacementProblem,
        *,
        seed: int | None = None,
        time_limit_s: float | None = None,
        current: Mapping[str, Collection[str]] | None = None,
    ) -> PlacementResult: ...


SOLVERS: Mapping[str, Solver] = MappingProxyType(
    {
        "trimcaching-spec": spec.solve,
        "trimcaching-gen": greedy.solve,
        "independent": greedy.solve_independent,
        "popularity": popularity.solve,
        "lru": online.solve_lru,
        "lfu": online.solve_lfu,
        "optimal": optimal.solve,
    }
)


def lookup(registry: Mapping[str, T], name: str, *, what: str = "solver") -> T:
    """The entry of a name -> solver registry (this one or the delay solvers').

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    try:
        return registry[name]
    except KeyError:
        raise ValueError(f"unknown {what} {name!r}; choose from {', '.join(registry)}") from None


def get_solver(name: str) -> Solver:
    """The solver registered as ``name``.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    return lookup(SOLVERS, name)


__all__ = [
    "PROBLEM_SCHEMA",
    "RESULT_SCHEMA",
    "SOLVERS",
    "Moves",
    "PlacementProblem",
    "PlacementResult",
    "ReplanDecision",
    "ServerPlacement",
    "Solver",
    "Status",
    "TooManySharedBlocksError",
    "decide_replan",
    "evaluate",
    "get_solver",
    "invalid_reason",
    "lookup",
    "make_result",
    "moved_bytes",
    "problem_from_json",
    "problem_to_json",
    "result_from_json",
    "result_to_json",
    "used_bytes",
]
