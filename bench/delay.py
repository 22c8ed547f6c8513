"""Delay solvers, one run: ``python -m bench.delay``.

1. Tiny (``--tiny-seeds``, default 0-29): random instances small enough for ``optimal``
   (:func:`controller.delay.scenario.tiny_problem`); each solver's mean delay divided by the
   reference optimum (block granularity, broadcast), averaged; ``coarse`` and
   ``fine-unicast`` also against the optimum under their own rules.
2. Medium (``--medium-seeds``, default 0-29): :class:`DelayScenario` instances at a tight
   capacity (``--tight-gb``, default 0.1 GB per node); each solver relative to
   ``delay-greedy``, and the delay reduction of fine-grained + broadcast (``delay-greedy``)
   vs ``coarse`` (whole-model unicast): mean, min, max over instances.
3. MARL (``--marl-seeds``, default 0-29) on small multi-cell instances: ``marl`` vs
   ``delay-greedy``, with and without augmentation, and the environment samples each needs
   to first reach 95 % of the return the plain learner ends with (its learning curve's best);
   ``--curves PATH`` writes the mean learning curves to CSV + PNG.

4. Scale (``--scale``, instead of 1-3): per classical solver build time, solve time (``wall``
   and process ``cpu``), peak RSS (each (instance, path, solver) in its own subprocess), mean
   delay, its ratio to ``coarse`` and a check of the result (the incremental evaluator's
   request delays against ``evaluate_delay``'s, which every result reports). Instances:
   the medium instance (part 2, seed 0, ``--tight-gb``) grown by each factor of
   ``--scale-factors`` (default 1,10; :func:`scale_scenario`: factor x the nodes, users and
   models per family, area x sqrt(factor) so densities stay, 6 slots), then each
   ``MODELS,NODES,USERS`` of ``--scale-sizes`` (default 10000,200,5000;
   :func:`controller.delay.scenario.scaled_delay_problem`, same recipe and densities).
   Paths (the greedy's evaluator): ``incremental`` (the default,
   :class:`controller.delay.incremental.IncrementalDelay`, unicast
   :class:`controller.delay.unicast.UnicastDelay`), ``vector`` (the previous default,
   :class:`controller.delay.vector.VectorDelay`; on the factor instances and on sizes up to
   ``--vector-max-models``, default 1000) and ``reference`` (``slot_delays``; factors up to
   ``--reference-max-factor``, default 1, for ``--reference-solvers``); ``same`` says
   whether the placement equals the incremental path's. ``--scale-lazy`` (default
   ``batched``) lists the greedy's lazy loops to run per path (``batched``: the default
   :mod:`controller.delay.lazy` prefetches; ``single``: one gain call per pop, the loop
   before it; its rows are named ``PATH+single``), so both run side by side in one table.

Instances come from seeds (no downloads). Prints a table and appends JSON lines (part, seed,
solver, mean_s, wall_s, git sha) to ``bench/results/delay.jsonl``. Never part of ``make test``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import functools
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.placement import _git_sha, _peak_rss_mb, _seeds
from controller.delay import DELAY_SOLVERS, evaluate_delay
from controller.delay.scenario import (
    DelayScenario,
    make_delay_problem,
    scaled_delay_problem,
    tiny_problem,
)
from controller.delay.solvers import EVALUATORS, LAZY_LOOPS, solve_optimal
from core.fsutil import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"
CLASSICAL = ("coarse", "fine-unicast", "trimcaching-gen", "delay-greedy")
MARL_SCENARIO = DelayScenario(
    n_servers=4, n_users=12, n_slots=4, models_per_family=2, capacity_gb=0.2
)


def say(text: str) -> None:
    """One line of the report on stdout."""
    sys.stdout.write(text + "\n")


def _marl_config(args: argparse.Namespace, *, augment: bool) -> Any:
    from controller.delay import marl

    return marl.MarlConfig(episodes=args.marl_episodes, augment=augment)


def tiny(args: argparse.Namespace, emit: Any) -> None:
    from controller.delay import marl

    ratios: dict[str, list[float]] = {}
    own: dict[str, list[float]] = {}
    for seed in _seeds(args.tiny_seeds):
        p = tiny_problem(seed=seed, n_blocks=4 + seed % 2)
        best = solve_optimal(p)
        emit("tiny", seed, "optimal", best.delay.mean_s, best.solve_seconds)
        for name in (*CLASSICAL, "marl"):
            if name == "marl":
                r = marl.solve(p, seed=seed, config=marl.MarlConfig(episodes=args.marl_episodes))
            else:
                r = DELAY_SOLVERS[name](p, seed=seed)
            emit("tiny", seed, name, r.delay.mean_s, r.solve_seconds)
            ratios.setdefault(name, []).append(r.delay.mean_s / best.delay.mean_s)
            if r.delivery != "broadcast" or r.granularity != "block":
                o = solve_optimal(p, granularity=r.granularity, delivery=r.delivery)
                own.setdefault(name, []).append(r.delay.mean_s / o.delay.mean_s)
    n = len(_seeds(args.tiny_seeds))
    say(f"\n1. tiny instances (n={n}): mean delay / optimal (reference rules)")
    for name, xs in ratios.items():
        extra = (
            f"   (vs optimum of its own rules: {statistics.fmean(own[name]):.3f})"
            if name in own
            else ""
        )
        say(f"   {name:16s} {statistics.fmean(xs):.3f}  worst {max(xs):.3f}{extra}")


def medium(args: argparse.Namespace, emit: Any) -> None:
    scenario = dataclasses.replace(DelayScenario(), capacity_gb=args.tight_gb)
    rel: dict[str, list[float]] = {}
    reduction: list[float] = []
    empty_gain: list[float] = []
    for seed in _seeds(args.medium_seeds):
        p = make_delay_problem(scenario, seed=seed)
        results = {name: DELAY_SOLVERS[name](p, seed=seed) for name in CLASSICAL}
        for name, r in results.items():
            emit("medium", seed, name, r.delay.mean_s, r.solve_seconds)
        g = results["delay-greedy"].delay.mean_s
        for name, r in results.items():
            rel.setdefault(name, []).append(r.delay.mean_s / g)
        reduction.append(1 - g / results["coarse"].delay.mean_s)
        empty_gain.append(1 - g / evaluate_delay(p, {}).mean_s)
    n = len(reduction)
    say(
        f"\n2. medium instances (n={n}, {scenario.n_servers} nodes, {scenario.n_users} users,"
        f" {scenario.capacity_gb} GB/node): mean delay / delay-greedy"
    )
    for name, xs in rel.items():
        say(f"   {name:16s} {statistics.fmean(xs):.3f}")
    say(
        "   delay reduction fine+broadcast vs coarse:"
        f" mean {100 * statistics.fmean(reduction):.1f} %,"
        f" min {100 * min(reduction):.1f} %, max {100 * max(reduction):.1f} %"
    )
    say(
        f"   delay-greedy vs an empty cache (broadcast from the cloud): "
        f"{100 * statistics.fmean(empty_gain):.1f} % lower"
    )


def _first_reach(curve: list[Any], target: float) -> float:
    for point in curve:
        if point.greedy_return >= target:
            return float(point.env_samples)
    return math.inf


def marl_part(args: argparse.Namespace, emit: Any) -> None:
    from controller.delay import marl

    rel: dict[bool, list[float]] = {False: [], True: []}
    saved: list[float] = []
    curves: dict[bool, list[list[Any]]] = {False: [], True: []}
    for seed in _seeds(args.marl_seeds):
        p = make_delay_problem(MARL_SCENARIO, seed=seed)
        g = DELAY_SOLVERS["delay-greedy"](p, seed=seed)
        emit("marl", seed, "delay-greedy", g.delay.mean_s, g.solve_seconds)
        trained = {}
        for augment in (False, True):
            start = time.perf_counter()
            t = marl.train(p, seed=seed, config=_marl_config(args, augment=augment))
            mean_s = evaluate_delay(p, t.best_placement).mean_s
            name = "marl+aug" if augment else "marl"
            emit("marl", seed, name, mean_s, time.perf_counter() - start)
            rel[augment].append(mean_s / g.delay.mean_s)
            curves[augment].append(t.curve)
            trained[augment] = t
        target = 0.95 * max(pt.greedy_return for pt in trained[False].curve)
        plain, aug = (
            _first_reach(trained[False].curve, target),
            _first_reach(trained[True].curve, target),
        )
        if target > 0 and math.isfinite(plain):
            saved.append(plain / aug if math.isfinite(aug) else 0.0)
    n = len(rel[False])
    say(
        f"\n3. marl on small instances (n={n}, {MARL_SCENARIO.n_servers} nodes,"
        f" {args.marl_episodes} episodes): mean delay / delay-greedy"
    )
    say(f"   marl             {statistics.fmean(rel[False]):.3f}  worst {max(rel[False]):.3f}")
    say(f"   marl+aug         {statistics.fmean(rel[True]):.3f}  worst {max(rel[True]):.3f}")
    if saved:
        say(
            f"   env samples to 95 % of the plain learner's best return: plain / augmented ="
            f" median {statistics.median(saved):.2f}x, mean {statistics.fmean(saved):.2f}x"
            f" over {len(saved)} instances (0 = augmented never reached it)"
        )
    if args.curves:
        write_curves(curves, Path(args.curves))


def write_curves(curves: dict[bool, list[list[Any]]], path: Path) -> None:
    """Mean learning curves (plain vs augmented) to ``PATH.csv``, then the PNG from it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["variant,episode,mean_env_samples,mean_greedy_return,mean_best_so_far"]
    for augment, runs in curves.items():
        k = min(len(c) for c in runs)
        for i in range(k):
            x = statistics.fmean(c[i].env_samples for c in runs)
            y = statistics.fmean(c[i].greedy_return for c in runs)
            b = statistics.fmean(max(pt.greedy_return for pt in c[: i + 1]) for c in runs)
            variant = "aug" if augment else "plain"
            lines.append(f"{variant},{runs[0][i].episode},{x:.1f},{y:.6f},{b:.6f}")
    atomic_write_text(path.with_suffix(".csv"), "\n".join(lines) + "\n")
    plot_curves(path.with_suffix(".csv"), n_instances=len(curves[False]))


def plot_curves(csv_path: Path, *, n_instances: int) -> None:
    """``csv_path`` with ``.png``: greedy-policy return (solid) and best so far (dashed)."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with csv_path.open() as fh:
        rows = list(csv.DictReader(fh))
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for variant, color, label in (
        ("plain", "C0", "marl"),
        ("aug", "C3", "marl + reward-model augmentation"),
    ):
        mine = [r for r in rows if r["variant"] == variant]
        xs = [float(r["mean_env_samples"]) for r in mine]
        ax.plot(
            xs,
            [100 * float(r["mean_greedy_return"]) for r in mine],
            color=color,
            marker="o",
            ms=3,
            label=f"{label} (greedy policy)",
        )
        ax.plot(
            xs,
            [100 * float(r["mean_best_so_far"]) for r in mine],
            color=color,
            linestyle="--",
            label=f"{label} (best so far)",
        )
    ax.set_xlabel("environment samples (delay evaluations of joint actions)")
    ax.set_ylabel("delay reduction vs empty caches (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"marl learning curves (mean over {n_instances} instances)", fontsize=10)
    fig.tight_layout()
    fig.savefig(csv_path.with_suffix(".png"))
    plt.close(fig)


def scale_scenario(factor: int, capacity_gb: float) -> DelayScenario:
    """The medium instance (part 2) grown ``factor`` times (see the module docstring)."""
    base = DelayScenario()
    return dataclasses.replace(
        base,
        n_servers=base.n_servers * factor,
        n_users=base.n_users * factor,
        models_per_family=base.models_per_family * factor,
        area_m=base.area_m * math.sqrt(factor),
        capacity_gb=capacity_gb,
    )


def _scale_problem(spec: str, capacity_gb: float) -> Any:
    """``x<factor>`` (the medium instance grown, :func:`scale_scenario`) or
    ``MODELS,NODES,USERS`` (:func:`controller.delay.scenario.scaled_delay_problem`)."""
    if spec.startswith("x"):
        return make_delay_problem(scale_scenario(int(spec[1:]), capacity_gb), seed=0)
    n_models, n_nodes, n_users = (int(x) for x in spec.split(","))
    return scaled_delay_problem(n_models, n_nodes, n_users, capacity_gb=capacity_gb, seed=0)


def scale_one(args: argparse.Namespace) -> int:
    """One (instance, path, solver) measurement in this process: a JSON line on stdout."""
    from controller.delay import solvers
    from controller.delay.model import DelayInstance
    from controller.delay.unicast import incremental_delay

    started = time.perf_counter()
    p = _scale_problem(args.scale_one, args.tight_gb)
    build_s = time.perf_counter() - started
    solve: Any = DELAY_SOLVERS[args.solver]
    if args.solver != "trimcaching-gen":
        solve = {
            "coarse": solvers.solve_coarse,
            "fine-unicast": solvers.solve_fine_unicast,
            "delay-greedy": solvers.solve_delay_greedy,
        }[args.solver]
        solve = functools.partial(solve, evaluator=args.path, lazy=args.lazy)
    started, cpu_started = time.perf_counter(), time.process_time()
    r = solve(p, seed=0)
    wall_s, cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
    peak = _peak_rss_mb()
    # r.delay is the reference evaluate_delay's; check the incremental evaluator on it too
    instance = DelayInstance(p, granularity=r.granularity)
    fast = incremental_delay(instance, r.delivery).evaluate(r.placement)
    worst = max(
        abs(x - y) / max(abs(y), 1e-300)
        for x, y in zip(fast.request_delays_s, r.delay.request_delays_s, strict=True)
    )
    row = {
        "models": len(p.models),
        "blocks": len(p.blocks),
        "nodes": len(p.servers),
        "users": len(p.users),
        "slots": len(p.slots),
        "build_s": build_s,
        "solve_s": r.solve_seconds,
        "wall_s": wall_s,
        "cpu_s": cpu_s,
        "peak_rss_mb": peak,
        "mean_s": r.delay.mean_s,
        "units_placed": sum(len(ids) for ids in r.placement.values()),
        "check_rel": worst,
        "placement": {n: list(ids) for n, ids in r.placement.items()},
    }
    sys.stdout.write(json.dumps(row) + "\n")
    return 0


def _scale_specs(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """(instance spec, evaluator paths) in table order."""
    specs: list[tuple[str, list[str]]] = []
    for factor in (int(x) for x in args.scale_factors.split(",") if x):
        paths = ["incremental", "vector"]
        if factor <= args.reference_max_factor:
            paths.append("reference")
        specs.append((f"x{factor}", paths))
    for size in (x for x in args.scale_sizes.split(";") if x):
        n_models = int(size.split(",")[0])
        paths = ["incremental"] + (["vector"] if n_models <= args.vector_max_models else [])
        specs.append((size, paths))
    loops = [x for x in args.scale_lazy.split(",") if x]
    return [
        (spec, [p if loop == "batched" else f"{p}+{loop}" for p in paths for loop in loops])
        for spec, paths in specs
    ]


def scale(args: argparse.Namespace, emit: Any) -> None:
    """Every (instance, path, solver) in its own subprocess; one table."""
    say(
        f"\n4. scale ({args.tight_gb} GB/node, seed 0, 6 slots); each row its own process;"
        " load average at start: " + " ".join(f"{x:.1f}" for x in os.getloadavg())
    )
    say(
        f"   {'instance':<16}{'models x nodes x users':<24}{'path':<20}{'solver':<17}"
        f"{'build s':>8}{'solve s':>9}{'cpu s':>8}{'peak MB':>9}{'mean delay s':>14}"
        f"{'/coarse':>9}{'same':>6}{'check':>9}"
    )
    for spec, paths in _scale_specs(args):
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for path in paths:
            evaluator, _, loop = path.partition("+")
            for solver in args.scale_solvers.split(","):
                if path != "incremental" and solver == "trimcaching-gen":
                    continue  # trimcaching-gen has no delay evaluator inside: one path
                if evaluator == "reference" and solver not in args.reference_solvers.split(","):
                    continue
                cmd = [
                    sys.executable, "-m", "bench.delay", "--scale-one", spec,
                    "--path", evaluator, "--lazy", loop or "batched", "--solver", solver,
                    "--tight-gb", str(args.tight_gb),
                ]  # fmt: skip
                try:
                    proc = subprocess.run(
                        cmd, capture_output=True, text=True, timeout=args.row_timeout
                    )
                except subprocess.TimeoutExpired:
                    late = f"not done in {args.row_timeout:.0f} s"
                    say(f"   {spec:<16}{'':<24}{path:<20}{solver:<17}{late}")
                    continue
                if proc.returncode:
                    say(f"   {spec:<16}{'':<24}{path:<20}{solver:<17}FAILED")
                    say(proc.stderr[-1500:])
                    continue
                rows[path, solver] = json.loads(proc.stdout.strip().splitlines()[-1])
        coarse = rows.get((paths[0], "coarse"), {}).get("mean_s")
        for path in paths:
            for solver in CLASSICAL:
                row = rows.get((path, solver))
                if row is None:
                    continue
                first = rows.get((paths[0], solver))
                same = "yes" if first and first["placement"] == row["placement"] else "no"
                size = f"{row['models']} x {row['nodes']} x {row['users']}"
                ratio = row["mean_s"] / coarse if coarse else math.nan
                say(
                    f"   {spec:<16}{size:<24}{path:<20}{solver:<17}{row['build_s']:>8.1f}"
                    f"{row['wall_s']:>9.2f}{row['cpu_s']:>8.2f}{row['peak_rss_mb']:>9.0f}"
                    f"{row['mean_s']:>14.3f}{ratio:>9.3f}{same:>6}{row['check_rel']:>9.1e}"
                )
                emit(f"scale/{spec}/{path}", 0, solver, row["mean_s"], row["wall_s"])
    say(
        "   (solve s = the call's wall time incl. the reference evaluate_delay of the result;"
        " 'same': the placement equals the first path's; 'check': the largest relative"
        " difference of the incremental evaluator's request delays from evaluate_delay's"
        " on the result; load average at end: "
        + " ".join(f"{x:.1f}" for x in os.getloadavg())
        + ")"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.delay", description=__doc__)
    parser.add_argument("--tiny-seeds", default="0-29")
    parser.add_argument("--medium-seeds", default="0-29")
    parser.add_argument("--marl-seeds", default="0-29")
    parser.add_argument("--marl-episodes", type=int, default=60)
    parser.add_argument("--tight-gb", type=float, default=0.1)
    parser.add_argument("--parts", default="tiny,medium,marl")
    parser.add_argument("--curves", default=None, help="write learning curves to PATH.csv/.png")
    parser.add_argument("--scale", action="store_true", help="run the scale table only")
    parser.add_argument("--scale-factors", default="1,10")
    parser.add_argument("--scale-sizes", default="10000,200,5000")
    parser.add_argument("--vector-max-models", type=int, default=1000)
    parser.add_argument("--scale-solvers", default=",".join(CLASSICAL))
    parser.add_argument(
        "--row-timeout", type=float, default=None, help="seconds per scale row (then skipped)"
    )
    parser.add_argument("--reference-max-factor", type=int, default=1)
    parser.add_argument(
        "--scale-lazy", default="batched", help="greedy lazy loops, e.g. batched,single"
    )
    parser.add_argument("--reference-solvers", default="coarse,fine-unicast,delay-greedy")
    parser.add_argument("--scale-one", help=argparse.SUPPRESS)
    parser.add_argument("--path", choices=EVALUATORS, default="incremental", help=argparse.SUPPRESS)
    parser.add_argument("--solver", choices=CLASSICAL, help=argparse.SUPPRESS)
    parser.add_argument("--lazy", choices=LAZY_LOOPS, default="batched", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.scale_one:
        return scale_one(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    sha = _git_sha()
    out = (RESULTS / "delay.jsonl").open("a")

    def emit(part: str, seed: int, solver: str, mean_s: float, wall_s: float) -> None:
        out.write(
            json.dumps(
                {
                    "bench": "delay",
                    "part": part,
                    "seed": seed,
                    "solver": solver,
                    "mean_s": mean_s,
                    "wall_s": wall_s,
                    "git": sha,
                    "at": dt.datetime.now(dt.UTC).isoformat(),
                }
            )
            + "\n"
        )

    parts = {"tiny": tiny, "medium": medium, "marl": marl_part, "scale": scale}
    try:
        for name in ["scale"] if args.scale else args.parts.split(","):
            start = time.perf_counter()
            parts[name](args, emit)
            say(f"   ({name}: {time.perf_counter() - start:.0f} s)")
            sys.stdout.flush()
    finally:
        out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
