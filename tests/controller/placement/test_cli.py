"""`trimcache place`, `trimcache solvers` and `trimcache sim` through the real console entry."""

from __future__ import annotations

import json

import pytest

from controller.placement import SOLVERS, evaluate, problem_from_json
from tests.controller.placement.test_problem import DESIGN_EXAMPLE
from tests.helpers import run_cli


@pytest.fixture
def problem_path(tmp_path):
    path = tmp_path / "problem.json"
    path.write_text(json.dumps(DESIGN_EXAMPLE))
    return path


def test_solvers_lists_the_registry():
    proc = run_cli("solvers", "--objective", "hit")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == list(SOLVERS)
    proc = run_cli("solvers")  # the delay solvers follow (tests/controller/delay/test_cli.py)
    assert proc.stdout.splitlines()[: len(SOLVERS)] == list(SOLVERS)


@pytest.mark.parametrize("solver", ["trimcaching-gen", "optimal"])
def test_place_prints_result_json(problem_path, solver):
    proc = run_cli("place", str(problem_path), "--solver", solver)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["schema"] == "trimcache.placement-result/v1"
    assert doc["solver"] == solver
    assert doc["servers"] == {
        "s0": {"models": ["m0", "m1"], "blocks": ["b0", "b1"], "used_bytes": 1572864}
    }
    assert doc["hit_ratio"] == 1.0
    assert doc["status"] in {"feasible", "optimal"}
    assert doc["solve_seconds"] >= 0
    problem = problem_from_json(DESIGN_EXAMPLE)
    blocks = {s: e["blocks"] for s, e in doc["servers"].items()}
    assert evaluate(problem, blocks) == doc["hit_ratio"]


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"blocks": {"b0": -1, "b1": 1}}, "block 'b0'"),
        ({"requests": {"u0": {"m0": 0.9, "m1": 0.4}}}, "user 'u0'"),
        ({"requests": {"u0": {"m0": 1.2}}}, "probability of 'm0'"),
        ({"reachable": {"u0": {"s7": ["m0"]}}}, "unknown server 's7'"),
        ({"models": {}}, "empty model library"),
    ],
)
def test_place_bad_input_is_one_line_exit_2(tmp_path, change, needle):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**DESIGN_EXAMPLE, **change}))
    proc = run_cli("place", str(path))
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1
    assert needle in proc.stderr


def test_place_unknown_solver_and_unreadable_file(problem_path, tmp_path):
    proc = run_cli("place", str(problem_path), "--solver", "nope")
    assert proc.returncode == 2 and "unknown solver 'nope'" in proc.stderr
    proc = run_cli("place", str(tmp_path / "missing.json"))
    assert proc.returncode == 2 and "missing.json" in proc.stderr
    (tmp_path / "junk.json").write_text("{not json")
    proc = run_cli("place", str(tmp_path / "junk.json"))
    assert proc.returncode == 2 and "not valid JSON" in proc.stderr


def test_place_spec_refuses_too_many_shared_blocks(tmp_path):
    # Block i is shared by models i and i+1: 17 distinct sharing sets.
    n = 18
    doc = {
        "schema": "trimcache.placement-problem/v1",
        "blocks": {f"sh{i}": 1 for i in range(n - 1)},
        "models": {f"m{i}": [f"sh{j}" for j in (i - 1, i) if 0 <= j < n - 1] for i in range(n)},
        "servers": {"s0": 100},
        "requests": {"u0": {"m0": 0.5, "m1": 0.5}},
        "reachable": {"u0": {"s0": ["m0", "m1"]}},
    }
    path = tmp_path / "shared.json"
    path.write_text(json.dumps(doc))
    proc = run_cli("place", str(path), "--solver", "trimcaching-spec")
    assert proc.returncode == 2
    assert "17 shared blocks > 16" in proc.stderr
    assert run_cli("place", str(path), "--solver", "trimcaching-gen").returncode == 0
