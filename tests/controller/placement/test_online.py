"""Golden values for the online caches (style P8) and trace sampling.

Regenerate deliberately and review the diff:
    .venv/bin/python -m tests.controller.placement.test_online --print-golden
"""

from __future__ import annotations

import sys

import pytest

from controller.placement import PlacementProblem, evaluate
from controller.placement.online import POLICIES, replay, sample_trace

# base is shared by m0 and m1; m2 is separate. m0 + m1 take 6 bytes (not 10), m2 takes 3.
GOLDEN_PROBLEM = PlacementProblem(
    blocks={"base": 4, "h0": 1, "h1": 1, "x": 3},
    models={"m0": ["base", "h0"], "m1": ["base", "h1"], "m2": ["x"]},
    servers={"s0": 8},
    requests={"u0": {"m0": 0.5, "m1": 0.3, "m2": 0.2}},
    reachable={"u0": {"s0": ["m0", "m1", "m2"]}},
)
GOLDEN_TRACE = [("u0", m) for m in ("m0", "m0", "m0", "m1", "m2", "m0", "m1")]

# policy -> (hits, final blocks of s0), worked out by hand:
# lru: m2 evicts m0 (oldest), then m0 evicts m1, then m1 evicts m2  -> hits at t2, t3.
# lfu: m2 evicts m1 (count 1 < 3), m0 hits, m1 evicts m2 (count 1) -> hits at t2, t3, t6.
GOLDEN = {
    "lru": (2, ("base", "h0", "h1")),
    "lfu": (3, ("base", "h0", "h1")),
}


def _golden() -> dict[str, tuple[int, tuple[str, ...]]]:
    out = {}
    for policy in POLICIES:
        result = replay(GOLDEN_PROBLEM, GOLDEN_TRACE, policy=policy)
        out[policy] = (result.hits, tuple(sorted(result.placement["s0"])))
    return out


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_golden(policy):
    assert _golden()[policy] == GOLDEN[policy]


def test_replay_respects_capacity_and_reports_final_contents():
    for policy in POLICIES:
        result = replay(GOLDEN_PROBLEM, GOLDEN_TRACE, policy=policy)
        assert GOLDEN_PROBLEM.storage_bytes(result.placement["s0"]) <= 8
        assert result.requests == len(GOLDEN_TRACE)
        assert 0 <= result.trace_hit_ratio <= 1
        assert evaluate(GOLDEN_PROBLEM, result.placement) == pytest.approx(0.8)


def test_replay_rejects_unknown_entries():
    with pytest.raises(ValueError, match="unknown policy 'fifo'"):
        replay(GOLDEN_PROBLEM, GOLDEN_TRACE, policy="fifo")
    with pytest.raises(ValueError, match="unknown model 'zz'"):
        replay(GOLDEN_PROBLEM, [("u0", "zz")], policy="lru")


def test_sample_trace_is_seeded_and_follows_the_rows():
    a = sample_trace(GOLDEN_PROBLEM, length=4000, seed=7)
    assert a == sample_trace(GOLDEN_PROBLEM, length=4000, seed=7)
    assert a != sample_trace(GOLDEN_PROBLEM, length=4000, seed=8)
    share = sum(1 for _, m in a if m == "m0") / len(a)
    assert share == pytest.approx(0.5, abs=0.03)
    half = PlacementProblem(
        blocks={"b": 1}, models={"m": ["b"]}, servers={}, requests={"u": {"m": 0.5}}
    )
    assert len(sample_trace(half, length=4000, seed=0)) == pytest.approx(2000, abs=150)


if __name__ == "__main__" and "--print-golden" in sys.argv:
    sys.stdout.write(f"GOLDEN = {_golden()!r}\n")
