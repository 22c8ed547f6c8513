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

Instances come from seeds (no downloads). Prints a table and appends JSON lines (part, seed,
solver, mean_s, wall_s, git sha) to ``bench/results/delay.jsonl``. Never part of ``make test``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.placement import _git_sha, _seeds
from controller.delay import DELAY_SOLVERS, evaluate_delay
from controller.delay.scenario import DelayScenario, make_delay_problem, tiny_problem
from controller.delay.solvers import solve_optimal
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.delay", description=__doc__)
    parser.add_argument("--tiny-seeds", default="0-29")
    parser.add_argument("--medium-seeds", default="0-29")
    parser.add_argument("--marl-seeds", default="0-29")
    parser.add_argument("--marl-episodes", type=int, default=60)
    parser.add_argument("--tight-gb", type=float, default=0.1)
    parser.add_argument("--parts", default="tiny,medium,marl")
    parser.add_argument("--curves", default=None, help="write learning curves to PATH.csv/.png")
    args = parser.parse_args(argv)
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

    parts = {"tiny": tiny, "medium": medium, "marl": marl_part}
    try:
        for name in args.parts.split(","):
            start = time.perf_counter()
            parts[name](args, emit)
            say(f"   ({name}: {time.perf_counter() - start:.0f} s)")
            sys.stdout.flush()
    finally:
        out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
