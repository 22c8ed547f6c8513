"""Pull-through on real services: every edge answers the Hub API for every catalogued model.

Processes: redis-server, the origin (``trimcache origin serve``), the controller and two edge
nodes (``python -m edge_node``), each on an OS-assigned port. The controller indexes the whole
test zoo; plans pushed over HTTP place ``bert-sst2`` + ``minilm-lora-topic`` on edge-1 and
``bert-spam`` on edge-2, so every edge lacks most models and the others are held nowhere.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from huggingface_hub import hf_hub_download, snapshot_download
from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

from core.digest import BlockId, sha256_file
from core.manifest import BlockRef
from tests.client.services import AUTH, PLAN_SCHEMA, TOKEN, push_plan
from tests.edge_node.conftest import Cluster, edge_cluster, sha256_tree
from tests.faults import read_body
from tests.helpers import (
    PREDICT_SCRIPT,
    apply_plan,
    free_port,
    hf_env,
    last_json_line,
    live_server,
    run_python,
    wait_until,
)

pytestmark = pytest.mark.slow

HELD = {"edge-1": ["bert-sst2", "minilm-lora-topic"], "edge-2": ["bert-spam"]}
#: edge-1 keeps the default pull window (32 MiB); edge-2 streams in many small windows.
WINDOW_BYTES = {"edge-1": 32 << 20, "edge-2": 4 << 20}
CAPACITY_BYTES = 200_000_000
TTL_S = 0.5


@pytest.fixture(scope="module")
def cluster(
    zoo_dir: Path, redis_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    with edge_cluster(
        tmp_path_factory.mktemp("pull-through"),
        zoo_dir,
        redis_server,
        held=HELD,
        capacity_bytes=CAPACITY_BYTES,
        catalogue_ttl_s=TTL_S,
        edge={n: {"pull_window_bytes": w} for n, w in WINDOW_BYTES.items()},
    ) as running:
        yield running


def _buffered_files(data_dir: Path) -> list[Path]:
    return [p for p in (data_dir / "pull-buffer" / "blocks").rglob("*") if p.is_file()]


def test_every_edge_serves_every_catalogued_model(cluster: Cluster, tmp_path: Path) -> None:
    before = {n: cluster.stats(n) for n in cluster.edges}
    for node_id, url in cluster.edges.items():
        for model_id, repo_id in cluster.models.items():
            path = snapshot_download(repo_id, endpoint=url, cache_dir=tmp_path / node_id)
            got = sha256_tree(Path(path))
            assert got == sha256_tree(cluster.repo_dir(model_id)), (node_id, model_id)
    for node_id in cluster.edges:
        after = cluster.stats(node_id)
        # Nothing the plan does not place was kept, and nothing transient is left behind.
        assert after["physical_bytes"] == before[node_id]["physical_bytes"]
        assert after["bytes_pulled_kept"] == 0
        assert sorted(after["models"]) == sorted(HELD[node_id])
        assert _buffered_files(cluster.tmp / node_id) == []
        assert sum(after["bytes_pulled_by_source"].values()) > 0

    # Not in the catalogue: the Hub's own 404s, which huggingface_hub maps to its errors.
    edge = cluster.edges["edge-2"]
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download("trimcache-zoo/not-there", endpoint=edge, cache_dir=tmp_path / "x")
    r = httpx.get(f"{edge}/api/models/trimcache-zoo/not-there")
    assert r.status_code == 404 and r.headers["x-error-code"] == "RepoNotFound"
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(
            cluster.models["bert-question"],
            "config.json",
            revision="0" * 40,
            endpoint=edge,
            cache_dir=tmp_path / "y",
        )
    listed = {m["id"] for m in httpx.get(f"{edge}/api/models").json()}
    assert listed == set(cluster.models.values())


def test_a_missing_model_comes_from_the_peer_that_holds_it(cluster: Cluster) -> None:
    """edge-2 lacks bert-sst2; edge-1 holds it: every missing block comes over the peer link."""
    edge1, edge2 = cluster.edges["edge-1"], cluster.edges["edge-2"]
    sst2 = cluster.manifest("bert-sst2")
    entry = sst2.file("model.safetensors")
    held = cluster.held_blocks("edge-2")
    missing = {b.block_id: b.length for b in entry.blocks if b.block_id not in held}
    missing_bytes = sum(missing.values())
    assert missing_bytes > 0
    before = cluster.stats("edge-2")["bytes_pulled_by_source"]
    url = f"{edge2}/{sst2.repo_id}/resolve/main/model.safetensors"
    with httpx.stream("GET", url, timeout=60) as r:
        assert r.status_code == 200
        data = r.read()
    assert len(data) == entry.size and int(r.headers["content-length"]) == entry.size
    assert r.headers["etag"] == f'"{entry.sha256}"'
    assert r.headers["x-repo-commit"] == sst2.revision
    after = cluster.stats("edge-2")["bytes_pulled_by_source"]
    delta = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    assert delta == {edge1: missing_bytes}
    assert (cluster.repo_dir("bert-sst2") / "model.safetensors").read_bytes() == data


def test_transformers_loads_a_model_the_edge_does_not_hold(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The issue's failure: HF_ENDPOINT at an edge without the model (edge-2 lacks bert-sst2)."""
    result = run_python(PREDICT_SCRIPT, env=hf_env(cluster.edges["edge-2"], tmp_path / "hf-home"))
    assert last_json_line(result) == ["positive", "negative"]
    assert "bert-sst2" not in cluster.stats("edge-2")["models"]


def test_range_of_a_file_no_edge_holds(cluster: Cluster) -> None:
    edge = cluster.edges["edge-2"]
    question = cluster.manifest("bert-question")
    entry = question.file("model.safetensors")
    original = (cluster.repo_dir("bert-question") / "model.safetensors").read_bytes()
    url = f"{edge}/{question.repo_id}/resolve/main/model.safetensors"
    big = max(entry.blocks, key=lambda b: b.length)
    spans = [
        (100, 1_000_099),  # header and the first blocks
        (big.offset + 12_345, big.offset + big.length // 2),  # inside one block
        (entry.size - 5000, entry.size - 1),
    ]
    for first, last in spans:
        r = httpx.get(url, headers={"Range": f"bytes={first}-{last}"}, timeout=60)
        assert r.status_code == 206, r.text
        assert r.content == original[first : last + 1]
        assert r.headers["content-range"] == f"bytes {first}-{last}/{entry.size}"
        assert int(r.headers["content-length"]) == last - first + 1
        assert r.headers["etag"] == f'"{entry.sha256}"'
        assert r.headers["x-repo-commit"] == question.revision
    r = httpx.get(url, headers={"Range": "bytes=-5000"}, timeout=60)
    assert r.status_code == 206 and r.content == original[-5000:]
    r = httpx.get(url, headers={"Range": f"bytes={entry.size}-"})
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{entry.size}"
    head = httpx.head(url)
    assert head.status_code == 200 and int(head.headers["content-length"]) == entry.size
    assert head.headers["etag"] == f'"{entry.sha256}"'
    assert _buffered_files(cluster.tmp / "edge-2") == []


def _first_window(blocks: Sequence[BlockRef], held: set[str]) -> list[BlockRef]:
    """The blocks of the first pull window of edge-2 (as edge_node.pull cuts them: a window
    ends before the missing block that would take it past the window size)."""
    window: list[BlockRef] = []
    missing = 0
    for block in blocks:
        if block.block_id not in held:
            if missing and missing + block.length > WINDOW_BYTES["edge-2"]:
                break
            missing += block.length
        window.append(block)
    return window


def _lying_peer(sizes: dict[BlockId, int], served: list[int]) -> Any:
    """A peer that claims every block and answers batches with the right lengths and wrong
    bytes (a fault a real edge, which verifies what it sends, cannot produce)."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body, _ = await read_body(receive)
        ids = json.loads(body)["block_ids"] if scope["path"] == "/v1/blocks:batch" else []
        payload = b"".join(b"\x5a" * sizes[BlockId(b)] for b in ids)
        served.append(len(payload))
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(payload)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    return app


def test_corrupt_peer_blocks_are_never_delivered(cluster: Cluster, tmp_path: Path) -> None:
    base = cluster.manifest("minilm-base")
    held_somewhere = cluster.held_blocks("edge-1") | cluster.held_blocks("edge-2")
    blocks = base.file("model.safetensors").blocks
    only_origin = [b for b in blocks if b.block_id not in held_somewhere]
    assert only_origin
    served: list[int] = []
    with live_server(_lying_peer(base.block_sizes(), served)) as liar:
        body = {
            "url": liar,
            "capacity_bytes": 10**9,
            "position": [0.0, 0.0],
            "models": ["minilm-base"],
        }
        r = httpx.put(f"{cluster.controller}/v1/nodes/liar", json=body, headers=AUTH)
        assert r.status_code == 200, r.text
        try:
            wait_until(lambda: cluster.routes_to("minilm-base", {liar}))
            time.sleep(2 * TTL_S)  # the edges' cached routes expire
            edge = cluster.edges["edge-2"]
            before = cluster.stats("edge-2")["bytes_pulled_by_source"]
            path = hf_hub_download(
                base.repo_id, "model.safetensors", endpoint=edge, cache_dir=tmp_path / "ok"
            )
            # The liar was asked first, its bytes failed verification, other sources delivered.
            assert sum(served) > 0
            assert sha256_file(Path(path)) == base.file("model.safetensors").sha256
            after = cluster.stats("edge-2")["bytes_pulled_by_source"]
            assert liar not in after
            assert after.get(cluster.origin, 0) > before.get(cluster.origin, 0)

            # With the origin down, blocks only the liar offers come from nowhere valid: the
            # transfer fails and no file appears, rather than a complete wrong one.
            cluster.origin_process.stop()
            try:
                victim = max(only_origin, key=lambda b: b.length)
                url = f"{edge}/{base.repo_id}/resolve/main/model.safetensors"
                span = f"bytes={victim.offset}-{victim.offset + victim.length - 1}"
                served.clear()
                r = httpx.get(url, headers={"Range": span}, timeout=60)
                assert r.status_code == 502, r.text
                assert r.headers["x-error-code"] == "upstream_unavailable"
                assert sum(served) > 0
                # From a block where the first window holds no liar-only block: the status
                # line goes out, then the body is cut short where the liar-only blocks begin
                # (how much of the first window left first depends on the send batching).
                # Every byte delivered is right; the body never completes.
                entry = base.file("model.safetensors")
                held2 = cluster.held_blocks("edge-2")
                bad = {b.block_id for b in only_origin}

                def cut_short_from(i: int) -> bool:
                    window = _first_window(entry.blocks[i:], held2)
                    return not bad & {b.block_id for b in window} and bool(
                        bad & {b.block_id for b in entry.blocks[i:]}
                    )

                first = next(i for i in range(len(entry.blocks)) if cut_short_from(i))
                offset = entry.blocks[first].offset
                original = (cluster.repo_dir("minilm-base") / "model.safetensors").read_bytes()
                got = bytearray()
                headers = {"Range": f"bytes={offset}-"}
                with httpx.stream("GET", url, headers=headers, timeout=60) as r:
                    assert r.status_code == 206
                    with pytest.raises(httpx.RemoteProtocolError):
                        for chunk in r.iter_raw():
                            got += chunk
                assert len(got) < entry.size - offset
                assert bytes(got) == original[offset : offset + len(got)]
                with pytest.raises(Exception):  # noqa: B017 - any error, as long as it fails
                    hf_hub_download(
                        base.repo_id,
                        "model.safetensors",
                        endpoint=edge,
                        cache_dir=tmp_path / "down",
                    )
                assert not list((tmp_path / "down").rglob("model.safetensors"))
                assert _buffered_files(cluster.tmp / "edge-2") == []
            finally:
                cluster.origin_process.start()
        finally:
            httpx.delete(f"{cluster.controller}/v1/nodes/liar", headers=AUTH)


def test_concurrent_pulls_of_one_file(cluster: Cluster) -> None:
    question = cluster.manifest("bert-question")
    entry = question.file("model.safetensors")
    url = f"{cluster.edges['edge-1']}/{question.repo_id}/resolve/main/model.safetensors"
    digests: list[str] = []

    def download() -> None:
        with httpx.stream("GET", url, timeout=120) as r:
            assert r.status_code == 200
            digest = hashlib.sha256()
            for chunk in r.iter_bytes():
                digest.update(chunk)
        digests.append(digest.hexdigest())

    threads = [threading.Thread(target=download) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert digests == [entry.sha256] * 3
    assert _buffered_files(cluster.tmp / "edge-1") == []


def test_pulled_blocks_the_plan_places_are_kept(cluster: Cluster, tmp_path: Path) -> None:
    """A plan that failed half-way (its origin is down) leaves bert-sst2 placed but incomplete
    on edge-2; a Hub download pulls the missing blocks from edge-1 and keeps them."""
    edge2 = cluster.edges["edge-2"]
    before = cluster.stats("edge-2")
    spam, sst2 = cluster.manifest("bert-spam"), cluster.manifest("bert-sst2")
    missing = {b: n for b, n in sst2.block_sizes().items() if b not in spam.block_sizes()}
    plan = {
        "schema": PLAN_SCHEMA,
        "version": int(time.time() * 1000),
        "manifests": [spam.to_dict(), sst2.to_dict()],
        "peers": {},
        "origin_url": f"http://127.0.0.1:{free_port()}",  # nothing listens there
    }
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        r = apply_plan(edge2, plan, headers=auth)
        assert r.state == "failed" and r.result["error_code"] == "upstream_unavailable", r.status
        assert "bert-sst2" not in cluster.stats("edge-2")["models"]
        path = snapshot_download(sst2.repo_id, endpoint=edge2, cache_dir=tmp_path)
        assert sha256_tree(Path(path)) == sha256_tree(cluster.repo_dir("bert-sst2"))
        after = cluster.stats("edge-2")
        assert after["bytes_pulled_kept"] - before["bytes_pulled_kept"] == sum(missing.values())
        assert after["physical_bytes"] == before["physical_bytes"] + sum(missing.values())
        assert after["physical_bytes"] <= CAPACITY_BYTES
        assert "bert-sst2" in after["models"]
        assert _buffered_files(cluster.tmp / "edge-2") == []
    finally:
        push_plan(edge2, cluster.controller, cluster.origin, HELD["edge-2"])
    assert cluster.stats("edge-2")["physical_bytes"] == before["physical_bytes"]


def test_held_models_are_served_while_the_controller_is_down(
    cluster: Cluster, tmp_path: Path
) -> None:
    edge1 = cluster.edges["edge-1"]
    cluster.controller_process.stop()
    try:
        time.sleep(2 * TTL_S)  # cached catalogue answers expire
        for model_id in HELD["edge-1"]:
            repo_id = cluster.models[model_id]
            path = snapshot_download(repo_id, endpoint=edge1, cache_dir=tmp_path)
            assert sha256_tree(Path(path)) == sha256_tree(cluster.repo_dir(model_id))
        r = httpx.get(f"{edge1}/api/models/{cluster.models['bert-question']}")
        assert r.status_code == 502 and r.headers["x-error-code"] == "upstream_unavailable"
        assert "controller" in r.json()["error"]["message"]
    finally:
        cluster.controller_process.start()
