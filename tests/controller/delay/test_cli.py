"""`trimcache place --objective delay` and `trimcache solvers` through the real console entry."""

from __future__ import annotations

import json

import pytest

from controller.delay import DELAY_SOLVERS, delay_problem_from_json, evaluate_delay
from controller.placement import SOLVERS
from tests.controller.delay.test_problem import DESIGN_EXAMPLE, with_change
from tests.helpers import run_cli


@pytest.fixture
def problem_path(tmp_path):
    path = tmp_path / "problem.json"
    path.write_text(json.dumps(DESIGN_EXAMPLE))
    return path


def test_solvers_lists_delay_solvers_too():
    proc = run_cli("solvers")
    assert proc.returncode == 0, proc.stderr
    names = proc.stdout.splitlines()
    assert set(names) == set(SOLVERS) | set(DELAY_SOLVERS)
    assert len(names) == len(set(names))
    proc = run_cli("solvers", "--objective", "delay")
    assert proc.stdout.splitlines() == list(DELAY_SOLVERS)


@pytest.mark.parametrize("solver", ["delay-greedy", "coarse", "optimal"])
def test_place_delay_prints_result_with_evaluated_delay(problem_path, solver):
    proc = run_cli("place", str(problem_path), "--objective", "delay", "--solver", solver)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["objective"] == "delay" and doc["solver"] == solver
    assert doc["granularity"] == ("model" if solver == "coarse" else "block")
    problem = delay_problem_from_json(DESIGN_EXAMPLE)
    key = "models" if doc["granularity"] == "model" else "blocks"
    placement = {s: e[key] for s, e in doc["servers"].items()}
    stats = evaluate_delay(
        problem, placement, granularity=doc["granularity"], delivery=doc["delivery"]
    )
    assert doc["delay"] == stats.to_json()
    for s, e in doc["servers"].items():
        assert e["used_bytes"] <= DESIGN_EXAMPLE["servers"][s]["capacity"]


@pytest.mark.parametrize(
    ("path", "value", "needle"),
    [
        (("users", "u0", "position"), [900, 900], "user 'u0': out of range"),
        (("clusters",), {"c0": ["s9"]}, "cluster 'c0': unknown node 's9'"),
        (("blocks", "b0"), -1, "block 'b0'"),
    ],
)
def test_place_delay_bad_input_is_one_line_exit_2(tmp_path, path, value, needle):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(with_change(path, value)))
    proc = run_cli("place", str(bad), "--objective", "delay")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1
    assert needle in proc.stderr


def test_place_delay_unknown_solver(problem_path):
    proc = run_cli("place", str(problem_path), "--objective", "delay", "--solver", "nope")
    assert proc.returncode == 2 and "unknown delay solver 'nope'" in proc.stderr


def test_place_marl_with_parallel_rollouts_on_the_local_engine(problem_path):
    proc = run_cli(
        "place", str(problem_path), "--objective", "delay", "--solver", "marl",
        "--engine", "local", "--parallel-envs", "2", "--seed", "1",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["solver"] == "marl" and doc["info"]["parallel_envs"] == 2


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--engine", "ray"], "--engine: only with --objective delay --solver marl"),
        (["--solver", "marl", "--engine", "spark"], "--engine: unknown engine 'spark'"),
        (["--solver", "marl", "--address", "x:1"], "--address: only with --engine ray"),
        (["--solver", "marl", "--engine", "ray", "--parallel-envs", "0"], "must be >= 1"),
    ],
)
def test_place_engine_options_are_checked_one_line_exit_2(problem_path, extra, needle):
    proc = run_cli("place", str(problem_path), "--objective", "delay", *extra)
    assert proc.returncode == 2 and needle in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stdout == ""
