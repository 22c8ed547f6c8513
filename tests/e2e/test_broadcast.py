"""Broadcast of shared blocks on the process testbed, with real SDK clients (issue 17).

``trimcache testbed up --world FILE --broadcast-window-s W`` starts Redis, the origin (the
small test zoo), the controller and one edge node that emulates the world's radio
(edge_node.radio: the delay model's rate for the user area, one shared downlink). Three client
processes in ``area-1`` fetch the three sibling classifiers (``bert-sst2``, ``bert-spam``,
``bert-question``) at once with ``client.fetch_model``:

- broadcast on: every block is on the air once, shared by every client that needs it: the
  edge's group sizes are exactly how many of the three models hold each block, and its block
  airtime is the union's bytes at the area's rate; every client's files are byte-identical to
  the zoo's;
- a client SIGKILLed mid-broadcast leaves the other two complete and correct;
- broadcast off: every client's blocks are on the air for it alone (three times the shared).

The client processes and the world are ``bench/broadcast.py``'s (``python -m bench.broadcast``
runs the same scenario at several windows and reports fetch times).
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.broadcast import (
    FIGURES,
    MODELS,
    finish_client,
    holds_models,
    radio_stats,
    start_clients,
    world_file,
)
from core.digest import sha256_file
from core.manifest import ModelManifest
from tests.helpers import run_cli, start_testbed, still_running, wait_until

WINDOW_S = 3.0


def _files(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    }


def _radio(edge_url: str) -> dict[str, Any]:
    return radio_stats(edge_url)


def _manifests(edge_url: str) -> dict[str, ModelManifest]:
    return {
        m: ModelManifest.from_dict(
            httpx.get(f"{edge_url}/v1/models/{m}/manifest", timeout=30).json()
        )
        for m in MODELS
    }


def _clients(
    state: dict[str, Any], tmp: Path, models: tuple[str, ...]
) -> list[subprocess.Popen[str]]:
    """bench.broadcast's client processes, remembered so a failing test kills them."""
    procs = start_clients(state["controller_url"], tmp, models)
    _started.extend(procs)
    return procs


#: Every client process a test started (killed, by pid, if the test fails midway).
_started: list[subprocess.Popen[str]] = []


def _finish(proc: subprocess.Popen[str]) -> dict[str, Any]:
    return finish_client(proc)


def _zoo_files(zoo_dir: Path) -> dict[str, dict[str, str]]:
    catalogue = json.loads((zoo_dir / "zoo.json").read_text())
    repo_of = {m["model_id"]: m["repo_id"] for m in catalogue["models"]}
    return {m: _files(zoo_dir / "repos" / repo_of[m]) for m in MODELS}


def _up(tmp: Path, zoo_dir: Path, window_s: float) -> dict[str, Any]:
    world = world_file(tmp / "world.json")
    return start_testbed(
        tmp / "testbed", zoo_dir, edges=1, capacity_mb=512, timeout_s=180,
        extra=("--world", str(world), "--broadcast-window-s", f"{window_s:g}"),
    )  # fmt: skip


def _down(tmp: Path, pids: dict[str, int]) -> None:
    while _started:
        proc = _started.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    stopped = run_cli("testbed", "down", "--dir", str(tmp / "testbed"))
    assert stopped.returncode == 0, stopped.stderr
    assert still_running(pids) == []


def _ready(edge_url: str) -> None:
    wait_until(lambda: holds_models(edge_url, MODELS), timeout_s=300)


@pytest.mark.slow
def test_three_clients_share_each_block_once_and_survive_a_killed_one(
    tmp_path: Path, zoo_dir: Path
) -> None:
    state = _up(tmp_path, zoo_dir, WINDOW_S)
    try:
        edge_url = state["edge_urls"][0]
        _ready(edge_url)
        manifests = _manifests(edge_url)
        sizes = {b: n for m in manifests.values() for b, n in m.block_sizes().items()}
        holders = Counter(b for m in manifests.values() for b in m.block_sizes())
        assert max(holders.values()) == 3, "the sibling models share blocks"
        rate = json.loads((tmp_path / "world.json").read_text())["rates"]["edge-1"]["area-1"]
        expected_files = _zoo_files(zoo_dir)

        before = _radio(edge_url)
        results = [_finish(p) for p in _clients(state, tmp_path / "run-1", MODELS)]
        after = _radio(edge_url)
        for model, result in zip(MODELS, results, strict=True):
            assert _files(Path(result["path"])) == expected_files[model]
            assert {k for k, v in result["bytes_by_source"].items() if v} == {edge_url}, result
        # Every block on the air once, shared by exactly the clients whose model holds it.
        assert after["block_transmissions"] - before["block_transmissions"] == len(sizes)
        groups = Counter(holders.values())
        assert after["group_sizes"] == {str(k): v for k, v in sorted(groups.items())}, after
        assert after["mid_joins"] == 0
        figures = {k: after[k] for k in FIGURES}
        figures["fetch_s"] = [round(r["seconds"], 2) for r in results]
        print("broadcast on:", json.dumps(figures))  # the README's figures
        airtime = after["airtime_by_kind_s"]["block"] - before["airtime_by_kind_s"]["block"]
        assert airtime == pytest.approx(sum(sizes.values()) / rate, rel=1e-6)
        assert after["bytes_delivered"] - before["bytes_delivered"] == sum(
            n for m in manifests.values() for n in m.block_sizes().values()
        )

        # A client killed mid-broadcast: the other two still get complete, correct models.
        before = _radio(edge_url)
        procs = _clients(state, tmp_path / "run-2", MODELS)
        wait_until(
            lambda: _radio(edge_url)["bytes_delivered"] - before["bytes_delivered"] > 20_000_000,
            timeout_s=300,
        )
        procs[2].send_signal(signal.SIGKILL)
        procs[2].wait(timeout=30)
        for model, proc in zip(MODELS[:2], procs[:2], strict=True):
            assert _files(Path(_finish(proc)["path"])) == expected_files[model]
        assert _radio(edge_url)["members_left"] > before["members_left"]
    finally:
        _down(tmp_path, state["pids"])


@pytest.mark.slow
def test_without_broadcast_each_client_is_charged_its_own_airtime(
    tmp_path: Path, zoo_dir: Path
) -> None:
    state = _up(tmp_path, zoo_dir, 0.0)
    try:
        edge_url = state["edge_urls"][0]
        _ready(edge_url)
        manifests = _manifests(edge_url)
        per_client = [m.block_sizes() for m in manifests.values()]
        rate = json.loads((tmp_path / "world.json").read_text())["rates"]["edge-1"]["area-1"]
        expected_files = _zoo_files(zoo_dir)
        before = _radio(edge_url)
        results = [_finish(p) for p in _clients(state, tmp_path / "run", MODELS)]
        after = _radio(edge_url)
        for model, result in zip(MODELS, results, strict=True):
            assert _files(Path(result["path"])) == expected_files[model]
        transmissions = after["block_transmissions"] - before["block_transmissions"]
        assert transmissions == sum(len(blocks) for blocks in per_client)
        assert after["broadcast_groups"] == 0
        figures = {k: after[k] for k in FIGURES}
        figures["fetch_s"] = [round(r["seconds"], 2) for r in results]
        print("broadcast off:", json.dumps(figures))  # the README's figures
        airtime = after["airtime_by_kind_s"]["block"] - before["airtime_by_kind_s"]["block"]
        total = sum(n for blocks in per_client for n in blocks.values())
        assert airtime == pytest.approx(total / rate, rel=1e-6)
    finally:
        _down(tmp_path, state["pids"])
