"""`trimcache sim --engine ray` gives the same CSV as the in-process engine (real Ray, local).

The cells of a sweep are independent and seeded, so where they run must not change a row;
only ``solve_seconds`` (a measured time) may differ between any two runs.
"""

from __future__ import annotations

import csv

import pytest

from tests.helpers import run_cli

pytest.importorskip("ray", reason="ray is not installed (pip install 'trimcache[ray]')")

SMALL = [
    "--values", "0.2,0.6", "--seeds", "0-1", "--servers", "3", "--users", "8",
    "--models-per-family", "2",
]  # fmt: skip


def _rows(path):
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        assert float(row.pop("solve_seconds")) >= 0.0
    return rows


def test_ray_engine_gives_the_local_csv(tmp_path):
    # One objective only: each run starts its own Ray (~6 s); both simulators share the engine.
    solvers = "trimcaching-gen,independent,popularity"
    out = {}
    for engine in ("local", "ray"):
        proc = run_cli(
            "sim", "--sweep", "capacity", "--solvers", solvers,
            *SMALL, "--engine", engine, "--out", str(tmp_path / engine),
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        out[engine] = _rows(tmp_path / engine / "sim_capacity.csv")
    assert len(out["local"]) == 2 * 2 * len(solvers.split(","))
    assert out["ray"] == out["local"]


def test_bad_engine_options_are_one_line_errors(tmp_path):
    proc = run_cli("sim", "--address", "127.0.0.1:1", "--out", str(tmp_path), *SMALL)
    assert proc.returncode != 0
    assert (
        proc.stderr.strip() == "trimcache: error: invalid input: --address: only with --engine ray"
    )
