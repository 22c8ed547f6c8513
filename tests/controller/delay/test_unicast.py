"""The incremental unicast delay (controller.delay.unicast) against the reference evaluator.

UnicastDelay is the default evaluator of ``coarse`` and ``fine-unicast``: its gains move whole
users in the shortest-user-first order and shift everyone else piecewise, so here they are
checked against the reference ``slot_delays`` (solvers._Evaluator) through sequences of adds,
its evaluate against evaluate_delay request by request, and the greedy's placements against
the VectorDelay and reference evaluators' on random instances (the recorded golden placements
are in test_vector.py, parametrised over every evaluator). One instance is built so that
users tie on their summed airtime and a user's jobs differ in prep, to pin the tie rule.
"""

from __future__ import annotations

import random

import pytest

from controller.delay import evaluate_delay, incremental
from controller.delay.model import DelayInstance
from controller.delay.problem import Channel, DelayProblem
from controller.delay.scenario import scaled_delay_problem, tiny_problem
from controller.delay.solvers import _Evaluator, solve_coarse, solve_fine_unicast
from controller.delay.unicast import UnicastDelay, incremental_delay
from controller.delay.vector import VectorDelay
from tests.controller.delay.test_incremental import _grown, _problems

RTOL = 1e-12


def _tied_problem() -> DelayProblem:
    """Users in mirror positions (equal channels, so equal summed airtime) with ids whose
    order differs from the request order, and a three-PB model one PB of which is cached."""
    return DelayProblem(
        blocks={"b0": 4_000_000, "b1": 2_000_000, "b2": 3_000_000, "b3": 1_000_000},
        models={"m0": ["b0", "b1", "b2"], "m1": ["b1", "b3"], "m2": ["b3"]},
        servers={
            "s0": {"capacity": 5_000_000, "position": [0, 0]},
            "s1": {"capacity": 5_000_000, "position": [300, 0]},
        },
        users={
            "u9": [40, 30],
            "u10": [40, -30],
            "u2": [-40, 30],
            "u11": [260, 30],
            "u3": [340, -30],
        },
        channel=Channel(),
        backhaul_bytes_per_s=2e6,
        migration_bytes_per_s=2e7,
        slots=[
            {"u9": "m0", "u10": "m0", "u2": "m1", "u11": "m2", "u3": "m2"},
            {"u10": "m1", "u9": "m1", "u3": "m0", "u11": "m0", "u2": "m2"},
        ],
    )


def _all_problems() -> list[DelayProblem]:
    return [_tied_problem(), *_problems()]


def _close(a: float, b: float, scale: float) -> bool:
    return abs(a - b) <= RTOL * scale


@pytest.mark.parametrize("granularity", ["block", "model"])
@pytest.mark.parametrize("csi", [0.0, 0.3])
@pytest.mark.parametrize("wide", [incremental.WIDE_ENTRY_USERS, 2])
def test_gains_and_slot_sums_agree_with_the_reference_through_adds(
    granularity, csi, wide, monkeypatch
):
    # wide=2: nearly every entry is wide, so the shared base states and the per-node job
    # differences (UnicastDelay._base, _diff) and their invalidation on adds are exercised
    monkeypatch.setattr(incremental, "WIDE_ENTRY_USERS", wide)
    for k, p in enumerate(_all_problems()):
        instance = DelayInstance(p, granularity=granularity, csi_error_var=csi)
        ref, inc = _Evaluator(instance, "unicast"), UnicastDelay(instance)
        scale = sum(ref.slot_sum)
        for a, b in zip(ref.slot_sum, inc.slot_sum, strict=True):
            assert _close(a, b, scale)
        rng = random.Random(k)
        units = [u for u in instance.unit_bytes if u in instance.slots_of_unit]
        nodes = list(instance.nodes)
        for _ in range(6):
            candidate = rng.sample(units, k=rng.randint(1, min(3, len(units))))
            want = ref.gains(nodes, candidate)
            got = inc.gains(nodes, candidate)
            for x, y in zip(got, want, strict=True):
                assert _close(x, y, scale), (k, candidate, x, y)
            node, unit = rng.choice(nodes), rng.choice(units)
            ref.add(node, unit)
            inc.add(node, unit)
            for a, b in zip(ref.slot_sum, inc.slot_sum, strict=True):
                assert _close(a, b, scale)
        assert inc.fast_rows > 0
        if wide == 2 and granularity == "block":
            assert inc._diff_cache or inc._entry_cache


@pytest.mark.parametrize("granularity", ["block", "model"])
def test_evaluate_agrees_with_evaluate_delay(granularity):
    for k, p in enumerate(_all_problems()):
        instance = DelayInstance(p, granularity=granularity)
        inc = UnicastDelay(instance)
        rng = random.Random(k)
        units = list(instance.unit_bytes)
        for _ in range(3):
            placement = {
                n: rng.sample(units, k=rng.randint(0, min(4, len(units)))) for n in instance.nodes
            }
            want = evaluate_delay(p, placement, granularity=granularity, delivery="unicast")
            got = inc.evaluate(placement)
            assert len(got.request_delays_s) == len(want.request_delays_s)
            for x, y in zip(got.request_delays_s, want.request_delays_s, strict=True):
                assert abs(x - y) <= RTOL * max(abs(y), 1e-300)
            for name in ("mean_s", "p95_s", "makespan_s"):
                assert getattr(got, name) == pytest.approx(getattr(want, name), rel=RTOL)


def test_the_tied_instance_has_ties_and_mixed_preps():
    """The tie instance exercises what it is for: equal rounded summed airtimes in a slot, and
    one user whose jobs have different preps."""
    p = _tied_problem()
    instance = DelayInstance(p)
    inc = UnicastDelay(instance)
    inc.add("s0", "b1")
    keys = inc.schedules[0].key
    assert len(set(keys.tolist())) < len(keys)
    prep = inc._pprep[0][:-1]
    assert {0.0} < set(prep.tolist())


@pytest.mark.parametrize("solve", [solve_coarse, solve_fine_unicast])
def test_greedy_placements_equal_the_vector_and_reference_evaluators(solve):
    problems = [_tied_problem()] + [tiny_problem(seed=s, n_blocks=4 + s % 2) for s in range(6)]
    problems += [_grown(0, 1), _grown(2, 2, cluster_size=3)]
    for p in problems:
        inc = solve(p, evaluator="incremental")
        for other in ("vector", "reference"):
            r = solve(p, evaluator=other)
            assert dict(r.placement) == dict(inc.placement), other
            assert r.delay == inc.delay
    # larger: the vector evaluator only (the reference one is slow there)
    for p in [_grown(1, 3), _grown(3, 3, capacity_gb=1.0)]:
        inc, vec = solve(p, evaluator="incremental"), solve(p, evaluator="vector")
        assert dict(vec.placement) == dict(inc.placement)


def test_incremental_delay_picks_the_class_of_the_delivery():
    instance = DelayInstance(scaled_delay_problem(40, 8, 60, capacity_gb=0.5, seed=3))
    assert type(incremental_delay(instance, "unicast")) is UnicastDelay
    vec = VectorDelay(instance, "unicast")
    inc = incremental_delay(instance, "unicast")
    scale = sum(vec.slot_sum)
    for a, b in zip(vec.slot_sum, inc.slot_sum, strict=True):
        assert _close(a, b, scale)
