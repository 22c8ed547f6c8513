"""Stable placement: the keep/replace decision and the solvers' warm start (pure)."""

from __future__ import annotations

import pytest

from controller.placement import (
    SOLVERS,
    PlacementProblem,
    decide_replan,
    evaluate,
    invalid_reason,
    make_result,
    moved_bytes,
    used_bytes,
)
from tests.controller.placement.instances import tiny_problem

MIB = 2**20


def two_servers() -> PlacementProblem:
    """Two servers that each fit one of two equally sized models; one user reaches both."""
    return PlacementProblem(
        blocks={"a": 4 * MIB, "b": 4 * MIB},
        models={"m0": ["a"], "m1": ["b"]},
        servers={"s0": 4 * MIB, "s1": 4 * MIB},
        requests={"u": {"m0": 0.5, "m1": 0.4}},
        reachable={"u": {"s0": ["m0", "m1"], "s1": ["m0", "m1"]}},
    )


def single_server(p_m0: float) -> PlacementProblem:
    """One server that fits one of two models: the model held decides the hit ratio."""
    return PlacementProblem(
        blocks={"a": 4 * MIB, "b": 4 * MIB},
        models={"m0": ["a"], "m1": ["b"]},
        servers={"s0": 4 * MIB},
        requests={"u": {"m0": p_m0, "m1": 1.0 - p_m0}},
        reachable={"u": {"s0": ["m0", "m1"]}},
    )


def test_small_gain_keeps_large_gain_replaces() -> None:
    current = {"s0": frozenset({"b"})}  # holds m1
    # gain = p_m0 - (1 - p_m0)
    for p_m0, replace in ((0.505, False), (0.51, False), (0.52, True), (0.9, True)):
        problem = single_server(p_m0)
        candidate = make_result(problem, {"s0": ["a"]}, solver="x")
        decision = decide_replan(problem, current, [candidate], min_gain=0.03)
        assert decision.replace is replace, p_m0
        # Gains are differences of the one objective.
        assert decision.current_hit_ratio == evaluate(problem, current)
        assert decision.gain == pytest.approx(candidate.hit_ratio - evaluate(problem, current))
        assert decision.moves.total == 4 * MIB and decision.moves.from_origin == 4 * MIB
        assert decision.chosen is candidate
        assert ("<= min gain" in decision.reason) is not replace


def test_move_cost_counts_against_the_gain() -> None:
    problem = single_server(0.6)  # gain 0.2 for moving 4 MiB
    current = {"s0": frozenset({"b"})}
    candidate = make_result(problem, {"s0": ["a"]}, solver="x")
    cheap = decide_replan(problem, current, [candidate], min_gain=0.01, move_cost_per_gib=1.0)
    assert cheap.replace and cheap.net_gain == pytest.approx(0.2 - 4 / 1024)
    dear = decide_replan(problem, current, [candidate], min_gain=0.01, move_cost_per_gib=60.0)
    assert not dear.replace and dear.net_gain < 0.01


def test_invalid_current_is_always_replaced() -> None:
    problem = single_server(0.5)
    candidate = make_result(problem, {"s0": ["a"]}, solver="x")
    gone = {"s0": frozenset({"b"}), "s-dead": frozenset({"a"})}
    cases = {
        "server s-dead left": gone,
        "server s0 joined": {},
        "server s0 holds 8388608 bytes > capacity 4194304": {"s0": frozenset({"a", "b"})},
        "server s0 holds block zz, no longer in the problem": {"s0": frozenset({"zz"})},
    }
    for reason, current in cases.items():
        assert invalid_reason(problem, current) == reason
        decision = decide_replan(problem, current, [candidate], min_gain=0.5)
        assert decision.replace and decision.invalid == reason and decision.gain is None
    # A reason only the caller knows (a model left the catalogue) replaces a valid current.
    valid = {"s0": frozenset({"b"})}
    assert invalid_reason(problem, valid) is None
    assert not decide_replan(problem, valid, [candidate], min_gain=0.5).replace
    forced = decide_replan(problem, valid, [candidate], min_gain=0.5, invalid="model m9 left")
    assert forced.replace and forced.reason == "current placement invalid: model m9 left"
    # A dead server's blocks cannot be migrated from: they come from the origin.
    assert moved_bytes(problem, gone, {"s0": ["a"]}).from_origin == 4 * MIB


def test_equal_candidates_prefer_fewer_moves_and_same_as_current_is_kept() -> None:
    problem = single_server(0.5)
    current = {"s0": frozenset({"b"})}
    moving = make_result(problem, {"s0": ["a"]}, solver="cold")
    staying = make_result(problem, {"s0": ["b"]}, solver="warm")
    decision = decide_replan(problem, current, [moving, staying], min_gain=0.0)
    assert decision.chosen is staying and not decision.replace
    assert decision.moves.total == 0


def test_moved_bytes_counts_one_origin_fetch_per_block() -> None:
    problem = two_servers()
    moves = moved_bytes(problem, {"s0": [], "s1": ["a"]}, {"s0": ["a", "b"], "s1": ["a", "b"]})
    # s0 migrates a from s1; b is new everywhere: once from the origin, then from a peer.
    assert moves.from_origin == 4 * MIB and moves.from_peers == 8 * MIB


def tie_problem() -> PlacementProblem:
    """Two models exactly as good as each other; the server fits one."""
    return PlacementProblem(
        blocks={"a": 5, "b": 5},
        models={"m0": ["a"], "m1": ["b"]},
        servers={"s0": 5},
        requests={"u": {"m0": 0.5, "m1": 0.5}},
        reachable={"u": {"s0": ["m0", "m1"]}},
    )


TIE_BREAKERS = ["trimcaching-gen", "independent", "popularity", "trimcaching-spec"]


@pytest.mark.parametrize("name", TIE_BREAKERS)
def test_warm_start_breaks_ties_toward_what_is_held(name: str) -> None:
    problem = tie_problem()
    solve = SOLVERS[name]
    cold = solve(problem).servers["s0"].models
    other = "m1" if cold == ("m0",) else "m0"
    held = {"s0": frozenset(problem.models[other])}
    warm = solve(problem, current=held)
    assert warm.servers["s0"].models == (other,)
    assert warm.hit_ratio == solve(problem).hit_ratio


@pytest.mark.parametrize("name", list(SOLVERS))
def test_warm_started_results_are_valid(name: str) -> None:
    solve = SOLVERS[name]
    for seed in range(4):
        problem = tiny_problem(seed)
        current = SOLVERS["popularity"](problem).blocks_by_server()
        result = solve(problem, seed=1, current=current)
        placement = result.blocks_by_server()
        assert result.hit_ratio == evaluate(problem, placement)
        for server_id, used in used_bytes(problem, placement).items():
            assert used <= problem.servers[server_id]


def test_greedy_warm_start_never_loses_against_what_is_held() -> None:
    # (Not `independent`: blind to sharing, it cannot see that what is held fits.)
    solve = SOLVERS["trimcaching-gen"]
    for seed in range(6):
        problem = tiny_problem(seed)
        for start in ("popularity", "lru"):
            current = SOLVERS[start](problem).blocks_by_server()
            warm = solve(problem, current=current)
            assert warm.hit_ratio >= evaluate(problem, current) - 1e-12, (seed, start)
        # Warm-started from its own answer, nothing moves.
        own = solve(problem).blocks_by_server()
        again = solve(problem, current=own)
        assert moved_bytes(problem, own, again.blocks_by_server()).total == 0, seed
