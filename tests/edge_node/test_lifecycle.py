"""Restart (index rebuild, temp sweep, startup scrub), heartbeats, radio link emulation."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request

from tests.edge_node.conftest import AUTH, TOKEN, edge_nodes, plan_body
from tests.helpers import apply_plan, live_server, wait_until


def _block_path(data_dir: Path, block_id: str) -> Path:
    return data_dir / "blocks" / "sha256" / block_id[:2] / block_id


def test_restart_rebuilds_index_sweeps_temp_and_scrubs(manifests, origin_url, tmp_path):
    base = manifests["minilm-base"]
    with edge_nodes(tmp_path) as make:
        url, _ = make("edge-r", origin_url=origin_url)
        body = plan_body([base], version=7)
        assert apply_plan(url, body, headers=AUTH).applied
        before = httpx.get(f"{url}/v1/stats").json()
    # The node is down now.

    # Simulate a crash leftover and silent rot while the node is "down".
    data_dir = tmp_path / "edge-r"
    (data_dir / "tmp" / ".tmp-crashed").write_bytes(b"half a block")
    rotten_id, rotten_size = sorted(base.block_sizes().items(), key=lambda kv: kv[1])[-2]
    with open(_block_path(data_dir, rotten_id), "r+b") as fh:
        fh.seek(rotten_size // 3)
        fh.write(b"\x00\x01\x02")

    with edge_nodes(tmp_path) as make:
        url2, _ = make("edge-r", origin_url=origin_url)  # same data dir, fresh state
        assert not (data_dir / "tmp" / ".tmp-crashed").exists()
        plan = httpx.get(f"{url2}/v1/plan").json()
        assert plan["version"] == 7 and plan["status"] == "applied"

        def healed() -> bool:
            stats = httpx.get(f"{url2}/v1/stats").json()
            return bool(stats["repaired_blocks"] == 1 and stats["models"] == ["minilm-base"])

        wait_until(healed, timeout_s=30)
        after = httpx.get(f"{url2}/v1/stats").json()
        assert after["physical_bytes"] == before["physical_bytes"]
        assert after["corrupt_blocks"] == 1
        r = httpx.get(f"{url2}/v1/blocks/{rotten_id}")
        assert hashlib.sha256(r.content).hexdigest() == rotten_id


def test_tiny_blocks_are_rehashed_on_every_read(edge_factory, manifests, origin_url, tmp_path):
    base = manifests["minilm-base"]
    url, app = edge_factory("edge-t", origin_url=origin_url)
    assert apply_plan(url, plan_body([base]), headers=AUTH).applied
    tiny_id, tiny_size = next((b, n) for b, n in base.block_sizes().items() if 16 < n <= 4096)
    with open(_block_path(tmp_path / "edge-t", tiny_id), "r+b") as fh:
        fh.write(b"\xff\xfe")
    app.state.node.mark_trusted(tiny_id)  # even with an unchanged signature
    r = httpx.get(f"{url}/v1/blocks/{tiny_id}")
    assert r.status_code == 404 or hashlib.sha256(r.content).hexdigest() == tiny_id
    wait_until(lambda: httpx.head(f"{url}/v1/blocks/{tiny_id}").status_code == 200)


def test_heartbeat_reaches_the_controller(edge_factory, manifests, origin_url):
    received: list[tuple[str, dict[str, Any], str | None]] = []
    lock = threading.Lock()
    controller = FastAPI()

    @controller.put("/v1/nodes/{node_id}")
    async def heartbeat(node_id: str, request: Request) -> dict[str, str]:
        with lock:
            received.append((node_id, await request.json(), request.headers.get("authorization")))
        return {"status": "ok"}

    with live_server(controller) as controller_url:
        url, _ = edge_factory(
            "edge-h",
            controller_url=controller_url,
            heartbeat_interval_s=0.1,
            capacity_bytes=10**9,
            position_x_m=12.5,
            position_y_m=-3.0,
            public_url="http://edge-h.example:8001",
            origin_url=origin_url,
        )
        plan = plan_body([manifests["clf-a"]])
        assert apply_plan(url, plan, headers=AUTH).applied

        def saw_model() -> bool:
            with lock:
                return any(body["models"] == ["clf-a"] for _, body, _ in received)

        wait_until(saw_model, timeout_s=15)
    node_id, body, auth = received[-1]
    assert node_id == "edge-h" and auth == f"Bearer {TOKEN}"
    assert body["url"] == "http://edge-h.example:8001"
    assert body["capacity_bytes"] == 10**9 and body["position"] == [12.5, -3.0]
    assert body["physical_bytes"] == manifests["clf-a"].unique_bytes
    assert len(body["blocks_digest"]) == 64


def test_heartbeat_failures_are_not_fatal(edge_factory):
    url, app = edge_factory(
        "edge-x", controller_url="http://127.0.0.1:9", heartbeat_interval_s=0.05
    )
    wait_until(lambda: app.state.heartbeat.failures >= 2)
    assert httpx.get(f"{url}/healthz").json()["status"] == "ok"


def test_radio_link_emulation(edge_factory, manifests, origin_url):
    clf_a = manifests["clf-a"]
    block_id, size = max(clf_a.block_sizes().items(), key=lambda kv: kv[1])
    url, app = edge_factory(
        "edge-l", link_rate_bytes_per_s=size / 0.5, link_latency_ms=200, origin_url=origin_url
    )
    counters = app.state.link_counters
    assert apply_plan(url, plan_body([clf_a]), headers=AUTH).applied
    t0 = time.monotonic()
    r = httpx.get(f"{url}/v1/blocks/{block_id}", timeout=30)
    elapsed = time.monotonic() - t0
    assert hashlib.sha256(r.content).hexdigest() == block_id
    assert elapsed >= 0.65, elapsed  # 200 ms latency + ~500 ms at the emulated rate
    # Control/health paths are not delayed: counted by the middleware, not timed (load-proof).
    delayed = counters.delayed_requests
    assert httpx.get(f"{url}/healthz").status_code == 200
    assert counters.delayed_requests == delayed


def test_unexpected_errors_are_500_internal_without_traceback(edge_factory, monkeypatch):
    url, app = edge_factory("edge-e")

    def boom() -> dict[str, Any]:
        raise ZeroDivisionError("secret detail")

    monkeypatch.setattr(app.state.node, "stats", boom)
    r = httpx.get(f"{url}/v1/stats")
    assert r.status_code == 500
    assert r.headers["x-error-code"] == "internal"
    assert r.json() == {"error": {"code": "internal", "message": "internal server error"}}
    assert "secret" not in r.text and "Traceback" not in r.text
    # Unknown routes and methods use the same error shape.
    r = httpx.get(f"{url}/v2/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = httpx.delete(f"{url}/v1/stats")
    assert r.status_code == 405 and r.headers["x-error-code"] == "method_not_allowed"


def test_durable_plan_apply_syncs_once(edge_factory, manifests, origin_url, monkeypatch):
    import core.store

    fsyncs: list[int] = []
    syncs: list[Path] = []
    real_fsync, real_sync = os.fsync, core.store.sync_filesystem

    def fsync(fd: int) -> None:
        fsyncs.append(fd)
        real_fsync(fd)

    def sync_filesystem(path: Path) -> None:
        syncs.append(path)
        real_sync(path)

    url, _ = edge_factory("edge-durable", durable=True)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(core.store, "sync_filesystem", sync_filesystem)
    placed = manifests["clf-a"]
    r = apply_plan(url, plan_body([placed], origin_url=origin_url), headers=AUTH)
    assert r.applied, r.status
    blocks = placed.block_sizes()
    assert len(syncs) == 1  # the whole plan
    assert len(fsyncs) < len(blocks) / 4  # manifests and the plan record, not every block
    block_id = max(blocks, key=lambda b: blocks[b])
    served = httpx.get(f"{url}/v1/blocks/{block_id}", timeout=30)
    assert hashlib.sha256(served.content).hexdigest() == block_id
