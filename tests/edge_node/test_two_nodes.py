"""Origin + two edge nodes: ingest only unique bytes, migrate between nodes, serve HF snapshots."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx

from core.digest import BlockId
from core.manifest import ModelManifest
from tests.edge_node.conftest import AUTH, plan_body
from tests.helpers import apply_plan


def _unique_bytes(manifests: list[ModelManifest]) -> int:
    sizes: dict[BlockId, int] = {}
    for m in manifests:
        sizes.update(m.block_sizes())
    return sum(sizes.values())


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_plan_origin_then_peer_migration_and_snapshot(
    edge_factory, edge_zoo, origin_url, manifests, origin_bytes, tmp_path
):
    from huggingface_hub import snapshot_download

    placed = [manifests["minilm-base"], manifests["clf-a"], manifests["clf-b"]]
    unique = _unique_bytes(placed)
    logical = sum(m.total_bytes for m in placed)
    url_a, _ = edge_factory("edge-a")
    url_b, _ = edge_factory("edge-b")

    # Node A: everything from the origin, each distinct block exactly once.
    body = plan_body(placed, origin_url=origin_url)
    r = apply_plan(url_a, body, headers=AUTH)
    assert r.applied, r.status
    result = r.result
    assert result["status"] == "applied"
    assert result["fetched_bytes_by_source"] == {origin_url: unique}
    assert sorted(result["held_models"]) == ["clf-a", "clf-b", "minilm-base"]
    assert origin_bytes() == unique

    stats = httpx.get(f"{url_a}/v1/stats").json()
    assert stats["physical_bytes"] == unique
    assert stats["logical_bytes"] == logical
    assert stats["savings"] == 1 - unique / logical
    assert stats["savings"] > 0.5  # three models, mostly one shared base
    assert stats["dedup_ratio"] > 2
    assert stats["bytes_ingested_by_source"] == {origin_url: unique}

    # Applying the same plan again moves nothing.
    again = apply_plan(url_a, body, headers=AUTH).result
    assert again["fetched_bytes_by_source"] == {} and again["evicted_bytes"] == 0
    assert origin_bytes() == unique

    # Node B: the same plan with A as the peer of every block -> zero origin bytes.
    peers = {b: [url_a] for m in placed for b in m.block_sizes()}
    body_b = plan_body(placed, origin_url=origin_url, peers=peers, version=2)
    r = apply_plan(url_b, body_b, headers=AUTH)
    assert r.applied, r.status
    assert r.result["fetched_bytes_by_source"] == {url_a: unique}
    assert origin_bytes() == unique
    plan_state = httpx.get(f"{url_b}/v1/plan").json()
    assert plan_state["version"] == 2 and plan_state["status"] == "applied"
    assert plan_state["progress"]["bytes_done"] == unique

    models = httpx.get(f"{url_b}/v1/models").json()["models"]
    assert {m["model_id"]: m["logical_bytes"] for m in models} == {
        m.model_id: m.total_bytes for m in placed
    }

    # An unmodified huggingface_hub client gets byte-identical files from B.
    _, repos = edge_zoo
    for manifest in placed:
        out = Path(
            snapshot_download(manifest.repo_id, endpoint=url_b, cache_dir=tmp_path / "hf-cache")
        )
        src = repos[manifest.repo_id]
        files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
        assert files == sorted(f.path for f in manifest.files)
        for rel in files:
            assert _sha256(out / rel) == _sha256(src / rel), rel
    assert origin_bytes() == unique
