"""The experiment runner on the real test-profile testbed, and its pure parts.

The slow test runs ``trimcache experiment compare`` for two solvers at one capacity (a real
testbed per point: Redis, origin, controller, two edge nodes; real SDK fetches) and checks the
records against the services' own counters: a hit is counted only when every byte came from
edge nodes within the deadline, the bytes per source add up to what the edges and the origin
say they served, and every rebuilt file is byte-identical to the zoo's.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from testbed.experiment import (
    ExperimentConfig,
    ExperimentError,
    build_workload,
    percentile,
    popularity,
)
from tests.helpers import run_cli

MODELS = ["bert-question", "bert-spam", "bert-sst2", "minilm-base"]
CATALOGUE = [*MODELS, "minilm-lora-topic"]


def test_workload_is_seeded_and_follows_the_controllers_prior() -> None:
    config = ExperimentConfig(seed=3, requests=3000, users_per_area=2)
    areas = ["area-1", "area-2"]
    first = build_workload(config, area_ids=areas, model_ids=MODELS, catalogue=CATALOGUE)
    again = build_workload(config, area_ids=areas, model_ids=MODELS, catalogue=CATALOGUE)
    other = build_workload(
        ExperimentConfig(seed=4, requests=3000), area_ids=areas, model_ids=MODELS,
        catalogue=CATALOGUE,
    )  # fmt: skip
    assert first == again
    assert first != other
    rows = popularity(areas, MODELS, CATALOGUE)
    for area in areas:
        assert abs(sum(rows[area].values()) - 1) < 1e-9
        drawn = Counter(r.model_id for r in first if r.area_id == area)
        n = sum(drawn.values())
        assert n > 1000  # areas drawn uniformly
        for model in MODELS:
            assert abs(drawn[model] / n - rows[area][model]) < 0.05, (area, model)
    # Areas rank models differently (the controller's per-area hash ranking).
    assert rows["area-1"] != rows["area-2"]
    assert {r.user.split("/")[0] for r in first} == set(areas)


def test_trace_replays_in_order_and_rejects_unknown_models(tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    trace.write_text(
        '{"area_id": "area-1", "model_id": "bert-sst2"}\n\n'
        '{"area_id": "area-2", "model_id": "bert-spam", "user": "bob"}\n'
    )
    config = ExperimentConfig(popularity="trace", trace_file=str(trace), requests=10)
    got = build_workload(config, area_ids=["area-1", "area-2"], model_ids=MODELS)
    assert [(r.area_id, r.model_id, r.user) for r in got] == [
        ("area-1", "bert-sst2", "area-1/u0"),
        ("area-2", "bert-spam", "bob"),
    ]
    trace.write_text('{"area_id": "area-1", "model_id": "nope"}\n')
    with pytest.raises(ExperimentError, match="unknown model 'nope'"):
        build_workload(config, area_ids=["area-1"], model_ids=MODELS)


def test_config_rejects_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text('{"requests": 5, "bogus": 1}')
    with pytest.raises(ExperimentError, match="unknown config keys: bogus"):
        ExperimentConfig.load(path)
    with pytest.raises(ExperimentError, match="device_cache"):
        ExperimentConfig(device_cache="hot")  # type: ignore[arg-type]
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.95) == 4.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0


def test_cli_bad_config_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text("[1, 2]")
    result = run_cli(
        "experiment", "compare", str(path), "--out", str(tmp_path / "o"),
        "--solvers", "trimcaching-gen", "--capacities", "100",
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "must be a JSON object" in result.stderr


@pytest.mark.slow
def test_compare_two_solvers_records_match_the_services_counters(
    tmp_path: Path, zoo_dir: Path
) -> None:
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "seed": 1,
                "requests": 30,
                "concurrency": 2,
                "device_cache": "fresh",
                "users_per_area": 3,
                "models": MODELS,
            }
        )  # fmt: skip
    )
    out = tmp_path / "out"
    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg"), "TRIMCACHE_ZOO_CACHE": str(zoo_dir.parent)}
    result = run_cli(
        "experiment", "compare", str(config), "--out", str(out),
        "--solvers", "trimcaching-gen,independent", "--capacities", "105",
        "--profile", "test", "--edges", "2", env=env, timeout_s=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    doc = json.loads((out / "points.json").read_text())
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    with (out / "records.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == len(records) == 60
    points = {p["solver"]: p for p in doc["points"]}
    assert set(points) == {"trimcaching-gen", "independent"}
    saw_hit = saw_miss = False
    for solver, point in points.items():
        mine = [r for r in records if r["solver"] == solver]
        assert len(mine) == point["requests"] == 30
        # Same seeded workload for each solver.
        assert [(r["area_id"], r["model_id"]) for r in mine] == [
            (r["area_id"], r["model_id"]) for r in records if r["solver"] == "independent"
        ]
        # Nothing re-planned mid-run, so every byte served belongs to a recorded fetch.
        assert point["placement_version_before"] == point["placement_version_after"]
        for r in mine:
            assert r["error"] is None and r["verified"] is True, r
            assert r["placement_version"] == point["placement_version_before"], r
            total = sum(r["bytes_by_source"].values())
            assert total == r["edge_bytes"] + r["origin_bytes"] + r["local_bytes"] > 0
            from_edges_only = r["origin_bytes"] == 0 and r["edge_bytes"] == total
            assert r["hit"] == (from_edges_only and r["download_s"] <= r["deadline_s"]), r
            # The placement problem's verdict for this very request matches the testbed's.
            assert r["predicted_hit"] == r["hit"], r
            saw_hit |= r["hit"]
            saw_miss |= not r["hit"]
        # Per source, the records add up to the services' own served-bytes counters.
        served = point["served_delta"]
        for source, counted in served.items():
            assert sum(r["bytes_by_source"].get(source, 0) for r in mine) == counted, source
        assert served["origin"] == point["origin_bytes"]
        assert point["hits"] == sum(r["hit"] for r in mine)
        assert 0.0 <= point["predicted_hit_ratio"] <= 1.0
        assert point["gap"] == pytest.approx(point["hit_ratio"] - point["predicted_hit_ratio"])
    assert saw_hit and saw_miss
    # At 105 MiB a node fits two models that share blocks, one model alone otherwise.
    assert points["trimcaching-gen"]["models_placed"] > points["independent"]["models_placed"]
    report = (out / "report.md").read_text()
    assert "trimcaching-gen" in report and "experiment compare" in report
    assert (out / "experiment_hit_ratio.png").stat().st_size > 0
