"""Invariants of every delay solver (the registry) on small random instances."""

from __future__ import annotations

import itertools
import math

import pytest

from controller.delay import DELAY_SOLVERS, evaluate_delay
from controller.delay.scenario import DelayScenario, make_delay_problem, tiny_problem
from controller.delay.solvers import InstanceTooLargeError, solve_optimal

TINY_SEEDS = range(6)
# marl has its own tests (test_marl.py); its training budget is too large for this sweep.
CLASSICAL = [name for name in DELAY_SOLVERS if name != "marl"]


@pytest.fixture(scope="module")
def tiny_problems():
    return [tiny_problem(seed=s) for s in TINY_SEEDS]


@pytest.mark.parametrize("name", CLASSICAL)
def test_capacity_and_reported_delay(name, tiny_problems):
    medium = make_delay_problem(DelayScenario(n_servers=3, n_users=8, n_slots=3), seed=1)
    problems = [*tiny_problems, medium] if name != "optimal" else tiny_problems
    for p in problems:
        r = DELAY_SOLVERS[name](p, seed=0)
        assert r.solver == name
        for node_id, held in r.placement.items():
            used = p.storage_bytes(held, r.granularity)
            assert used <= p.servers[node_id].capacity
            assert r.servers[node_id].used_bytes == used
        again = evaluate_delay(p, r.placement, granularity=r.granularity, delivery=r.delivery)
        assert r.delay == again


@pytest.mark.parametrize("name", CLASSICAL)
def test_optimal_under_the_same_rules_is_no_worse(name, tiny_problems):
    for p in tiny_problems:
        r = DELAY_SOLVERS[name](p, seed=0)
        best = solve_optimal(p, granularity=r.granularity, delivery=r.delivery)
        assert best.status == "optimal"
        assert best.delay.mean_s <= r.delay.mean_s + 1e-12


def test_greedy_beats_an_empty_cache_and_caching_is_used(tiny_problems):
    for p in tiny_problems:
        r = DELAY_SOLVERS["delay-greedy"](p)
        assert r.delay.mean_s < evaluate_delay(p, {}).mean_s
        assert any(r.placement.values())


def test_optimal_refuses_large_instances():
    p = make_delay_problem(DelayScenario(n_servers=4, n_users=6), seed=0)
    with pytest.raises(InstanceTooLargeError, match="optimal: more than"):
        solve_optimal(p)


def test_solvers_are_deterministic(tiny_problems):
    for name in CLASSICAL:
        a = DELAY_SOLVERS[name](tiny_problems[0], seed=3)
        b = DELAY_SOLVERS[name](tiny_problems[0], seed=3)
        assert a.placement == b.placement and a.delay == b.delay


def test_sweep_rows_round_trip_through_csv(tmp_path):
    from controller.delay import sim

    base = DelayScenario(n_servers=2, n_users=4, models_per_family=1, n_slots=2)
    rows = sim.run_delay_sweep(
        "capacity", values=[0.1, 0.5], base=base, solvers=["coarse", "delay-greedy", "optimal"]
    )
    assert {r.status for r in rows if r.solver == "optimal"} <= {"optimal", "skipped"}
    sim.write_csv(rows, tmp_path / "rows.csv")
    again = sim.read_csv(tmp_path / "rows.csv")
    assert [(r.solver, r.value, r.status) for r in again] == [
        (r.solver, r.value, r.status) for r in rows
    ]
    finite = [
        (a.mean_s, b.mean_s) for a, b in zip(rows, again, strict=True) if b.status != "skipped"
    ]
    assert all(a == b for a, b in finite)
    red = sim.reduction_vs(rows, "coarse")
    for value, x in red["delay-greedy"].items():
        pair = {r.solver: r.mean_s for r in rows if r.value == value}
        assert x == pytest.approx(1 - pair["delay-greedy"] / pair["coarse"])


def test_optimal_is_the_brute_force_minimum_of_evaluate_delay():
    # Three nodes 250 m apart: users near s0 are out of s2's range, so the memoised
    # projections of optimal are shared by many placements; the minimum must not change.
    for seed in range(3):
        p = tiny_problem(seed=seed, n_servers=3)
        units = sorted({b for slot in p.slots for m in slot.values() for b in p.models[m]})
        options = [
            [
                c
                for k in range(len(units) + 1)
                for c in itertools.combinations(units, k)
                if p.storage_bytes(c, "block") <= p.servers[n].capacity
            ]
            for n in p.servers
        ]
        brute = min(
            evaluate_delay(p, dict(zip(p.servers, combo, strict=True))).mean_s
            for combo in itertools.product(*options)
        )
        r = solve_optimal(p)
        assert r.status == "optimal"
        assert r.delay.mean_s == brute
        assert r.info["evaluated"] == math.prod(len(o) for o in options)
