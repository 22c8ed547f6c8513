"""Placement quality and speed, one run: ``python -m bench.placement``.

1. Quality: over ``--seeds`` (default 0-49) random small instances (``--servers`` x
   ``--models-per-family`` x 4 architectures x ``--users``, storage capacity cycling through
   ``--capacities-gb``), every solver's hit ratio divided by ``optimal``'s (HiGHS, proved
   optimal within its time limit), averaged. ``trimcaching-gen/plain`` is the greedy without
   its partial enumeration (ratio greedy + best single pair only).
2. Speed: ``trimcaching-gen`` (and the sharing-blind ``independent`` and ``popularity`` for
   comparison) on one large instance, ``--large MODELS,SERVERS,USERS`` (default
   1000,50,500); the time includes compiling the problem into arrays, not building it.

3. Scale (``--scale``, instead of 1 and 2): at each of ``--scale-sizes`` (default
   1000,50,500 and 10000,200,5000) build time, solve time (``solve`` = the solver's own
   figure, ``wall`` = the call incl. the final :func:`evaluate`, ``cpu`` = its process CPU
   time, which a shared machine's load inflates less) and peak RSS of
   ``trimcaching-gen`` and ``independent``, each (size, path, solver) in its own subprocess so
   the RSS is its own, with the hit ratio and its ratio to ``independent``. Paths: ``arrays``
   (the array-backed problem, :meth:`PlacementProblem.from_arrays`, and the current greedy),
   ``dict`` (the dict problem and the current greedy) and ``baseline`` (the dict problem and
   the greedy as it was at ``--baseline-rev``, loaded from git), the last two only up to
   ``--dict-max-models`` models (the dict problem at 10k models holds ~400 million reachable
   entries).

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
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
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


# The greedy before the 10x rewrite (dict problems only): the `baseline` path of --scale.
BASELINE_REV = "7c83782"
SCALE_SOLVERS = ("trimcaching-gen", "independent")


def _baseline_greedy(rev: str) -> ModuleType:
    """``controller/placement/greedy.py`` (+ its ``_index.py``) as they were at ``rev``."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-placement-baseline-"))
    names = {"_index": "_baseline_index", "greedy": "_baseline_greedy"}
    for name, alias in names.items():
        source = subprocess.run(
            ["git", "show", f"{rev}:controller/placement/{name}.py"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        source = source.replace("controller.placement._index", "_baseline_index")
        (tmp / f"{alias}.py").write_text(source)
    sys.path.insert(0, str(tmp))
    module: ModuleType | None = None
    for alias in names.values():
        spec = importlib.util.spec_from_file_location(alias, tmp / f"{alias}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[alias] = module
        spec.loader.exec_module(module)
    assert module is not None
    return module


def _scale_scenario(size: str, capacity_gb: float) -> Scenario:
    n_models, n_servers, n_users = (int(x) for x in size.split(","))
    if n_models % 4:
        raise SystemExit("--scale-sizes: MODELS must be a multiple of 4 (four families)")
    return Scenario(
        n_servers=n_servers,
        n_users=n_users,
        models_per_family=n_models // 4,
        archs=("resnet18", "resnet50", "vit-b16", "bert-base"),
        capacity_gb=capacity_gb,
        area_m=250.0 * n_servers**0.5,  # keep ~16 servers per km^2
    )


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def scale_one(args: argparse.Namespace) -> int:
    """One (size, path, solver) measurement in this process: a JSON line on stdout."""
    scenario = _scale_scenario(args.scale_one, args.large_capacity_gb)
    started = time.perf_counter()
    problem = make_problem(scenario, seed=0, arrays=args.path == "arrays")
    build_s = time.perf_counter() - started
    rss_built = _peak_rss_mb()
    module: Any = _baseline_greedy(args.baseline_rev) if args.path == "baseline" else greedy
    solve = module.solve if args.solver == "trimcaching-gen" else module.solve_independent
    started, cpu_started = time.perf_counter(), time.process_time()
    result = solve(problem)
    wall_s, cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
    digest = hash(tuple(sorted((s, p.blocks) for s, p in result.servers.items())))
    row = {
        "build_s": build_s,
        "rss_built_mb": rss_built,
        "solve_s": result.solve_seconds,
        "wall_s": wall_s,
        "cpu_s": cpu_s,
        "peak_rss_mb": _peak_rss_mb(),
        "hit_ratio": result.hit_ratio,
        "placement_hash": digest,
    }
    sys.stdout.write(json.dumps(row) + "\n")
    return 0


def scale(args: argparse.Namespace, emit: Any) -> None:
    """Every (size, path, solver) in its own subprocess; a table side by side."""
    sys.stdout.write(
        f"\nScale: capacity {args.large_capacity_gb} GB/server, seed 0; baseline = greedy at "
        f"{args.baseline_rev}; each row its own process (PYTHONHASHSEED=0)\n"
    )
    header = (
        f"{'size M,S,U':<17}{'path':<10}{'solver':<17}{'build s':>8}{'solve s':>9}"
        f"{'wall s':>8}{'cpu s':>7}{'peak MB':>9}{'hit ratio':>11}{'/indep':>8}{'same':>6}\n"
    )
    sys.stdout.write(header)
    for size in args.scale_sizes.split(";"):
        n_models = int(size.split(",")[0])
        paths = ["arrays"]
        if n_models <= args.dict_max_models:
            paths = ["baseline", "dict", "arrays"]
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for path in paths:
            for solver in SCALE_SOLVERS:
                cmd = [
                    sys.executable, "-m", "bench.placement", "--scale-one", size,
                    "--path", path, "--solver", solver,
                    "--large-capacity-gb", str(args.large_capacity_gb),
                    "--baseline-rev", args.baseline_rev,
                ]  # fmt: skip
                proc = subprocess.run(
                    cmd, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"}
                )
                if proc.returncode:
                    sys.stdout.write(f"{size:<17}{path:<10}{solver:<17}FAILED\n")
                    sys.stdout.write(proc.stderr[-1500:])
                    continue
                rows[path, solver] = row = json.loads(proc.stdout.strip().splitlines()[-1])
        for path in paths:
            indep = rows.get((path, "independent"), {}).get("hit_ratio")
            for solver in SCALE_SOLVERS:
                row = rows.get((path, solver))
                if row is None:
                    continue
                ratio = row["hit_ratio"] / indep if indep else float("nan")
                first = rows.get((paths[0], solver))
                same = "yes" if first and first["placement_hash"] == row["placement_hash"] else "no"
                sys.stdout.write(
                    f"{size:<17}{path:<10}{solver:<17}{row['build_s']:>8.1f}"
                    f"{row['solve_s']:>9.2f}{row['wall_s']:>8.2f}{row['cpu_s']:>7.2f}"
                    f"{row['peak_rss_mb']:>9.0f}"
                    f"{row['hit_ratio']:>11.4f}{ratio:>8.3f}{same:>6}\n"
                )
                models, servers, users = (int(x) for x in size.split(","))
                emit(
                    f"scale/{path}",
                    solver,
                    0,
                    {"models": models, "servers": servers, "users": users, **row},
                    "feasible",
                    row["hit_ratio"],
                    row["wall_s"],
                    None,
                )
    sys.stdout.write(
        "('same': the placement equals the first path's for that solver, block for block)\n"
    )


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
    parser.add_argument("--scale", action="store_true", help="run the scale table only")
    parser.add_argument("--scale-sizes", default="1000,50,500;10000,200,5000")
    parser.add_argument("--dict-max-models", type=int, default=2000)
    parser.add_argument("--baseline-rev", default=BASELINE_REV)
    parser.add_argument("--scale-one", help=argparse.SUPPRESS)
    parser.add_argument("--path", choices=("arrays", "dict", "baseline"), help=argparse.SUPPRESS)
    parser.add_argument("--solver", choices=SCALE_SOLVERS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.scale_one:
        return scale_one(args)

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

        if args.scale:
            scale(args, emit)
        else:
            quality(args, emit)
            if args.large != "none":
                speed(args, emit)
    sys.stdout.write(f"\nJSON lines appended to {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
