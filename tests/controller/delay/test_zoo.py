"""Delay problems over the real test zoo: PBs are core.group_by_sharing over core manifests."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from controller.delay import DELAY_SOLVERS, evaluate_delay
from controller.delay.scenario import DelayScenario, problem_from_library
from controller.delay.sim import run_delay_sweep
from controller.delay.zoo import library_from_zoo_manifests, zoo_manifests
from core import build_manifest, group_by_sharing
from tests.helpers import run_cli


@pytest.fixture(scope="module")
def manifests(zoo_dir):
    return zoo_manifests(zoo_dir)


def test_zoo_manifests_are_core_manifests_of_every_catalogue_repo(zoo_dir, manifests):
    catalogue = json.loads((zoo_dir / "zoo.json").read_text())
    assert [m.model_id for m in manifests] == [e["model_id"] for e in catalogue["models"]]
    # Spot-check one against core directly (the smallest repo: the LoRA adapter).
    small = min(manifests, key=lambda m: sum(m.block_sizes().values()))
    direct = build_manifest(
        zoo_dir / "repos" / small.repo_id, model_id=small.model_id, repo_id=small.repo_id
    )
    assert direct.block_sizes() == small.block_sizes()


def test_delay_problem_from_zoo_has_the_pb_sizes_of_group_by_sharing(manifests):
    groups = group_by_sharing(manifests)
    library = library_from_zoo_manifests(manifests)
    scenario = DelayScenario(n_servers=2, n_users=4, n_slots=2, capacity_gb=0.1)
    problem = problem_from_library(library, scenario, seed=0)
    assert dict(problem.blocks) == {g.pb_id: g.size_bytes for g in groups}
    for m in manifests:
        expected = {g.pb_id for g in groups if m.model_id in g.model_ids}
        assert set(problem.models[m.model_id]) == expected
        # every byte of the model's manifest is in exactly one of its PBs
        assert problem.model_bytes(m.model_id) == sum(m.block_sizes().values())
    # the fine-tuned classifiers share their frozen base layers with the base model
    shared = [g for g in groups if {"minilm-base", "bert-sst2", "bert-spam"} <= g.model_ids]
    assert shared and all(g.size_bytes > 0 for g in shared)
    r = DELAY_SOLVERS["delay-greedy"](problem)
    assert r.delay == evaluate_delay(problem, r.placement)
    for n, holding in r.servers.items():
        assert holding.used_bytes <= problem.servers[n].capacity


def test_sharing_sweep_is_refused_with_a_given_library(manifests):
    with pytest.raises(ValueError, match="sharing"):
        run_delay_sweep("sharing", library=library_from_zoo_manifests(manifests))


def test_sim_delay_with_zoo_writes_rows_over_zoo_models(zoo_dir: Path, tmp_path):
    out = tmp_path / "sim"
    proc = run_cli(
        "sim", "--objective", "delay", "--zoo", str(zoo_dir), "--sweep", "capacity",
        "--values", "0.05,0.2", "--servers", "2", "--users", "4", "--slots", "2",
        "--solvers", "coarse,delay-greedy", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    with (out / "delay_capacity.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["value"], r["solver"]) for r in rows} == {
        (v, s) for v in ("0.05", "0.2") for s in ("coarse", "delay-greedy")
    }
    # capacity binds: a 50 MB node cannot hold a whole 88 MB zoo model but can hold PBs
    small = {r["solver"]: int(r["used_bytes"]) for r in rows if r["value"] == "0.05"}
    assert small["coarse"] <= 2 * 50_000_000 and small["delay-greedy"] <= 2 * 50_000_000


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--objective", "delay", "--zoo", "/nonexistent"], "cannot read zoo.json"),
        (["--objective", "delay", "--zoo", "ZOO", "--sharing", "0.5"], "--zoo"),
        (["--objective", "hit", "--zoo", "ZOO"], "only with --objective delay"),
    ],
)
def test_sim_zoo_bad_options_are_one_line_exit_2(zoo_dir, tmp_path, extra, needle):
    args = [str(zoo_dir) if a == "ZOO" else a for a in extra]
    proc = run_cli("sim", *args, "--out", str(tmp_path / "o"))
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
