"""Solvers against each other on the real testbed: ``trimcache experiment compare``.

For each capacity and each solver, :func:`compare` starts a fresh testbed
(:func:`testbed.launcher.up` with ``solver=`` and ``capacity_bytes=``; ``up`` returns once the
controller indexed the catalogue, planned with that solver and every edge node applied the
plan), runs the same seeded workload (:func:`testbed.experiment.run_workload`) and stops the
testbed. A restart per point is the simplest correct way to set both: the solver is a controller
setting (``CONTROLLER_SOLVER``) and the capacity an edge setting (``EDGE_CAPACITY_BYTES``), and
neither has a route that changes it at run time; a fresh testbed also starts every point with
the same empty demand, so every plan is made for the same (prior) demand the workload draws
from.

``lru`` and ``lfu`` are not planned: their testbed's edges cache on demand with that policy
(``EDGE_CACHE_POLICY``, edge_node.ondemand) from the workload's own requests, starting empty.
Their predicted hit ratio is the simulator's replay of the same request sequence through the
same policy from empty caches (testbed.experiment_online), and they have no plan hit ratio.

Each point: measured hit ratio, mean/p95 download time, origin egress and edge bytes during
the workload (the services' own counters), edge physical vs logical bytes, the hit ratio the
plan predicted (the placement record's ``hit_ratio``, the placement problem's objective for this
topology and demand) and the gap. ``DIR/points.json`` / ``points.csv``, every record in
``DIR/records.jsonl`` / ``records.csv`` with ``solver`` and ``capacity_mib`` columns.
"""

from __future__ import annotations

import csv
import io
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.fsutil import atomic_write_text
from testbed import launcher
from testbed.experiment import (
    ExperimentConfig,
    ExperimentError,
    Record,
    Testbed,
    run_workload,
    write_json,
    write_records,
)
from testbed.experiment_report import origin_mib

MIB = 1024 * 1024
#: Solvers that are online cache policies: the testbed runs them on the edges themselves
#: (``testbed up --cache-policy``), with no placement.
ON_DEMAND = ("lru", "lfu")
POINT_FIELDS = (
    "solver", "capacity_mib", "requests", "errors", "hits", "hit_ratio", "predicted_hit_ratio",
    "gap", "predicted_sampled_hit_ratio", "sampled_gap", "plan_hit_ratio", "mean_download_s",
    "p95_download_s", "edge_bytes", "origin_bytes",
    "origin_served_bytes", "edge_served_bytes", "physical_bytes", "logical_bytes", "savings",
    "models_placed", "verified", "placement_version_before", "placement_version_after",
    "planned_solver", "cache_policy",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class CompareOptions:
    solvers: tuple[str, ...]
    capacities_mib: tuple[int, ...]
    profile: launcher.Profile = "test"
    edges: int = 3
    zoo_dir: Path | None = None
    ready_timeout_s: float = 900.0

    def __post_init__(self) -> None:
        from controller.placement import SOLVERS

        unknown = [s for s in self.solvers if s not in SOLVERS]
        if unknown:
            raise ExperimentError(
                f"unknown solver(s) {', '.join(unknown)}; choose from {', '.join(SOLVERS)}"
            )
        if not self.solvers or not self.capacities_mib:
            raise ExperimentError("give at least one solver and one capacity")
        if any(c <= 0 for c in self.capacities_mib):
            raise ExperimentError("capacities must be > 0 MiB")


def point_row(solver: str, capacity_mib: int, summary: dict[str, Any]) -> dict[str, Any]:
    """One compare point from a run summary (the columns of points.csv)."""
    storage = summary["storage"]
    physical = sum(s["physical_bytes"] for s in storage.values())
    logical = sum(s["logical_bytes"] for s in storage.values())
    served = summary["served_delta"]
    return {
        "solver": solver,
        "capacity_mib": capacity_mib,
        **{
            k: summary[k]
            for k in (
                "requests",
                "errors",
                "hits",
                "hit_ratio",
                "predicted_hit_ratio",
                "gap",
                "mean_download_s",
                "p95_download_s",
                "edge_bytes",
                "origin_bytes",
                "verified",
                "placement_version_before",
                "plan_hit_ratio",
                "placement_version_after",
                "predicted_sampled_hit_ratio",
                "sampled_gap",
            )
        },  # fmt: skip
        "origin_served_bytes": served.get("origin", 0),
        "edge_served_bytes": sum(v for k, v in served.items() if k != "origin"),
        "physical_bytes": physical,
        "logical_bytes": logical,
        "savings": round(1 - physical / logical, 4) if logical else 0.0,
        "models_placed": sum(len(s["models"]) for s in storage.values()),
        "planned_solver": summary.get("solver"),
        "cache_policy": summary.get("cache_policy"),
        "served_delta": dict(served),
    }


def compare(
    config: ExperimentConfig,
    options: CompareOptions,
    out: Path,
    *,
    say: Callable[[str], object] = lambda m: sys.stderr.write(f"[experiment] {m}\n"),
    on_record: Callable[[Record], object] | None = None,
) -> list[dict[str, Any]]:
    """Run every (capacity, solver) point; write and return the points."""
    out.mkdir(parents=True, exist_ok=True)
    points: list[dict[str, Any]] = []
    all_records: list[dict[str, Any]] = []
    started = time.monotonic()
    for capacity in options.capacities_mib:
        for solver in options.solvers:
            say(f"{solver} at {capacity} MiB per edge: starting a testbed")
            with tempfile.TemporaryDirectory(prefix="trimcache-cmp-") as work:
                state_dir = Path(work) / "testbed"
                try:
                    state = launcher.up(
                        launcher.LaunchOptions(
                            state_dir=state_dir,
                            edges=options.edges,
                            zoo_dir=options.zoo_dir,
                            capacity_bytes=capacity * MIB,
                            profile=options.profile,
                            # lru/lfu run as what they are: edges caching on demand.
                            solver=None if solver in ON_DEMAND else solver,
                            cache_policy=solver if solver in ON_DEMAND else None,
                            controller_port=0,
                            ready_timeout_s=options.ready_timeout_s,
                        )
                    )
                    result = run_workload(
                        Testbed.from_state(state), config, work_dir=Path(work),
                        on_record=on_record,
                    )  # fmt: skip
                finally:
                    launcher.down(state_dir)
            row = point_row(solver, capacity, result.summary)
            points.append(row)
            all_records += [
                {"solver": solver, "capacity_mib": capacity, "record": r} for r in result.records
            ]
            say(
                f"{solver} at {capacity} MiB: hit ratio {row['hit_ratio']:.3f} measured, "
                f"{row['predicted_hit_ratio']:.3f} predicted; mean download "
                f"{row['mean_download_s']:.2f} s; origin {origin_mib(row):.0f} MiB"
            )
            _write_points(out, points, config, options, time.monotonic() - started)
    by_point: dict[tuple[str, int], list[Record]] = {}
    for item in all_records:
        by_point.setdefault((item["solver"], item["capacity_mib"]), []).append(item["record"])
    _write_all_records(out, by_point)
    return points


def _write_points(
    out: Path,
    points: Sequence[dict[str, Any]],
    config: ExperimentConfig,
    options: CompareOptions,
    seconds: float,
) -> None:
    write_json(
        out / "points.json",
        {
            "config": config.to_json(),
            "solvers": list(options.solvers),
            "capacities_mib": list(options.capacities_mib),
            "profile": options.profile,
            "edges": options.edges,
            "wall_seconds": round(seconds, 1),
            "points": list(points),
        },
    )
    handle = io.StringIO(newline="")
    writer = csv.DictWriter(handle, fieldnames=list(POINT_FIELDS))
    writer.writeheader()
    for row in points:
        writer.writerow({k: row.get(k) for k in POINT_FIELDS})
    atomic_write_text(out / "points.csv", handle.getvalue())


def _write_all_records(out: Path, by_point: dict[tuple[str, int], list[Record]]) -> None:
    # One records file over all points: concatenated per point with solver/capacity columns.
    parts = out / ".records-parts"
    lines: list[str] = []
    csv_rows: list[str] = []
    for index, ((solver, capacity), records) in enumerate(by_point.items()):
        part = parts / str(index)
        write_records(records, part, extra={"solver": solver, "capacity_mib": capacity})
        lines.append((part / "records.jsonl").read_text())
        text = (part / "records.csv").read_text().splitlines(keepends=True)
        csv_rows += text if not csv_rows else text[1:]
    atomic_write_text(out / "records.jsonl", "".join(lines))
    atomic_write_text(out / "records.csv", "".join(csv_rows))
    import shutil

    shutil.rmtree(parts, ignore_errors=True)
