"""The edge's reading of a ``marl`` checkpoint (edge_node.agent) against the controller's own
classes: the same observation, the same Q-values, the same greedy cache; bad checkpoints are a
clear error before the node serves (one CLI line, exit 2)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from controller.delay import marl
from controller.delay.model import DelayInstance
from controller.delay.scenario import tiny_problem
from edge_node.agent import (
    AgentCheckpointError,
    choose_units,
    complete_models,
    load_policy,
    observation,
)

FAST = marl.MarlConfig(episodes=8, eval_every=4, batch=16, hidden=16, mixing_embed=8)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, marl.Trained]:
    problem = tiny_problem(seed=3, n_servers=2)
    trained = marl.train(problem, seed=1, config=FAST)
    path = tmp_path_factory.mktemp("agent") / "agent.pt"
    marl.save_checkpoint(trained, path)
    return path, trained


def test_observation_and_q_values_match_the_controllers_agent(checkpoint) -> None:
    path, trained = checkpoint
    problem = tiny_problem(seed=3, n_servers=2)
    game = marl.CacheGame(DelayInstance(problem))
    game.max_rounds = 5
    x = torch.zeros(game.n_agents, game.n_units)
    x[0, 0] = 1.0  # node 0 holds the first PB; node 1 nothing
    x[1, 1] = 1.0
    for node_id in game.nodes:
        policy = load_policy(path, node_id)
        i = policy.index
        assert game.nodes[i] == node_id
        sizes = game.sizes.tolist()
        others = [j for j in range(game.n_agents) if game.neighbour_avg[i, j] > 0]
        neighbours = (game.neighbour_avg @ x)[i].tolist()
        assert others or neighbours == [0.0] * game.n_units
        mine = observation(
            policy,
            held=x[i].tolist(),
            demand=game.demand[i].tolist(),
            neighbours=neighbours,
            sizes=sizes,
            capacity=float(game.capacity[i]),
            round_=2,
            rounds=game.max_rounds,
        )
        theirs = game.observe(x, 2)[i]
        assert torch.allclose(mine.float(), theirs, atol=1e-6)
        with torch.no_grad():
            q = trained.agent(theirs.unsqueeze(0))[0]
        assert torch.allclose(policy.q_values(mine).float(), q, atol=1e-5)


def test_one_node_greedy_cache_is_the_controllers_decentralised_execution(tmp_path) -> None:
    problem = tiny_problem(seed=5, n_servers=1)
    trained = marl.train(problem, seed=2, config=FAST)
    path = tmp_path / "one.pt"
    marl.save_checkpoint(trained, path)
    [node_id] = trained.nodes
    policy = load_policy(path, node_id)
    game = marl.CacheGame(DelayInstance(problem))
    picked = choose_units(
        policy,
        demand=game.demand[0].tolist(),
        neighbours=[0.0] * game.n_units,
        sizes=game.sizes.tolist(),
        capacity=float(game.capacity[0]),
    )
    expected = marl.greedy_placement(trained, problem)[node_id]
    assert sorted(policy.units[j] for j in picked) == sorted(expected)
    assert sum(game.sizes[j] for j in picked) <= game.capacity[0]


def test_unknown_pbs_are_never_picked(checkpoint) -> None:
    path, _ = checkpoint
    policy = load_policy(path, "s0")
    n = len(policy.units)
    picked = choose_units(
        policy, demand=[1.0] * n, neighbours=[0.0] * n, sizes=[math.inf] * n, capacity=1e12
    )
    assert picked == []


def test_bad_checkpoints_are_clear_errors(checkpoint, tmp_path) -> None:
    path, _ = checkpoint
    with pytest.raises(AgentCheckpointError, match="no such file"):
        load_policy(tmp_path / "missing.pt", "s0")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(AgentCheckpointError, match="not a torch checkpoint"):
        load_policy(garbage, "s0")
    other = tmp_path / "other.pt"
    torch.save({"schema": "something/v1"}, other)
    with pytest.raises(AgentCheckpointError, match="not a marl checkpoint"):
        load_policy(other, "s0")
    with pytest.raises(AgentCheckpointError, match="not for node_id edge-9"):
        load_policy(path, "edge-9")


def test_edge_serve_with_a_bad_checkpoint_exits_with_one_line(tmp_path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage")
    result = subprocess.run(
        [sys.executable, "-m", "testbed.cli", "edge", "serve", "--agent-checkpoint", str(bad),
         "--data-dir", str(tmp_path / "data"), "--capacity-bytes", "1000000", "--port", "0",
         "--controller-url", "http://127.0.0.1:9"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "not a torch checkpoint" in lines[0], result.stderr


def test_picked_pbs_are_completed_to_the_most_demanded_models_that_fit() -> None:
    pbs_of = {"a": {"p1", "p2"}, "b": {"p3"}, "c": {"p1", "p4"}}
    sizes = {"p1": 10.0, "p2": 10.0, "p3": 10.0, "p4": 10.0}
    shares = {"a": 0.5, "b": 0.1, "c": 0.4}
    # a (most demanded, started) is completed; c no longer fits; b was never started.
    assert complete_models({"p1"}, pbs_of, sizes, shares, free_bytes=10.0) == {"p1", "p2"}
    assert complete_models({"p1"}, pbs_of, sizes, shares, free_bytes=20.0) == {"p1", "p2", "p4"}
    assert complete_models({"p1"}, pbs_of, sizes, {"c": 1.0}, free_bytes=5.0) == {"p1"}
