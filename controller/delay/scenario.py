"""Seeded delay instances: :class:`DelayScenario` -> :func:`make_delay_problem`, and
:func:`tiny_problem` for exhaustive checks.

A scenario takes fine-tuned model families over real architectures
(:func:`controller.library.architecture_library`: ResNet/ViT/BERT parameter counts, frozen
bottom layers shared inside a family), edge nodes on the jittered grid of
:func:`controller.wireless.random_topology`, users dropped uniformly in the coverage disc of a
uniformly chosen node (so every user is covered), per-user Zipf popularity
(:func:`controller.wireless.zipf_requests`) and ``n_slots`` slots in which every user
requests one model drawn from its popularity. ``cluster_size`` groups nodes into CoMP
clusters of that many consecutive nodes (0: one cluster of all, the reference rule).
All randomness comes from ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from controller.delay.problem import Channel, DelayProblem
from controller.library import ModelLibrary, architecture_library
from controller.wireless import random_topology, zipf_requests

GB = 10**9


@dataclass(frozen=True, slots=True)
class DelayScenario:
    """One simulated multi-cell network (every numeric field can be swept)."""

    n_servers: int = 6
    n_users: int = 24
    models_per_family: int = 3
    archs: tuple[str, ...] = ("resnet18", "resnet50", "vit-b16", "bert-base")
    capacity_gb: float = 0.4
    zipf_exponent: float = 0.8
    sharing: float = 0.5
    n_slots: int = 6
    area_m: float = 800.0
    cluster_size: int = 0
    channel: Channel = Channel()
    backhaul_bytes_per_s: float = 12.5e6
    migration_bytes_per_s: float = 125e6


def sample_slots(
    popularity: dict[str, dict[str, float]], n_slots: int, rng: np.random.Generator
) -> list[dict[str, str]]:
    """Every user requests one model per slot, drawn from its popularity row."""
    slots: list[dict[str, str]] = []
    for _ in range(n_slots):
        slot: dict[str, str] = {}
        for user_id, row in popularity.items():
            models = list(row)
            probs = np.array([row[m] for m in models], dtype=np.float64)
            slot[user_id] = models[int(rng.choice(len(models), p=probs / probs.sum()))]
        slots.append(slot)
    return slots


def problem_from_library(
    library: ModelLibrary, scenario: DelayScenario, *, seed: int
) -> DelayProblem:
    """A delay problem over a given library (e.g. one built from the zoo's manifests)."""
    rng = np.random.default_rng(seed + 7)
    topo = random_topology(scenario.n_servers, 0, area_m=scenario.area_m, seed=seed)
    servers = {
        n: {"capacity": int(scenario.capacity_gb * GB), "position": [float(x), float(y)]}
        for n, (x, y) in zip(topo.server_ids, topo.server_xy_m.tolist(), strict=True)
    }
    radius = scenario.channel.coverage_m * 0.98
    users: dict[str, list[float]] = {}
    for i in range(scenario.n_users):
        cx, cy = topo.server_xy_m[int(rng.integers(scenario.n_servers))].tolist()
        r, a = radius * math.sqrt(float(rng.uniform())), float(rng.uniform(0, 2 * math.pi))
        users[f"u{i}"] = [cx + r * math.cos(a), cy + r * math.sin(a)]
    popularity = zipf_requests(
        list(users), list(library.models), exponent=scenario.zipf_exponent, seed=seed
    )
    clusters: dict[str, list[str]] = {}
    if scenario.cluster_size > 0:
        ids = list(servers)
        for c in range(0, len(ids), scenario.cluster_size):
            clusters[f"c{c // scenario.cluster_size}"] = ids[c : c + scenario.cluster_size]
    return DelayProblem(
        blocks=library.blocks,
        models=library.models,
        servers=servers,
        users=users,
        channel=scenario.channel,
        backhaul_bytes_per_s=scenario.backhaul_bytes_per_s,
        migration_bytes_per_s=scenario.migration_bytes_per_s,
        slots=sample_slots(popularity, scenario.n_slots, rng),
        clusters=clusters,
        popularity=popularity,
    )


def make_delay_problem(scenario: DelayScenario, *, seed: int) -> DelayProblem:
    """The delay problem of a scenario for one seed.

    Example:
        >>> p = make_delay_problem(DelayScenario(n_servers=2, n_users=3,
        ...     models_per_family=1), seed=0)
        >>> len(p.servers), len(p.users), len(p.models), len(p.slots)
        (2, 3, 4, 6)
    """
    library = architecture_library(
        scenario.models_per_family, archs=scenario.archs, sharing=scenario.sharing, seed=seed
    )
    return problem_from_library(library, scenario, seed=seed)


def tiny_problem(
    *, seed: int, n_servers: int = 2, n_users: int = 4, n_blocks: int = 4, n_models: int = 3
) -> DelayProblem:
    """A random instance small enough for ``optimal`` (synthetic sizes, shared blocks).

    Each model uses 1-3 random blocks of 2-40 MB; each node holds about 40 % of the bytes.

    Example:
        >>> p = tiny_problem(seed=3)
        >>> len(p.blocks), len(p.servers), len(p.slots)
        (4, 2, 3)
    """
    rng = np.random.default_rng(seed)
    blocks = {f"b{i}": int(rng.integers(2, 41)) * 1_000_000 for i in range(n_blocks)}
    names = list(blocks)
    models: dict[str, list[str]] = {}
    for j in range(n_models):
        k = int(rng.integers(1, min(3, n_blocks) + 1))
        models[f"m{j}"] = sorted(rng.choice(names, size=k, replace=False).tolist())
    capacity = int(0.4 * sum(blocks.values()))
    servers = {
        f"s{i}": {"capacity": capacity, "position": [250.0 * i, float(rng.uniform(0, 50))]}
        for i in range(n_servers)
    }
    users: dict[str, list[float]] = {}
    for i in range(n_users):
        cx = 250.0 * int(rng.integers(n_servers))
        users[f"u{i}"] = [cx + float(rng.uniform(-200, 200)), float(rng.uniform(-150, 150))]
    popularity = zipf_requests(list(users), list(models), exponent=0.8, seed=seed)
    return DelayProblem(
        blocks=blocks,
        models=models,
        servers=servers,
        users=users,
        channel=Channel(),
        backhaul_bytes_per_s=12.5e6,
        migration_bytes_per_s=125e6,
        slots=sample_slots(popularity, 3, rng),
        popularity=popularity,
    )


def scaled_delay_problem(
    n_models: int, n_nodes: int, n_users: int, *, capacity_gb: float, seed: int = 0
) -> DelayProblem:
    """A large instance (10,000 models x 200 nodes x 5,000 users) without per-user tables.

    :func:`make_delay_problem`'s recipe at any size: ``n_models // 4`` fine-tuned models per
    family over the four default architectures (``sharing`` 0.5), ``n_nodes`` nodes on the
    jittered grid with the area grown so the node density of :class:`DelayScenario`'s
    defaults (6 nodes on 800 m x 800 m) stays, users dropped in a uniformly chosen node's
    coverage disc, 6 slots. Each user requests from a Zipf(0.8) law over its own random
    ranking of the models (the law of :func:`~controller.wireless.zipf_requests`), but the
    ranks are drawn directly, so no ``users x models`` popularity table is built (it would
    hold 50 million entries at 10k x 5k); ``popularity`` is left empty.

    Example:
        >>> p = scaled_delay_problem(8, 3, 5, capacity_gb=0.5, seed=0)
        >>> len(p.models), len(p.servers), len(p.users), len(p.slots)
        (8, 3, 5, 6)
    """
    if n_models % 4 or n_models < 4:
        raise ValueError(f"n_models must be a positive multiple of 4, got {n_models}")
    base = DelayScenario()
    scenario = DelayScenario(
        n_servers=n_nodes,
        n_users=n_users,
        models_per_family=n_models // 4,
        capacity_gb=capacity_gb,
        area_m=base.area_m * math.sqrt(n_nodes / base.n_servers),
    )
    library = architecture_library(
        scenario.models_per_family, archs=scenario.archs, sharing=scenario.sharing, seed=seed
    )
    rng = np.random.default_rng(seed + 7)
    topo = random_topology(scenario.n_servers, 0, area_m=scenario.area_m, seed=seed)
    servers = {
        n: {"capacity": int(scenario.capacity_gb * GB), "position": [float(x), float(y)]}
        for n, (x, y) in zip(topo.server_ids, topo.server_xy_m.tolist(), strict=True)
    }
    radius = scenario.channel.coverage_m * 0.98
    homes = rng.integers(n_nodes, size=n_users)
    r = radius * np.sqrt(rng.uniform(size=n_users))
    a = rng.uniform(0, 2 * math.pi, size=n_users)
    xy = topo.server_xy_m[homes] + np.stack([r * np.cos(a), r * np.sin(a)], axis=1)
    users = {f"u{i}": [float(x), float(y)] for i, (x, y) in enumerate(xy.tolist())}
    model_ids = list(library.models)
    weights = 1.0 / np.arange(1, n_models + 1, dtype=np.float64) ** scenario.zipf_exponent
    ranks = rng.choice(n_models, size=(n_users, scenario.n_slots), p=weights / weights.sum())
    picks = np.empty_like(ranks)
    for u in range(n_users):
        picks[u] = rng.permutation(n_models)[ranks[u]]  # user u's rank r -> its r-th model
    slots = [
        {f"u{u}": model_ids[int(m)] for u, m in enumerate(picks[:, t].tolist())}
        for t in range(scenario.n_slots)
    ]
    return DelayProblem(
        blocks=library.blocks,
        models=library.models,
        servers=servers,
        users=users,
        channel=scenario.channel,
        backhaul_bytes_per_s=scenario.backhaul_bytes_per_s,
        migration_bytes_per_s=scenario.migration_bytes_per_s,
        slots=slots,
    )
