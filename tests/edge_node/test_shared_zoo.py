"""The two-node scenario on the shared test zoo (``zoo_dir``), then transformers via HF_ENDPOINT."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import pytest

from core.blocks import build_manifest
from core.digest import BlockId
from tests.edge_node.conftest import AUTH, TOKEN, plan_body
from tests.helpers import (
    PREDICT_SCRIPT,
    apply_plan,
    hf_env,
    last_json_line,
    live_server,
    run_python,
)

MODELS = ("bert-sst2", "bert-spam", "minilm-lora-topic")


@pytest.mark.slow
def test_shared_zoo_origin_then_peer_then_snapshot(zoo_dir: Path, edge_factory, tmp_path):
    from huggingface_hub import snapshot_download

    from testbed.origin import create_app as create_origin

    catalogue = {m["model_id"]: m for m in json.loads((zoo_dir / "zoo.json").read_text())["models"]}
    with live_server(create_origin(zoo_dir, auth_token=TOKEN)) as origin_url:
        manifests = []
        for model_id in MODELS:
            repo_id = catalogue[model_id]["repo_id"]
            info = httpx.get(f"{origin_url}/api/models/{repo_id}").json()
            manifests.append(
                build_manifest(
                    zoo_dir / "repos" / repo_id,
                    model_id=model_id,
                    repo_id=repo_id,
                    revision=info["sha"],
                )
            )
        unique: dict[BlockId, int] = {}
        for m in manifests:
            unique.update(m.block_sizes())
        unique_bytes = sum(unique.values())

        url_a, _ = edge_factory("edge-a")
        url_b, _ = edge_factory("edge-b")
        httpx.post(f"{origin_url}/v1/stats/reset", headers=AUTH).raise_for_status()
        r = apply_plan(url_a, plan_body(manifests, origin_url=origin_url), headers=AUTH)
        assert r.applied, r.status
        assert httpx.get(f"{origin_url}/v1/stats").json()["bytes_served"] == unique_bytes
        peers: dict[str, list[str]] = {b: [url_a] for b in unique}
        r = apply_plan(
            url_b, plan_body(manifests, origin_url=origin_url, peers=peers, version=2), headers=AUTH
        )
        assert r.applied, r.status
        assert r.result["fetched_bytes_by_source"] == {url_a: unique_bytes}
        assert httpx.get(f"{origin_url}/v1/stats").json()["bytes_served"] == unique_bytes

        stats = httpx.get(f"{url_b}/v1/stats").json()
        assert stats["physical_bytes"] == unique_bytes
        assert stats["logical_bytes"] == sum(m.total_bytes for m in manifests)
        assert stats["savings"] > 0.3

        for manifest in manifests:
            out = Path(snapshot_download(manifest.repo_id, endpoint=url_b, cache_dir=tmp_path))
            src = zoo_dir / "repos" / manifest.repo_id
            for entry in manifest.files:
                got = hashlib.sha256((out / entry.path).read_bytes()).hexdigest()
                assert got == hashlib.sha256((src / entry.path).read_bytes()).hexdigest()

        # Unmodified transformers with HF_ENDPOINT=<edge> loads and runs bert-sst2.
        result = run_python(PREDICT_SCRIPT, env=hf_env(url_b, tmp_path / "hf-home"))
        assert last_json_line(result) == ["positive", "negative"]
