"""Problem validation, JSON formats and the objective."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from controller.placement import (
    PROBLEM_SCHEMA,
    RESULT_SCHEMA,
    PlacementProblem,
    evaluate,
    make_result,
    problem_from_json,
    problem_to_json,
    result_from_json,
    result_to_json,
)

DESIGN_EXAMPLE: dict[str, Any] = {
    "schema": "trimcache.placement-problem/v1",
    "blocks": {"b0": 1048576, "b1": 524288},
    "models": {"m0": ["b0"], "m1": ["b0", "b1"]},
    "servers": {"s0": 2000000},
    "requests": {"u0": {"m0": 0.6, "m1": 0.4}},
    "reachable": {"u0": {"s0": ["m0", "m1"]}},
}


def _mutate(path: tuple[str, ...], value: object) -> dict[str, Any]:
    doc: dict[str, Any] = copy.deepcopy(DESIGN_EXAMPLE)
    target: Any = doc
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("blocks", "b1"), -1, "block 'b1'"),
        (("blocks", "b1"), 1.5, "block 'b1'"),
        (("blocks", "b1"), "7", "block 'b1'"),
        (("blocks", "b1"), True, "block 'b1'"),
        (("models", "m1"), ["b0", "nope"], "unknown block 'nope'"),
        (("models", "m1"), [], "model 'm1': has no blocks"),
        (("models",), {}, "empty model library"),
        (("models",), _DELETE, "empty model library"),
        (("servers", "s0"), -5, "server 's0'"),
        (("requests", "u0", "m0"), 1.5, "probability of 'm0'"),
        (("requests", "u0", "m0"), -0.1, "probability of 'm0'"),
        (("requests", "u0", "m0"), 0.7, "user 'u0': request probabilities sum to"),
        (("requests", "u0", "zz"), 0.0, "unknown model 'zz'"),
        (("reachable", "u9"), {}, "unknown user 'u9'"),
        (("reachable", "u0", "s9"), ["m0"], "unknown server 's9'"),
        (("reachable", "u0", "s0"), ["m7"], "unknown model 'm7'"),
        (("schema",), "trimcache.placement-problem/v0", "schema"),
        (("extra",), 1, "unknown top-level key 'extra'"),
    ],
)
def test_bad_input_names_the_entry(path, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        problem_from_json(_mutate(path, value))


def test_json_round_trip_and_design_example():
    problem = problem_from_json(DESIGN_EXAMPLE)
    assert problem_to_json(problem) == DESIGN_EXAMPLE
    assert problem_from_json(json.loads(json.dumps(problem_to_json(problem)))) == problem
    result = make_result(problem, {"s0": {"b0", "b1"}}, solver="x", status="optimal")
    doc = result_to_json(result)
    assert doc == {
        "schema": RESULT_SCHEMA,
        "solver": "x",
        "servers": {"s0": {"models": ["m0", "m1"], "blocks": ["b0", "b1"], "used_bytes": 1572864}},
        "hit_ratio": 1.0,
        "status": "optimal",
        "solve_seconds": 0.0,
    }
    assert result_from_json(json.loads(json.dumps(doc))) == result
    assert PROBLEM_SCHEMA == DESIGN_EXAMPLE["schema"]


def test_integral_float_sizes_are_accepted():
    doc = _mutate(("servers", "s0"), 2e6)
    assert problem_from_json(doc).servers["s0"] == 2_000_000


def test_problem_is_frozen_and_copies_inputs():
    blocks = {"b": 1}
    problem = PlacementProblem(
        blocks=blocks, models={"m": ["b"]}, servers={"s": 1}, requests={"u": {"m": 1.0}}
    )
    blocks["b"] = 99
    assert problem.blocks["b"] == 1
    with pytest.raises(AttributeError):
        problem.blocks = {}  # type: ignore[misc]
    with pytest.raises(TypeError):
        problem.blocks["b"] = 2  # type: ignore[index]


def test_evaluate_counts_union_and_reachability():
    problem = PlacementProblem(
        blocks={"base": 8, "h0": 1, "h1": 1},
        models={"m0": ["base", "h0"], "m1": ["base", "h1"]},
        servers={"s0": 10, "s1": 10},
        requests={"u0": {"m0": 0.5, "m1": 0.5}, "u1": {"m1": 1.0}},
        reachable={"u0": {"s0": ["m0", "m1"]}, "u1": {"s1": ["m1"]}},
    )
    assert evaluate(problem, {}) == 0.0
    assert evaluate(problem, {"s0": ["base", "h0"]}) == 0.25
    # u1 cannot reach s0: m1 there only serves u0.
    assert evaluate(problem, {"s0": ["base", "h0", "h1"]}) == 0.5
    assert evaluate(problem, {"s0": ["base", "h0"], "s1": ["base", "h1"]}) == 0.75
    assert problem.storage_bytes(["base", "h0", "base", "h1"]) == 10
    with pytest.raises(ValueError, match="unknown block 'zz'"):
        evaluate(problem, {"s0": ["zz"]})
    with pytest.raises(ValueError, match="unknown server 's9'"):
        evaluate(problem, {"s9": []})
