"""Placement quality and speed, one run: ``python -m bench.placement``.

1. Quality: over ``--seeds`` (default 0-49) random small instances (``--servers`` x
   ``--models-per-family`` x 4 architectures x ``--users``, storage capacity cycling through
   ``--capacities-gb``), every solver's hit ratio divided by ``optimal``'s (HiGHS, proved
   optimal within its time limit), averaged. ``trimcaching-gen/plain`` is the greedy without
   its partial enumeration (ratio greedy + best single pair only).
2. Speed: ``trimcaching-gen`` (and the sharing-blind ``independent`` and ``popularity`` for
   comparison) on one large instance, ``--large MODELS,SERVERS,USERS`` (default
   1000,50,500); the time includes compiling the problem into arrays, not building it.

Instances come from :mod:`controller.sim` (fine-tuned families over real architectures'
parameter counts, the wireless channel model, Zipf demand), generated from seeds: no
downloads. Prints a table and appends JSON lines (solver, sizes, seed, status, objective,
wall_s, git sha) to ``bench/results/placement.jsonl``. Never part of ``make test``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import functools
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from controller.placement import SOLVERS, Solver, TooManySharedBlocksError, get_solver, greedy
from controller.sim import Scenario, make_problem

RESULTS = Path(__file__).resolve().parent / "results"


def _git_sha() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def _seeds(text: str) -> list[int]:
    seeds: list[int] = []
    for part in text.split(","):
        lo, sep, hi = part.partition("-")
        seeds.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    return seeds


# The greedy without its partial enumeration (only the best single pair), for comparison.
PLAIN_GREEDY = "trimcaching-gen/plain"


def _solver(name: str) -> Solver:
    if name == PLAIN_GREEDY:
        return functools.partial(greedy.solve, max_enumerated=0)
    return get_solver(name)


def quality(args: argparse.Namespace, emit: Any) -> dict[str, list[float]]:
    solvers = [s for s in args.solvers.split(",") if s != "optimal"]
    if "trimcaching-gen" in solvers:
        solvers.insert(solvers.index("trimcaching-gen") + 1, PLAIN_GREEDY)
    base = Scenario(
        n_servers=args.servers, n_users=args.users, models_per_family=args.models_per_family
    )
    capacities = [float(c) for c in args.capacities_gb.split(",")]
    ratios: dict[str, list[float]] = {name: [] for name in solvers}
    times: dict[str, list[float]] = {name: [] for name in [*solvers, "optimal"]}
    not_optimal = 0
    for seed in _seeds(args.seeds):
        scenario = dataclasses.replace(base, capacity_gb=capacities[seed % len(capacities)])
        problem = make_problem(scenario, seed=seed)
        sizes = {
            "models": len(problem.models),
            "servers": len(problem.servers),
            "users": len(problem.requests),
            "blocks": len(problem.blocks),
            "capacity_gb": scenario.capacity_gb,
        }
        best = get_solver("optimal")(problem, seed=seed, time_limit_s=args.time_limit_s)
        times["optimal"].append(best.solve_seconds)
        not_optimal += best.status != "optimal"
        emit("small", "optimal", seed, sizes, best.status, best.hit_ratio, best.solve_seconds, 1.0)
        for name in solvers:
            try:
                result = _solver(name)(problem, seed=seed)
            except TooManySharedBlocksError:
                continue
            ratio = result.hit_ratio / best.hit_ratio if best.hit_ratio > 0 else 1.0
            ratios[name].append(ratio)
            times[name].append(result.solve_seconds)
            emit(
                "small",
                name,
                seed,
                sizes,
                result.status,
                result.hit_ratio,
                result.solve_seconds,
                ratio,
            )
    sys.stdout.write(
        f"\nQuality: {len(_seeds(args.seeds))} instances, "
        f"{base.models_per_family * len(base.archs)} models x {base.n_servers} servers x "
        f"{base.n_users} users, capacity {args.capacities_gb} GB "
        f"(optimal not proved on {not_optimal})\n"
    )
    sys.stdout.write(f"{'solver':<23}{'mean ratio':>11}{'min ratio':>11}{'mean ms':>10}\n")
    for name in solvers:
        rs = ratios[name]
        if not rs:
            sys.stdout.write(f"{name:<23}{'refused':>11}\n")
            continue
        sys.stdout.write(
            f"{name:<23}{statistics.fmean(rs):>11.4f}{min(rs):>11.4f}"
            f"{1000 * statistics.fmean(times[name]):>10.1f}\n"
        )
    sys.stdout.write(
        f"{'optimal':<23}{1.0:>11.4f}{1.0:>11.4f}"
        f"{1000 * statistics.fmean(times['optimal']):>10.1f}\n"
    )
    return ratios


def speed(args: argparse.Namespace, emit: Any) -> None:
    n_models, n_servers, n_users = (int(x) for x in args.large.split(","))
    archs = ("resnet18", "resnet50", "vit-b16", "bert-base")
    if n_models % len(archs):
        raise SystemExit("--large: MODELS must be a multiple of 4 (four architecture families)")
    scenario = Scenario(
        n_servers=n_servers,
        n_users=n_users,
        models_per_family=n_models // len(archs),
        archs=archs,
        capacity_gb=args.large_capacity_gb,
        area_m=250.0 * n_servers**0.5,  # keep ~16 servers per km^2
    )
    started = time.perf_counter()
    problem = make_problem(scenario, seed=0)
    build_s = time.perf_counter() - started
    entries = sum(len(ms) for row in problem.reachable.values() for ms in row.values())
    sizes = {
        "models": len(problem.models),
        "servers": len(problem.servers),
        "users": len(problem.requests),
        "blocks": len(problem.blocks),
        "reachable_entries": entries,
        "capacity_gb": scenario.capacity_gb,
    }
    sys.stdout.write(
        f"\nSpeed: {n_models} models x {n_servers} servers x {n_users} users "
        f"({len(problem.blocks)} blocks, {entries:,} reachable (user, server, model) entries, "
        f"capacity {scenario.capacity_gb} GB/server; instance built in {build_s:.1f} s)\n"
    )
    sys.stdout.write(f"{'solver':<23}{'hit ratio':>10}{'solve s':>10}\n")
    for name in ("trimcaching-gen", "independent", "popularity"):
        result = get_solver(name)(problem, seed=0)
        emit("large", name, 0, sizes, result.status, result.hit_ratio, result.solve_seconds, None)
        sys.stdout.write(f"{name:<23}{result.hit_ratio:>10.4f}{result.solve_seconds:>10.2f}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.placement", description=__doc__)
    parser.add_argument("--seeds", default="0-49")
    parser.add_argument("--solvers", default=",".join(SOLVERS))
    parser.add_argument("--servers", type=int, default=4)
    parser.add_argument("--users", type=int, default=12)
    parser.add_argument("--models-per-family", type=int, default=3)
    parser.add_argument("--capacities-gb", default="0.2,0.4,0.6,0.8")
    parser.add_argument("--time-limit-s", type=float, default=60.0)
    parser.add_argument("--large", default="1000,50,500", help="MODELS,SERVERS,USERS or none")
    parser.add_argument("--large-capacity-gb", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "placement.jsonl")
    args = parser.parse_args(argv)

    sha = _git_sha()
    stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as fh:

        def emit(
            case: str,
            solver: str,
            seed: int,
            sizes: dict[str, Any],
            status: str,
            objective: float,
            wall_s: float,
            ratio: float | None,
        ) -> None:
            row = {
                "bench": "placement",
                "case": case,
                "solver": solver,
                "seed": seed,
                **sizes,
                "status": status,
                "objective": objective,
                "ratio_to_optimal": ratio,
                "wall_s": wall_s,
                "git_sha": sha,
                "at": stamp,
            }
            fh.write(json.dumps(row) + "\n")

        quality(args, emit)
        if args.large != "none":
            speed(args, emit)
    sys.stdout.write(f"\nJSON lines appended to {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
