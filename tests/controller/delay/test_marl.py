"""marl: deterministic for a seed, checkpoints reload, capacity and reported delay hold; rollouts
in parallel batches give the same networks on the local engine and on Ray."""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest
import torch

from controller.delay import DELAY_SOLVERS, evaluate_delay, marl
from controller.delay.problem import DelayProblem
from controller.delay.scenario import DelayScenario, make_delay_problem, tiny_problem

FAST = marl.MarlConfig(episodes=6, eval_every=2, batch=16, hidden=16, mixing_embed=8)


@pytest.fixture(scope="module")
def problem():
    return tiny_problem(seed=2)


@pytest.mark.parametrize("augment", [False, True])
def test_one_seed_gives_identical_parameters(problem, augment):
    cfg = dataclasses.replace(FAST, augment=augment, model_warmup=4)
    a = marl.train(problem, seed=5, config=cfg)
    b = marl.train(problem, seed=5, config=cfg)
    assert torch.equal(a.parameters_vector(), b.parameters_vector())
    assert a.curve == b.curve and a.best_placement == b.best_placement
    c = marl.train(problem, seed=6, config=cfg)
    assert not torch.equal(a.parameters_vector(), c.parameters_vector())


def test_training_leaves_the_global_torch_rng_alone(problem):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    marl.train(problem, seed=0, config=FAST)
    assert torch.equal(torch.rand(3), expected)


def test_checkpoint_round_trip(problem, tmp_path):
    trained = marl.train(problem, seed=1, config=FAST)
    path = tmp_path / "team.pt"
    marl.save_checkpoint(trained, path)
    loaded = marl.load_checkpoint(path, problem)
    assert torch.equal(loaded.parameters_vector(), trained.parameters_vector())
    assert marl.greedy_placement(loaded, problem) == marl.greedy_placement(trained, problem)
    assert loaded.best_placement == trained.best_placement
    other = tiny_problem(seed=2, n_servers=3)
    with pytest.raises(ValueError, match="another instance layout"):
        marl.load_checkpoint(path, other)


def test_solver_respects_capacity_and_reports_evaluated_delay(problem):
    r = marl.solve(problem, seed=0, config=FAST)
    for node_id, held in r.placement.items():
        assert p_bytes(problem, held) <= problem.servers[node_id].capacity
    assert r.delay == evaluate_delay(problem, r.placement)
    assert r.info["env_samples"] > 0
    assert "marl" in DELAY_SOLVERS
    best = DELAY_SOLVERS["optimal"](problem)
    assert best.delay.mean_s <= r.delay.mean_s


def p_bytes(problem: DelayProblem, held: tuple[str, ...]) -> int:
    return problem.storage_bytes(held, "block")


def test_vdn_mixer_trains_and_bad_config_is_rejected(problem):
    t = marl.train(problem, seed=0, config=dataclasses.replace(FAST, mixer="vdn"))
    assert t.env_samples > 0 and t.best_placement
    with pytest.raises(ValueError, match="mixer must be"):
        marl.MarlConfig(mixer="sum")
    with pytest.raises(ValueError, match="episodes"):
        marl.MarlConfig(episodes=0)


def _small_multi_cell() -> DelayProblem:
    scenario = DelayScenario(
        n_servers=3, n_users=8, n_slots=2, models_per_family=1, capacity_gb=0.2
    )
    return make_delay_problem(scenario, seed=0)


PARALLEL = dataclasses.replace(FAST, parallel_envs=3, augment=True, model_warmup=4)


def test_parallel_rollouts_are_seeded_per_episode():
    p = _small_multi_cell()
    a = marl.train(p, seed=4, config=PARALLEL)
    b = marl.train(p, seed=4, config=PARALLEL)
    assert torch.equal(a.parameters_vector(), b.parameters_vector()) and a.curve == b.curve
    assert a.env_samples > PARALLEL.episodes  # episodes of several rounds were learned from
    assert len(a.curve) == 2  # one evaluation per batch that holds an evaluation point
    with pytest.raises(ValueError, match="parallel_envs"):
        marl.MarlConfig(parallel_envs=-1)
    with pytest.raises(ValueError, match="--engine: unknown engine"):
        marl.train(p, seed=4, config=PARALLEL, engine="spark")


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("ray") is None,
    reason="ray is not installed (pip install 'trimcache[ray]')",
)
def test_ray_rollouts_train_the_local_engines_networks():
    p = _small_multi_cell()
    local = marl.train(p, seed=4, config=PARALLEL, engine="local")
    ray = marl.train(p, seed=4, config=PARALLEL, engine="ray")
    assert torch.equal(ray.parameters_vector(), local.parameters_vector())
    assert ray.curve == local.curve and ray.best_placement == local.best_placement
    assert ray.env_samples == local.env_samples
