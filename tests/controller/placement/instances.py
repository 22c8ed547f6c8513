"""Tiny random placement instances and a brute-force optimum, shared by the tests."""

from __future__ import annotations

import itertools
import random

from controller.placement import PlacementProblem, evaluate


def tiny_problem(
    seed: int, *, servers: int = 3, models: int = 6, users: int = 5, shared: int = 3
) -> PlacementProblem:
    """Models = a random subset of ``shared`` blocks + one own block; random sizes, demand and
    reachability (continuous random values, so ties between candidates are unlikely)."""
    rng = random.Random(seed)
    blocks = {f"sh{i}": rng.randint(1, 10) for i in range(shared)}
    model_blocks: dict[str, list[str]] = {}
    for m in range(models):
        blocks[f"own{m}"] = rng.randint(1, 10)
        model_blocks[f"m{m}"] = [f"sh{i}" for i in range(shared) if rng.random() < 0.5] + [
            f"own{m}"
        ]
    capacities = {f"s{i}": rng.randint(5, 30) for i in range(servers)}
    requests: dict[str, dict[str, float]] = {}
    reachable: dict[str, dict[str, list[str]]] = {}
    for u in range(users):
        weights = [rng.random() for _ in range(models)]
        total = sum(weights) * rng.uniform(1.0, 1.3)  # some rows sum below 1
        requests[f"u{u}"] = {f"m{m}": w / total for m, w in enumerate(weights)}
        reachable[f"u{u}"] = {
            s: [f"m{m}" for m in range(models) if rng.random() < 0.7]
            for s in capacities
            if rng.random() < 0.6
        }
    return PlacementProblem(
        blocks=blocks,
        models=model_blocks,
        servers=capacities,
        requests=requests,
        reachable=reachable,
    )


def brute_force(problem: PlacementProblem) -> float:
    """The optimum by enumerating, per server, every feasible set of models."""
    server_ids = list(problem.servers)
    options: list[set[frozenset[str]]] = []
    for server_id in server_ids:
        feasible: set[frozenset[str]] = set()
        for k in range(len(problem.models) + 1):
            for combo in itertools.combinations(problem.models, k):
                held = frozenset(b for m in combo for b in problem.models[m])
                if problem.storage_bytes(held) <= problem.servers[server_id]:
                    feasible.add(held)
        options.append(feasible)
    return max(
        evaluate(problem, dict(zip(server_ids, choice, strict=True)))
        for choice in itertools.product(*options)
    )
