"""Serving blocks, manifests and the Hub API from one node; bad input gets the right errors."""

from __future__ import annotations

import hashlib

import httpx
import pytest

from core.manifest import ModelManifest
from tests.edge_node.conftest import AUTH, edge_nodes, plan_body
from tests.helpers import apply_plan


@pytest.fixture(scope="module")
def node_a(tmp_path_factory, manifests, origin_url):
    with edge_nodes(tmp_path_factory.mktemp("serving")) as make:
        url, app = make("edge-a")
        placed = [manifests["minilm-base"], manifests["clf-a"]]
        body = plan_body(placed, origin_url=origin_url)
        r = apply_plan(url, body, headers=AUTH)
        assert r.applied, r.status
        yield url, app


def _blocks_by_size(manifest: ModelManifest) -> list[tuple[str, int]]:
    return sorted(manifest.block_sizes().items(), key=lambda kv: kv[1])


def test_block_get_head_range(node_a, manifests):
    url, _ = node_a
    base = manifests["minilm-base"]
    for block_id, size in [_blocks_by_size(base)[-1], _blocks_by_size(base)[len(base.files)]]:
        r = httpx.get(f"{url}/v1/blocks/{block_id}")
        assert r.status_code == 200
        assert hashlib.sha256(r.content).hexdigest() == block_id
        assert r.headers["etag"] == f'"{block_id}"'
        assert int(r.headers["content-length"]) == size
        h = httpx.head(f"{url}/v1/blocks/{block_id}")
        assert h.status_code == 200 and int(h.headers["content-length"]) == size
        part = httpx.get(f"{url}/v1/blocks/{block_id}", headers={"Range": "bytes=10-19"})
        assert part.status_code == 206
        assert part.content == r.content[10:20]
        assert part.headers["content-range"] == f"bytes 10-19/{size}"
        tail = httpx.get(f"{url}/v1/blocks/{block_id}", headers={"Range": "bytes=-7"})
        assert tail.status_code == 206 and tail.content == r.content[-7:]
        bad = httpx.get(f"{url}/v1/blocks/{block_id}", headers={"Range": f"bytes={size}-"})
        assert bad.status_code == 416
        assert bad.headers["x-error-code"] == "range_not_satisfiable"


def test_batch_streams_blocks_in_request_order(node_a, manifests):
    url, _ = node_a
    ids = list(manifests["clf-a"].block_sizes())[::-1]
    ids.append(ids[0])  # repeats are allowed
    r = httpx.post(f"{url}/v1/blocks:batch", json={"block_ids": ids}, timeout=30)
    assert r.status_code == 200
    sizes = manifests["clf-a"].block_sizes()
    offset = 0
    for block_id in ids:
        chunk = r.content[offset : offset + sizes[block_id]]
        assert hashlib.sha256(chunk).hexdigest() == block_id
        offset += sizes[block_id]
    assert offset == len(r.content) == int(r.headers["content-length"])


def test_models_and_manifest(node_a, manifests):
    url, _ = node_a
    models = httpx.get(f"{url}/v1/models").json()["models"]
    assert [m["model_id"] for m in models] == ["clf-a", "minilm-base"]
    assert models[0]["repo_id"] == "trimcache-zoo/clf-a"
    assert models[0]["revision"] == manifests["clf-a"].revision
    r = httpx.get(f"{url}/v1/models/clf-a/manifest")
    assert r.status_code == 200
    assert r.text == manifests["clf-a"].to_json()


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/v1/blocks/abc", 400, "invalid_block_id"),
        ("/v1/blocks/" + "A" * 64, 400, "invalid_block_id"),
        ("/v1/blocks/..%2F..%2Fetc%2Fpasswd", 400, "invalid_block_id"),
        ("/v1/blocks/" + "0" * 63 + "/x", 400, "invalid_block_id"),
        ("/v1/blocks/" + "0" * 64, 404, "block_not_found"),
        ("/v1/models/nope/manifest", 404, "model_not_found"),
        ("/v1/models/..%2Fx/manifest", 404, "not_found"),
        ("/api/models/trimcache-zoo/nope", 404, "RepoNotFound"),
        ("/api/models/trimcache-zoo/clf-a/revision/" + "f" * 40, 404, "RevisionNotFound"),
        ("/trimcache-zoo/clf-a/resolve/main/nope.bin", 404, "EntryNotFound"),
        ("/trimcache-zoo/clf-b/resolve/main/config.json", 404, "RepoNotFound"),
    ],
)
def test_bad_reads(node_a, path, status, code):
    url, _ = node_a
    r = httpx.get(f"{url}{path}")
    assert r.status_code == status, r.text
    assert r.headers["x-error-code"] == code
    assert "code" in r.json()["error"] and "message" in r.json()["error"]


def test_batch_rejects_before_any_byte(node_a, manifests):
    url, _ = node_a
    good = list(manifests["clf-a"].block_sizes())[:3]
    r = httpx.post(f"{url}/v1/blocks:batch", json={"block_ids": [*good, "f" * 64]})
    assert r.status_code == 404 and r.headers["x-error-code"] == "block_not_found"
    r = httpx.post(f"{url}/v1/blocks:batch", json={"block_ids": [*good, "../x"]})
    assert r.status_code == 400 and r.headers["x-error-code"] == "invalid_block_id"
    r = httpx.post(f"{url}/v1/blocks:batch", json={"ids": good})
    assert r.status_code == 422


def test_hub_api_resolve(node_a, manifests, edge_zoo):
    url, _ = node_a
    manifest = manifests["clf-a"]
    info = httpx.get(f"{url}/api/models/trimcache-zoo/clf-a").json()
    assert info["sha"] == manifest.revision
    assert sorted(s["rfilename"] for s in info["siblings"]) == [f.path for f in manifest.files]
    tree = httpx.get(f"{url}/api/models/trimcache-zoo/clf-a/tree/{manifest.revision}").json()
    assert {e["path"] for e in tree} == {f.path for f in manifest.files}
    src = edge_zoo[1]["trimcache-zoo/clf-a"] / "model.safetensors"
    data = src.read_bytes()
    entry = manifest.file("model.safetensors")
    for rev in ("main", manifest.revision):
        head = httpx.head(f"{url}/trimcache-zoo/clf-a/resolve/{rev}/model.safetensors")
        assert head.status_code == 200
        assert head.headers["etag"] == f'"{entry.sha256}"'
        assert head.headers["x-repo-commit"] == manifest.revision
        assert int(head.headers["content-length"]) == len(data)
        assert head.headers["accept-ranges"] == "bytes"
    # A range spanning the header and several blocks.
    lo, hi = 100, len(entry.header) + 3_000_000
    r = httpx.get(
        f"{url}/trimcache-zoo/clf-a/resolve/main/model.safetensors",
        headers={"Range": f"bytes={lo}-{hi}"},
    )
    assert r.status_code == 206 and r.content == data[lo : hi + 1]
    whole = httpx.get(f"{url}/trimcache-zoo/clf-a/resolve/main/model.safetensors", timeout=30)
    assert hashlib.sha256(whole.content).hexdigest() == entry.sha256


def test_hub_errors_map_to_huggingface_hub_exceptions(node_a, tmp_path):
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    url, _ = node_a
    kwargs = {"endpoint": url, "cache_dir": tmp_path}
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("trimcache-zoo/nope", "config.json", **kwargs)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("trimcache-zoo/clf-a", "nope.json", **kwargs)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("trimcache-zoo/clf-a", "config.json", revision="v9", **kwargs)


def test_stats_metrics_health(node_a, manifests):
    url, _ = node_a
    held = next(iter(manifests["clf-a"].block_sizes()))
    assert httpx.get(f"{url}/v1/blocks/{held}").status_code == 200  # a hit of this test's own
    big, _ = _blocks_by_size(manifests["clf-a"])[-1]  # over 1 MiB: goes out with sendfile
    assert httpx.get(f"{url}/v1/blocks/{big}", timeout=60).status_code == 200
    httpx.get(f"{url}/v1/blocks/" + "0" * 64)  # and a miss
    stats = httpx.get(f"{url}/v1/stats").json()
    for key in (
        "node_id capacity_bytes physical_bytes logical_bytes dedup_ratio savings blocks "
        "models bytes_served bytes_ingested_by_source requests errors"
    ).split():
        assert key in stats, key
    assert stats["errors"] >= 1 and stats["requests"] >= 2
    assert stats["misses"] >= 1 and stats["hits"] >= 1
    assert stats["blocks"] == len(
        set(manifests["minilm-base"].block_sizes()) | set(manifests["clf-a"].block_sizes())
    )
    metrics = httpx.get(f"{url}/metrics")
    assert metrics.status_code == 200
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.text.splitlines()
        if line and not line.startswith("#")
    }
    assert samples['edge_physical_bytes{node_id="edge-a"}'] == stats["physical_bytes"]
    assert "edge_requests_total" in metrics.text
    # Large trusted blocks went out with sendfile (uvicorn + asyncio offers it), but for the
    # last 64 KiB of each, read and checked.
    assert 0 < stats["bytes_sent_zerocopy"] <= stats["bytes_served"]
    health = httpx.get(f"{url}/healthz").json()
    assert health == {"status": "ok", "node_id": "edge-a"}


def test_client_going_away_mid_body_does_not_hurt_the_node(node_a, manifests):
    url, _ = node_a
    block_id, size = _blocks_by_size(manifests["minilm-base"])[-1]
    ids = list(manifests["clf-a"].block_sizes())
    resolve = f"{url}/trimcache-zoo/clf-a/resolve/main/model.safetensors"
    for _ in range(3):
        with httpx.Client() as client:
            with client.stream("GET", f"{url}/v1/blocks/{block_id}") as r:
                next(r.iter_raw(65536))
            with client.stream("POST", f"{url}/v1/blocks:batch", json={"block_ids": ids}) as r:
                next(r.iter_raw(65536))
            with client.stream("GET", resolve) as r:
                next(r.iter_raw(65536))
    r = httpx.get(f"{url}/v1/blocks/{block_id}", timeout=30)
    assert r.status_code == 200 and len(r.content) == size
    assert hashlib.sha256(r.content).hexdigest() == block_id


def test_one_connection_carries_many_bodies(node_a, manifests, edge_zoo):
    # Bodies written straight to the socket (edge_node.direct) leave the connection as they
    # found it: the next requests on it (bodies, JSON, a HEAD) get whole, right answers.
    url, _ = node_a
    manifest = manifests["clf-a"]
    blocks = list(manifest.block_sizes().items())
    ids = [b for b, _ in blocks]
    data = (edge_zoo[1]["trimcache-zoo/clf-a"] / "model.safetensors").read_bytes()
    resolve = f"{url}/trimcache-zoo/clf-a/resolve/main/model.safetensors"
    ports = set()
    with httpx.Client(timeout=60) as client:
        for _ in range(2):
            for block_id, size in blocks[:3] + blocks[-3:]:
                r = client.get(f"{url}/v1/blocks/{block_id}")
                assert len(r.content) == size
                assert hashlib.sha256(r.content).hexdigest() == block_id
            r = client.post(f"{url}/v1/blocks:batch", json={"block_ids": ids})
            offset = 0
            for block_id, size in blocks:
                chunk = r.content[offset : offset + size]
                assert hashlib.sha256(chunk).hexdigest() == block_id
                offset += size
            assert offset == len(r.content)
            assert client.get(resolve).content == data
            assert client.head(resolve).headers["content-length"] == str(len(data))
            assert client.get(f"{url}/healthz").json()["status"] == "ok"
            ports.add(r.extensions["network_stream"].get_extra_info("client_addr"))
    assert len(ports) == 1  # every request went over the one kept-alive connection
