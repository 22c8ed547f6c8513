"""On-demand edges (``EDGE_CACHE_POLICY=lru``) on the real test-profile testbed.

One testbed (Redis, origin, controller, one edge node with room for one model of the test zoo,
``testbed up --cache-policy lru``), real SDK fetches into fresh device caches:

- the controller plans nothing for the edge, and its route sends a client near the edge to it;
- the first fetch of a model is a miss: the edge pulls it through from the origin (the origin's
  counter grows, the client's report names the pulled bytes), and caches it;
- the second fetch of the same model is a hit: the origin's counter does not move, the edge
  answers ``X-TrimCache-Cache: hit``;
- fetching a second model that does not fit beside the first evicts the first (LRU), and every
  fetched file is byte-identical to the zoo's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from client import Client
from testbed import launcher
from tests.helpers import wait_until

FIRST, SECOND = "minilm-base", "bert-question"
MIB = 1024 * 1024


@pytest.fixture
def ondemand_testbed(tmp_path: Path, zoo_dir: Path) -> Iterator[dict[str, Any]]:
    state_dir = tmp_path / "tb"
    state = launcher.up(
        launcher.LaunchOptions(
            state_dir=state_dir,
            edges=1,
            zoo_dir=zoo_dir,
            capacity_bytes=100 * MIB,
            profile="test",
            cache_policy="lru",
            controller_port=0,
            timeout_s=120,
        )
    )
    try:
        yield state
    finally:
        launcher.down(state_dir)


def _stats(url: str) -> dict[str, Any]:
    stats: dict[str, Any] = httpx.get(f"{url}/v1/stats", timeout=10).raise_for_status().json()
    return stats


def _identical(repo_dir: Path, fetched: Path) -> bool:
    originals = sorted(p for p in repo_dir.rglob("*") if p.is_file())
    return bool(originals) and all(
        (fetched / p.relative_to(repo_dir)).is_file()
        and hashlib.sha256((fetched / p.relative_to(repo_dir)).read_bytes()).digest()
        == hashlib.sha256(p.read_bytes()).digest()
        for p in originals
    )


def test_lru_edge_turns_misses_into_hits_and_evicts(
    ondemand_testbed: dict[str, Any], tmp_path: Path, zoo_dir: Path
) -> None:
    state = ondemand_testbed
    controller, origin = state["controller_url"], state["origin_url"]
    [edge] = state["edges"]
    edge_url, area = edge["url"], edge["area_id"]
    nodes = httpx.get(f"{controller}/v1/nodes", timeout=10).json()["nodes"]
    assert [n["cache_policy"] for n in nodes] == ["lru"]
    placement = httpx.get(f"{controller}/v1/placement", timeout=10).json()
    assert placement["servers"] == {}  # nothing is planned for an on-demand node
    repos = {m["model_id"]: m for m in httpx.get(f"{controller}/v1/models").json()["models"]}
    runs = iter(range(100))

    def fetch(model_id: str) -> tuple[dict[str, Any], int]:
        """A fresh device cache fetches the model; returns its report and the origin's delta."""
        before = _stats(origin)["bytes_served"]
        with Client(
            controller_url=controller, cache_dir=tmp_path / f"dev-{next(runs)}", area_id=area
        ) as client:
            fetched = client.fetch(model_id, load=False)
        repo_dir = zoo_dir / "repos" / repos[model_id]["repo_id"]
        assert _identical(repo_dir, Path(fetched.path)), model_id
        return fetched.report, _stats(origin)["bytes_served"] - before

    # 1. A miss: the edge pulls the model through from the origin and keeps it.
    report, origin_delta = fetch(FIRST)
    assert report["bytes_by_kind"]["origin"] == 0  # the client only talked to the edge...
    assert report["bytes_by_kind"]["edge"] > 0
    assert sum(report["bytes_pulled_by_edges"].values()) > 0  # ...which missed
    assert origin_delta >= sum(report["bytes_pulled_by_edges"].values())
    stats = _stats(edge_url)
    assert stats["cache_misses"] >= 1
    assert stats["models"] == [FIRST]
    assert stats["physical_bytes"] <= 100 * MIB

    # 2. A hit: same model, new device: no byte from the origin, the edge says hit.
    hits_before = stats["cache_hits"]
    report, origin_delta = fetch(FIRST)
    assert origin_delta == 0
    assert report["bytes_pulled_by_edges"] == {}
    assert report["bytes_by_kind"]["edge"] == report["block_bytes"]  # every block, from the edge
    assert _stats(edge_url)["cache_hits"] > hits_before
    manifest = httpx.get(f"{edge_url}/v1/models/{FIRST}/manifest", timeout=10).json()
    block_id = manifest["files"][0]["blocks"][0][0]
    reply = httpx.post(
        f"{edge_url}/v1/blocks:batch",
        json={"block_ids": [block_id], "model_id": FIRST},
        timeout=10,
    )
    assert reply.status_code == 200
    assert reply.headers["X-TrimCache-Cache"] == "hit"
    assert reply.headers["X-TrimCache-Pulled-Bytes"] == "0"
    assert hashlib.sha256(reply.content).hexdigest() == block_id

    # 3. A second model does not fit beside the first: LRU evicts the first.
    report, origin_delta = fetch(SECOND)
    assert origin_delta > 0
    assert sum(report["bytes_pulled_by_edges"].values()) > 0
    stats = _stats(edge_url)
    assert stats["cache_evictions"] >= 1
    assert stats["models"] == [SECOND]
    assert stats["physical_bytes"] <= 100 * MIB

    # The controller learns what the edge holds from its heartbeats (routes name it).
    def routed() -> bool:
        nodes = httpx.get(f"{controller}/v1/nodes", timeout=10).json()["nodes"]
        return bool(nodes[0]["models"] == [SECOND])

    wait_until(routed, timeout_s=30)
