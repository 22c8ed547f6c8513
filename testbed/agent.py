"""Train a ``marl`` checkpoint for the testbed's decentralised mode (``--agent-checkpoint``).

The edges' agents (:mod:`edge_node.agent`) act on the parameter blocks of the catalogue as the
controller's planner groups them (:func:`core.group_by_sharing` over every catalogued model),
so the instance trained here is built from the zoo's own manifests
(:func:`core.blocks.build_manifest` on ``ZOO/repos/<repo_id>``, model ids from ``zoo.json``):
blocks = PBs with their sizes, models = the PBs of each model, servers = the edges with the
testbed's capacity, users = request streams in the areas.

Demand: the agents must act on the demand they observe, so they are trained on one instance per
demand mix (``marl.train(..., variants=...)``, :func:`demand_mixes`: each model alone, each
ordered pair 3:1): every slot set starts with one request of every model (so every PB is
requested in every variant: the layout is the same), then :data:`HOT_SLOTS` slots in which the
mix's users of every area ask for its models.
The first instance (what greedy evaluations use) has the popularity's demand when one is given.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from controller.delay import marl
from controller.delay.problem import Channel, DelayProblem
from controller.delay.scenario import sample_slots
from core.blocks import build_manifest, group_by_sharing
from core.manifest import ModelManifest

HOT_SLOTS = 3
HOT_USERS = 4
#: Training defaults for a testbed (one or a few edges, the test zoo: ~25 s of one core). With
#: 160 episodes the greedy agent kept the demanded model for 33 of 48 two-model demand mixes;
#: with these, 46 of 48 (the two misses: 60:40 and 75:25 mixes).
TESTBED_CONFIG = marl.MarlConfig(
    episodes=400, eval_every=20, hidden=64, updates_per_step=4, temperature_start=0.5, lr=1e-3
)

Slots = list[dict[str, str]]


def zoo_manifests(zoo_dir: Path) -> dict[str, ModelManifest]:
    """The manifests of the zoo's models, as the controller indexes them (ids from zoo.json)."""
    doc = json.loads((zoo_dir / "zoo.json").read_text())
    return {
        m["model_id"]: build_manifest(
            zoo_dir / "repos" / m["repo_id"], model_id=m["model_id"], repo_id=m["repo_id"]
        )
        for m in doc["models"]
    }


def pb_library(
    manifests: Mapping[str, ModelManifest],
) -> tuple[dict[str, int], dict[str, list[str]]]:
    """PB id -> bytes, and model -> its PB ids (the planner's and the edge agent's grouping)."""
    groups = group_by_sharing(list(manifests.values()))
    blocks = {g.pb_id: g.size_bytes for g in groups}
    models = {m: [g.pb_id for g in groups if m in g.model_ids] for m in sorted(manifests)}
    return blocks, models


def demand_slots(
    models: Sequence[str],
    areas: Sequence[str],
    *,
    mix: Mapping[str, int] | None,
    popularity: Mapping[str, Mapping[str, float]] | None = None,
    seed: int = 0,
) -> Slots:
    """One request of every model per area, then :data:`HOT_SLOTS` slots in which, per area,
    ``mix[m]`` users ask for model m (or, with ``mix`` None and a popularity,
    :data:`HOT_USERS` users per area drawn from it)."""
    slots: Slots = [{f"{a}#{i}": m for a in areas for i, m in enumerate(models)}]
    if mix is not None:
        users = [m for m, n in sorted(mix.items()) for _ in range(n)]
        slot = {f"{a}#{j}": m for a in areas for j, m in enumerate(users)}
        slots += [slot] * HOT_SLOTS
    elif popularity:
        rows = {a: dict(popularity[a]) for a in areas if a in popularity}
        drawn = sample_slots(rows, HOT_SLOTS * HOT_USERS, np.random.default_rng(seed))
        for k in range(HOT_SLOTS):
            part = drawn[k * HOT_USERS : (k + 1) * HOT_USERS]
            slots.append({f"{a}#{j}": m for j, slot in enumerate(part) for a, m in slot.items()})
    return slots


def demand_mixes(models: Sequence[str]) -> list[dict[str, int]]:
    """The training demands: each model alone (:data:`HOT_USERS` users), then each ordered
    pair (all but one user on the first)."""
    alone = [{m: HOT_USERS} for m in models]
    pairs = [{h: HOT_USERS - 1, o: 1} for h in models for o in models if o != h]
    return alone + pairs


def train_checkpoint(
    out: Path,
    *,
    manifests: Mapping[str, ModelManifest],
    problem_for: Callable[[dict[str, int], dict[str, list[str]], Slots], DelayProblem],
    areas: Sequence[str],
    popularity: Mapping[str, Mapping[str, float]] | None = None,
    seed: int = 0,
    config: marl.MarlConfig = TESTBED_CONFIG,
) -> marl.Trained:
    """Train the team on the hot-model variants (and the popularity first, when given) and
    save the checkpoint to ``out``. ``problem_for(blocks, models, slots)`` builds the delay
    problem of the testbed's geometry (users ``area#i`` at their area)."""
    blocks, models = pb_library(manifests)
    names = sorted(models)
    mixes = demand_mixes(names)
    first = demand_slots(
        names, areas, mix=None if popularity else mixes[0], popularity=popularity, seed=seed
    )
    rest = [demand_slots(names, areas, mix=mix) for mix in mixes]
    problems = [problem_for(blocks, models, s) for s in [first, *rest]]
    trained = marl.train(problems[0], seed=seed, config=config, variants=problems[1:])
    out.parent.mkdir(parents=True, exist_ok=True)
    marl.save_checkpoint(trained, out)
    return trained


def single_edge_problem(
    *,
    node_id: str,
    capacity_bytes: int,
    position: tuple[float, float],
    area_positions: Mapping[str, tuple[float, float]],
) -> Callable[[dict[str, int], dict[str, list[str]], Slots], DelayProblem]:
    """``problem_for`` of one edge at ``position`` with the reference channel and links (the
    test profile's testbed without a world file)."""

    def build(blocks: dict[str, int], models: dict[str, list[str]], slots: Slots) -> DelayProblem:
        users = {u: list(area_positions[u.split("#")[0]]) for s in slots for u in s}
        return DelayProblem(
            blocks=blocks,
            models=models,
            servers={node_id: {"capacity": capacity_bytes, "position": list(position)}},
            users=users,
            channel=Channel(),
            backhaul_bytes_per_s=12.5e6,
            migration_bytes_per_s=125e6,
            slots=slots,
        )

    return build
