"""Broadcast across the edges of one CoMP cluster on the process testbed (issue 17 item 2).

``trimcache testbed up --edges 2 --world FILE --broadcast-window-s 3``: Redis, the origin (the
small test zoo), the controller and two edge processes of one cluster (``c1``), sharing the
cluster's airtime ledger and group registry (``EDGE_MEDIUM_DIR``). One SDK client process in
``area-1`` (next to edge-1) and one in ``area-2`` (next to edge-2) fetch the same model at once,
each from its own edge:

- every block goes on the cluster's medium once: the two edges' block transmissions sum to the
  model's blocks, the other edge follows each, and the block airtime summed over both edges is
  the model's bytes at the group's rate (the weakest member at the joint rate); each client's
  files are byte-identical to the zoo's and came from its own edge only;
- the edge that opened the groups reports them in its heartbeat (the controller keeps them for
  routing); it is then SIGKILLed mid-broadcast: the other edge takes its groups over
  and its client still gets a complete, correct model from it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from bench.broadcast import finish_client, holds_models, radio_stats, start_clients
from controller.live_groups import KEY
from core.manifest import ModelManifest
from core.world import Link, World
from testbed.topology import grid_topology
from testbed.world import build_world, write_world
from tests.e2e.test_broadcast import _files, _zoo_files
from tests.helpers import run_cli, start_testbed, wait_until

MODEL = "bert-sst2"
AREAS = ("area-1", "area-2")
WINDOW_S = 3.0

_started: list[subprocess.Popen[str]] = []


def _world(path: Path) -> Path:
    layout = grid_topology(2)
    doc = build_world(
        layout, clusters={"c1": ["edge-1", "edge-2"]}, backhaul=Link(None, 0.0),
        radio_latency_ms=0.0,
    )  # fmt: skip
    return write_world(path, doc)


def _clients(state: dict[str, Any], run: Path, areas: tuple[str, ...], name: str) -> list[Any]:
    procs = start_clients(state["controller_url"], run, [MODEL] * len(areas), areas, name=name)
    _started.extend(procs)
    return procs


def _replicate(state: dict[str, Any]) -> None:
    """No edge-to-edge relays in the planner's wireless model: area-2's hits must come from
    edge-2, so the hit-ratio plan puts the model on both edges (each has room for the zoo)."""
    controller = state["controller_url"]
    auth = {"Authorization": f"Bearer {state['auth_token']}"}
    doc = httpx.get(f"{controller}/v1/topology", timeout=30).json()
    doc["channel"] = {**doc.get("channel", {}), "neighbour_m": 0.0}
    r = httpx.put(f"{controller}/v1/topology", json=doc, headers=auth, timeout=30)
    assert r.status_code == 200, r.text
    r = httpx.post(f"{controller}/v1/placement:plan", headers=auth, timeout=120)
    assert r.status_code == 200, r.text


def _sum(radios: list[dict[str, Any]], key: str) -> float:
    return float(sum(r[key] for r in radios))


@pytest.mark.slow
def test_two_edges_of_a_cluster_share_each_block_and_survive_a_killed_leader(
    tmp_path: Path, zoo_dir: Path
) -> None:
    world_path = _world(tmp_path / "world.json")
    state = start_testbed(
        tmp_path / "testbed", zoo_dir, edges=2, capacity_mb=512, timeout_s=180,
        extra=("--world", str(world_path), "--broadcast-window-s", f"{WINDOW_S:g}"),
    )  # fmt: skip
    pids: dict[str, int] = state["pids"]
    try:
        urls: list[str] = state["edge_urls"]
        _replicate(state)
        wait_until(lambda: all(holds_models(u, [MODEL]) for u in urls), timeout_s=300)
        manifest = ModelManifest.from_dict(
            httpx.get(f"{urls[0]}/v1/models/{MODEL}/manifest", timeout=30).json()
        )
        sizes = manifest.block_sizes()
        total = sum(sizes.values())
        world = World.load(tmp_path / "testbed" / "world.json")
        both = ("edge-1", "edge-2")
        rate = min(world.rate(a, both, serving="edge-1") for a in AREAS)
        expected = _zoo_files(zoo_dir)[MODEL]

        before = [radio_stats(u) for u in urls]
        results = [finish_client(p) for p in _clients(state, tmp_path / "run-1", AREAS, "c")]
        after = [radio_stats(u) for u in urls]
        for url, result in zip(urls, results, strict=True):
            assert _files(Path(result["path"])) == expected
            assert {k for k, v in result["bytes_by_source"].items() if v} == {url}, result
        delta = {
            k: _sum(after, k) - _sum(before, k)
            for k in ("block_transmissions", "followed_blocks", "mid_joins", "bytes_delivered")
        }
        assert delta["mid_joins"] == 0, after
        assert delta["block_transmissions"] == len(sizes), after  # once across the cluster
        assert delta["followed_blocks"] == len(sizes), after
        assert delta["bytes_delivered"] == 2 * total
        airtime = sum(
            a["airtime_by_kind_s"]["block"] - b["airtime_by_kind_s"]["block"]
            for a, b in zip(after, before, strict=True)
        )
        assert airtime == pytest.approx(total / rate, rel=1e-6)
        print("cluster broadcast:", json.dumps({"airtime_s": airtime, "after": after}))

        # Round 2: edge-1 opens the groups (its client first), edge-2's client follows them;
        # edge-1 is SIGKILLed mid-broadcast.
        before2 = radio_stats(urls[1])
        first = _clients(state, tmp_path / "run-2", AREAS[:1], "a")
        wait_until(lambda: radio_stats(urls[0])["live_groups"] > 0, timeout_s=60)
        # Its heartbeat carried them to the controller (routing's live groups, in Redis).
        live = redis.Redis.from_url(state["redis_url"], decode_responses=True)
        reported = wait_until(lambda: str(live.hget(KEY, "edge-1") or ""), timeout_s=30)
        assert {row[0] for row in json.loads(reported)} <= set(sizes)
        second = _clients(state, tmp_path / "run-2", AREAS[1:], "b")

        def following() -> bool:
            delivered: int = radio_stats(urls[1])["bytes_delivered"]
            return delivered - int(before2["bytes_delivered"]) > 5_000_000

        wait_until(following, timeout_s=120)
        os.kill(pids["edge-1"], signal.SIGKILL)
        result = finish_client(second[0])
        assert _files(Path(result["path"])) == expected
        assert {k for k, v in result["bytes_by_source"].items() if v} == {urls[1]}, result
        survivor = radio_stats(urls[1])
        assert survivor["takeovers"] > before2["takeovers"], survivor
        first[0].kill()
        first[0].wait(timeout=30)
    finally:
        while _started:
            proc = _started.pop()
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        stopped = run_cli("testbed", "down", "--dir", str(tmp_path / "testbed"))
        assert stopped.returncode == 0, stopped.stderr
