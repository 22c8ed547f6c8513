"""Array-backed problems (10k-model scale) are the same problems as their dict twins.

The same scenario and seed built both ways must give equal request and reachable tables, the
same greedy placements block for block (not just close hit ratios: the threshold layout sums
the same floats as the CSR), the same :func:`evaluate`, and bad arrays must be refused at
construction.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from controller.placement import SOLVERS, evaluate, greedy
from controller.placement.arrays import ArrayForm
from controller.placement.problem import PlacementProblem, PlacementResult
from controller.sim import Scenario, make_problem

SCENARIOS = [
    (Scenario(n_servers=4, n_users=12, models_per_family=2, capacity_gb=0.2), 0),
    (Scenario(n_servers=6, n_users=25, models_per_family=3, capacity_gb=0.6), 9),
    (Scenario(n_servers=8, n_users=26, models_per_family=4, capacity_gb=0.4), 14),
    (Scenario(n_servers=9, n_users=40, models_per_family=5, sharing=0.9, capacity_gb=0.8), 3),
]


@pytest.fixture(params=SCENARIOS, ids=lambda p: f"seed{p[1]}")
def twins(request):
    scenario, seed = request.param
    return make_problem(scenario, seed=seed), make_problem(scenario, seed=seed, arrays=True)


def _blocks(result: PlacementResult) -> dict[str, tuple[str, ...]]:
    return {s: p.blocks for s, p in result.servers.items()}


def test_views_equal_the_dict_tables(twins):
    plain, arrays = twins
    assert arrays.arrays is not None and plain.arrays is None
    assert {u: dict(row) for u, row in arrays.requests.items()} == {
        u: dict(row) for u, row in plain.requests.items()
    }
    # Same servers in the same (nearest first) order, same model sets.
    assert [list(row) for row in arrays.reachable.values()] == [
        list(row) for row in plain.reachable.values()
    ]
    for user_id, row in plain.reachable.items():
        for server_id, models in row.items():
            view = arrays.reachable[user_id][server_id]
            assert frozenset(view) == models and len(view) == len(models)
            assert all(m in view for m in models)
            assert not any(m in view for m in set(plain.models) - models)


@pytest.mark.parametrize("solve", [greedy.solve, greedy.solve_independent])
def test_greedy_places_the_same_blocks(twins, solve):
    plain, arrays = twins
    expected, got = solve(plain), solve(arrays)
    assert _blocks(got) == _blocks(expected)
    assert got.hit_ratio == expected.hit_ratio
    assert got.hit_ratio == evaluate(arrays, got.blocks_by_server())
    assert evaluate(arrays, expected.blocks_by_server()) == evaluate(
        plain, expected.blocks_by_server()
    )


def test_warm_start_is_the_same_too(twins):
    plain, arrays = twins
    cold = greedy.solve(plain)
    current = {s: p.blocks[: len(p.blocks) // 2] for s, p in cold.servers.items()}
    assert _blocks(greedy.solve(arrays, current=current)) == _blocks(
        greedy.solve(plain, current=current)
    )


@pytest.mark.parametrize("name", ["popularity", "lru", "optimal"])
def test_other_solvers_read_the_views(twins, name):
    plain, arrays = twins
    a = SOLVERS[name](arrays, seed=0, time_limit_s=30)
    b = SOLVERS[name](plain, seed=0, time_limit_s=30)
    assert a.hit_ratio == pytest.approx(b.hit_ratio, abs=1e-9)
    assert a.hit_ratio == evaluate(arrays, a.blocks_by_server())


def _form(**change: Any) -> ArrayForm:
    base = {
        "user_ids": ("u0", "u1"),
        "prob": np.array([[0.5, 0.5], [0.2, 0.0]]),
        "seconds_per_byte": np.array([[1.0, np.inf], [2.0, 0.5]]),
        "budget": np.array([1.5, 3.0]),
    }
    return ArrayForm(**{**base, **change})


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"prob": np.array([[0.5, 0.6], [0.2, 0.0]])}, "sum to"),
        ({"prob": np.array([[0.5, -0.1], [0.2, 0.0]])}, "must be in [0, 1]"),
        ({"prob": np.array([[0.5, np.nan], [0.2, 0.0]])}, "must be in [0, 1]"),
        ({"prob": np.zeros((3, 2))}, "prob must be (users, models)"),
        ({"budget": np.array([1.0, 0.0])}, "budget must be > 0"),
        ({"budget": np.array([1.0])}, "budget must be (models,)"),
        ({"seconds_per_byte": np.array([[1.0, np.nan], [2.0, 0.5]])}, "seconds_per_byte"),
        ({"user_ids": ("u0", "u0")}, "duplicate user ids"),
    ],
)
def test_bad_arrays_are_refused(change, needle):
    with pytest.raises(ValueError) as err:
        _form(**change)
    assert needle in str(err.value)


def test_arrays_must_match_the_tables():
    form = _form()
    ok = PlacementProblem.from_arrays(
        blocks={"b": 1}, models={"m0": ["b"], "m1": ["b"]}, servers={"s0": 1, "s1": 1}, arrays=form
    )
    assert dict(ok.requests["u1"]) == {"m0": 0.2, "m1": 0.0}
    assert {s: sorted(ms) for s, ms in ok.reachable["u1"].items()} == {
        "s1": ["m0", "m1"],
        "s0": ["m1"],
    }
    assert form.prob.flags.writeable is False
    with pytest.raises(ValueError, match="shapes do not match"):
        PlacementProblem.from_arrays(
            blocks={"b": 1}, models={"m0": ["b"]}, servers={"s0": 1, "s1": 1}, arrays=form
        )
    with pytest.raises(ValueError, match="shapes do not match"):
        dataclasses.replace(ok, servers={"s0": 1})
