"""`trimcache sim` through the real console entry: both objectives, both engines.

The cells of a sweep are independent and seeded, so where they run (``--engine local`` or
``ray``) must not change a row; only ``solve_seconds`` (a measured time) may differ between
any two runs.
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest

from tests.helpers import run_cli

SMALL = [
    "--values", "0.2,0.6", "--seeds", "0-1", "--servers", "3", "--users", "8",
    "--models-per-family", "2",
]  # fmt: skip


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize(
    ("args", "prefix", "values", "solvers", "metric_ok"),
    [
        (
            ["--sweep", "capacity", "--values", "0.1,0.4", "--seeds", "0-1", "--servers", "3",
             "--users", "8", "--models-per-family", "1"],
            "sim_capacity", ("0.1", "0.4"), ("trimcaching-gen", "independent", "popularity"),
            lambda r: 0.0 <= float(r["hit_ratio"]) <= 1.0,
        ),
        (
            ["--objective", "delay", "--sweep", "cluster", "--values", "1,2", "--servers", "2",
             "--users", "4", "--models-per-family", "1", "--slots", "2",
             "--archs", "resnet18,bert-base"],
            "delay_cluster", ("1.0", "2.0"), ("coarse", "delay-greedy"),
            lambda r: float(r["mean_s"]) > 0,
        ),
    ],
)  # fmt: skip
def test_sim_writes_csv_and_png(tmp_path, args, prefix, values, solvers, metric_ok):
    out = tmp_path / "sim"
    proc = run_cli("sim", *args, "--solvers", ",".join(solvers), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(out / f"{prefix}.csv"), str(out / f"{prefix}.png")]
    rows = _rows(out / f"{prefix}.csv")
    seeds = {r["seed"] for r in rows}
    assert sorted((r["value"], r["seed"], r["solver"]) for r in rows) == sorted(
        (v, seed, s) for v in values for seed in seeds for s in solvers
    )
    assert all(metric_ok(r) for r in rows)
    assert (out / f"{prefix}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--sweep", "weather"], "unknown sweep 'weather'"),
        (["--objective", "delay", "--sweep", "nope"], "unknown sweep 'nope'"),
        (["--objective", "delay", "--archs", "gpt9"], "'gpt9'"),
        (["--address", "127.0.0.1:1"], "--address: only with --engine ray"),
    ],
)
def test_sim_bad_options_are_one_line_exit_2(tmp_path, extra, needle):
    proc = run_cli("sim", *extra, "--out", str(tmp_path))
    assert proc.returncode == 2 and needle in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("ray") is None,
    reason="ray is not installed (pip install 'trimcache[ray]')",
)
def test_ray_engine_gives_the_local_csv(tmp_path):
    # One objective only: each run starts its own Ray (~6 s); both simulators share the engine.
    solvers = "trimcaching-gen,independent,popularity"
    out = {}
    for engine in ("local", "ray"):
        proc = run_cli(
            "sim", "--sweep", "capacity", "--solvers", solvers, *SMALL,
            "--engine", engine, "--out", str(tmp_path / engine),
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        out[engine] = _rows(tmp_path / engine / "sim_capacity.csv")
        for row in out[engine]:
            assert float(row.pop("solve_seconds")) >= 0.0
    assert len(out["local"]) == 2 * 2 * 3
    assert out["ray"] == out["local"]
