"""The comparison report: plots and markdown from ``points.json`` + ``records.jsonl``.

:func:`write_report` owns it: measured hit ratio vs capacity per solver with the predicted
curve dashed, download-time CDF per solver (at one capacity), origin egress per solver and
storage savings (bars with their numbers), and ``report.md`` with the table of points. Every
figure's caption names the command and config that made it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from core.fsutil import atomic_write_text

MIB = 1024 * 1024


def load(out: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    doc = json.loads((out / "points.json").read_text())
    records_path = out / "records.jsonl"
    records = (
        [json.loads(line) for line in records_path.read_text().splitlines() if line.strip()]
        if records_path.is_file()
        else []
    )
    return doc, records


def _focus_capacity(points: Sequence[Mapping[str, Any]]) -> int:
    """The capacity where the solvers' measured hit ratios differ most (where sharing matters)."""
    spread: dict[int, float] = {}
    for capacity in {int(p["capacity_mib"]) for p in points}:
        ratios = [float(p["hit_ratio"]) for p in points if int(p["capacity_mib"]) == capacity]
        spread[capacity] = max(ratios) - min(ratios)
    return max(sorted(spread), key=lambda c: spread[c])


def write_report(
    out: Path, *, command: str, prefix: str = "experiment_", figures_dir: Path | None = None
) -> list[Path]:
    """Write the plots (into ``figures_dir``, default ``out``) and ``out/report.md``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    doc, records = load(out)
    points: list[dict[str, Any]] = doc["points"]
    solvers: list[str] = list(dict.fromkeys(p["solver"] for p in points))
    figures_dir = figures_dir or out
    figures_dir.mkdir(parents=True, exist_ok=True)
    config_text = json.dumps(doc["config"], sort_keys=True)
    caption = f"{command}\nconfig {config_text}"
    focus = _focus_capacity(points)
    files: list[Path] = []

    def finish(fig: Any, name: str) -> None:
        fig.text(0.01, 0.005, caption, fontsize=6, family="monospace", va="bottom", wrap=True)
        fig.tight_layout(rect=(0, 0.08, 1, 1))
        path = figures_dir / f"{prefix}{name}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        files.append(path)

    # 1. measured hit ratio vs capacity, predicted dashed.
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for index, solver in enumerate(solvers):
        rows = sorted((p for p in points if p["solver"] == solver), key=lambda p: p["capacity_mib"])
        color = f"C{index}"
        xs = [p["capacity_mib"] for p in rows]
        ax.plot(xs, [p["hit_ratio"] for p in rows], "o-", color=color, label=f"{solver} measured")
        ax.plot(xs, [p["predicted_hit_ratio"] for p in rows], "x--", color=color, alpha=0.7,
                label=f"{solver} predicted")  # fmt: skip
    ax.set_xlabel("capacity per edge node (MiB)")
    ax.set_ylabel("hit ratio")
    ax.set_ylim(0, 1.05)
    ax.set_title("Measured hit ratio (solid) vs the plan's prediction (dashed)")
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    finish(fig, "hit_ratio")

    # 2. download-time CDF per solver at the focus capacity.
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for index, solver in enumerate(solvers):
        times = sorted(
            float(r["download_s"]) for r in records
            if r["solver"] == solver and int(r["capacity_mib"]) == focus and not r.get("error")
        )  # fmt: skip
        if times:
            ys = [(i + 1) / len(times) for i in range(len(times))]
            ax.step(times, ys, where="post", color=f"C{index}", label=solver)
    ax.set_xlabel("download time (s)")
    ax.set_ylabel("share of requests")
    ax.set_title(f"Download-time CDF at {focus} MiB per edge node")
    ax.legend(fontsize=8)
    finish(fig, "download_cdf")

    # 3. origin bytes per solver, 4. storage savings: bars at the focus capacity.
    at_focus = [next(p for p in points if p["solver"] == s and p["capacity_mib"] == focus)
                for s in solvers]  # fmt: skip
    for name, values, label, fmt in (
        ("origin_bytes", [origin_mib(p) for p in at_focus], "origin egress (MiB)",
         "{:.0f}"),
        ("savings", [p["savings"] * 100 for p in at_focus], "edge storage savings (%)",
         "{:.1f}"),
    ):  # fmt: skip
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        bars = ax.bar(solvers, values, color=[f"C{i}" for i in range(len(solvers))])
        for bar, value in zip(bars, values, strict=True):
            ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), fmt.format(value),
                    ha="center", va="bottom", fontsize=8)  # fmt: skip
        ax.set_ylabel(label)
        ax.set_ylim(0, max([*values, 1.0]) * 1.2)
        ax.set_title(f"{label} during the workload, {focus} MiB per edge node")
        if name == "savings":
            ax.set_title(f"Edge storage savings (1 - physical/logical), {focus} MiB per edge")
        finish(fig, name)

    atomic_write_text(out / "report.md", markdown(doc, command=command, figures=files, focus=focus))
    return files


def markdown(doc: Mapping[str, Any], *, command: str, figures: Sequence[Path], focus: int) -> str:
    points = doc["points"]
    lines = [
        "# TrimCache placement comparison on the testbed",
        "",
        f"Command: `{command}`  ",
        f"Config: `{json.dumps(doc['config'], sort_keys=True)}`  ",
        f"Profile `{doc['profile']}`, {doc['edges']} edge nodes, {doc['wall_seconds']:.0f} s."
        + (
            " The test profile shapes no link (edges and origin are both plain loopback), so its "
            "download times measure this machine's CPU, not the placement; hit ratios and "
            "origin bytes do measure the placement."
            if doc["profile"] == "test"
            else ""
        ),
        "",
        table(points),
        "",
        "A hit: every byte of the model from edge nodes, within its deadline. `predicted`: the "
        "hit ratio the placement problem gives the placement(s) in force for the workload's "
        "demand; `gap` = measured - predicted; `predicted (drawn)`: the share of the drawn "
        "requests themselves the placement problem counts as hits (and measured minus it: "
        "what is left once sampling noise is out). `placement` `vA→vB`: the controller re-planned "
        "during the workload (it follows the users' demand reports).",
        "",
        "`lru` and `lfu` (placement `on demand`) are not planned: their edges start empty and "
        "cache whole models from the requests they see (`testbed up --cache-policy`), so a "
        "first request an edge pulls through from the origin is a miss (the edge announces the "
        "bytes in `X-TrimCache-Pulled-Bytes`). Their `predicted` is the simulator's replay of "
        "the same request sequence through the same policy from empty caches (the "
        "`lru`/`lfu` code the edges run), so it equals `predicted (drawn)`; `models placed` is "
        "what the edges held at the end, and `origin MiB` the origin's own counter over the "
        "workload (what the edges pulled from it; their clients never reach it). Concurrent "
        "requests are a source of gap the replay does not have: a request for a model another "
        "request is still pulling through is a miss, and so is one that would evict a model "
        "another request is still streaming (the new model is then served without caching).",
        "",
        headline(points, focus),
        "",
    ]
    lines += [f"![{p.name}]({p.name})" for p in figures] + [""]
    return "\n".join(lines)


def table(points: Sequence[Mapping[str, Any]]) -> str:
    rows = [
        "| capacity MiB | solver | requests | hit ratio | predicted | gap | predicted (drawn) |"
        " mean s | p95 s | origin MiB | models placed | savings | placement |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for p in sorted(points, key=lambda p: (p["capacity_mib"], p["solver"])):
        rows.append(
            f"| {p['capacity_mib']} | {p['solver']} | {p['requests']} | {p['hit_ratio']:.3f} | "
            f"{p['predicted_hit_ratio']:.3f} | {p['gap']:+.3f} | {_drawn(p)} | "
            f"{p['mean_download_s']:.2f} | "
            f"{p['p95_download_s']:.2f} | {origin_mib(p):.0f} | {p['models_placed']} | "
            f"{p['savings']:.1%} | {_versions(p)} |"
        )
    return "\n".join(rows)


def origin_mib(point: Mapping[str, Any]) -> float:
    """Origin egress for the workload: the clients' bytes from the origin, or, where edges
    cache on demand (clients then talk to edges only), the origin's own served-bytes counter."""
    if point.get("cache_policy"):
        return float(point.get("origin_served_bytes", 0)) / MIB
    return float(point["origin_bytes"]) / MIB


def _drawn(point: Mapping[str, Any]) -> str:
    """The prediction for exactly the drawn requests, and measured minus it."""
    if point.get("predicted_sampled_hit_ratio") is None:
        return "n/a"
    return f"{point['predicted_sampled_hit_ratio']:.3f} ({point['sampled_gap']:+.3f})"


def _versions(point: Mapping[str, Any]) -> str:
    """``v2``, or ``v2→v3`` when the controller re-planned during the workload."""
    if point.get("cache_policy"):
        return "on demand"
    before, after = point.get("placement_version_before"), point.get("placement_version_after")
    return f"v{before}" if before == after else f"v{before}→v{after}"


def headline(points: Sequence[Mapping[str, Any]], focus: int) -> str:
    """TrimCaching vs independent at the focus capacity, and the largest |gap|."""
    at = {p["solver"]: p for p in points if p["capacity_mib"] == focus}
    parts = []
    gen, ind = at.get("trimcaching-gen"), at.get("independent")
    if gen and ind:
        ratio = gen["hit_ratio"] / ind["hit_ratio"] if ind["hit_ratio"] else float("inf")
        parts.append(
            f"At {focus} MiB per edge, trimcaching-gen's measured hit ratio is "
            f"{gen['hit_ratio']:.3f} vs independent's {ind['hit_ratio']:.3f} ({ratio:.2f}x)."
        )
    worst = max(points, key=lambda p: abs(p["gap"]))
    parts.append(
        f"Largest measured-vs-predicted gap: {worst['gap']:+.3f} ({worst['solver']}, "
        f"{worst['capacity_mib']} MiB)."
    )
    return " ".join(parts)
