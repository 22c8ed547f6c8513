"""The emulated CoMP downlink (edge_node.radio) on a real edge server: airtime and broadcast.

The node holds a synthetic model (four distinct 6 MB tensor blocks) written straight into its
store; the world is the testbed's one-edge layout (testbed/world.py, rates from the delay model).
Three requests for the same blocks at once share one transmission per block with a broadcast
window (airtime charged once), and are charged three times without one; every body is the
blocks' bytes.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from controller.delay.problem import Channel
from core.blocks import build_manifest
from core.manifest import ModelManifest
from core.store import BlockStore
from core.world import World
from edge_node.radio import AirtimeLedger
from testbed.topology import grid_topology
from testbed.world import build_world, write_world
from tests.edge_node.conftest import edge_nodes

TENSOR_ELEMS = 1_500_000  # float32: 6 MB per block
REPO_ID = "synthetic/radio-model"


def _write_model(repo: Path) -> None:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(11)
    tensors = {
        f"layer.{i}.weight": rng.standard_normal(TENSOR_ELEMS).astype(np.float32) for i in range(4)
    }
    repo.mkdir(parents=True)
    save_file(tensors, str(repo / "model.safetensors"), metadata={"format": "pt"})
    (repo / "config.json").write_text(json.dumps({"model_type": "synthetic"}))


@pytest.fixture(scope="module")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ModelManifest, Path]:
    base = tmp_path_factory.mktemp("radio")
    _write_model(base / "repo")
    # A 5 MHz downlink (~10 MB/s here): a 6 MB block is on the air for ~0.5 s.
    world = build_world(grid_topology(1), channel=Channel(bandwidth_hz=5e6))
    world_file = write_world(base / "world.json", world)
    return base, _manifest(base, "edge-1"), world_file


def _manifest(base: Path, node_id: str) -> ModelManifest:
    store = BlockStore(base / node_id, durable=False)
    manifest = build_manifest(base / "repo", model_id="radio-model", repo_id=REPO_ID, store=store)
    store.put_manifest(manifest)
    return manifest


@pytest.fixture
def node(
    model_store: tuple[Path, ModelManifest, Path], request: pytest.FixtureRequest
) -> Iterator[tuple[str, Any]]:
    base, _manifest_, world_file = model_store
    with edge_nodes(base) as make:
        yield make("edge-1", world_file=world_file, broadcast_window_s=request.param)


def _big_blocks(manifest: ModelManifest) -> list[tuple[str, int]]:
    return sorted((b, n) for b, n in manifest.block_sizes().items() if n >= 1_000_000)


def _together(jobs: list[Callable[[], bytes]]) -> list[bytes]:
    results: list[bytes] = [b""] * len(jobs)
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(jobs))

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = jobs[i]()
        except BaseException as exc:  # re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    if errors:
        raise errors[0]
    return results


def _batch(url: str, ids: list[str], area: str | None = "area-1") -> Callable[[], bytes]:
    def job() -> bytes:
        headers = {"X-TrimCache-Area": area} if area else {}
        r = httpx.post(
            f"{url}/v1/blocks:batch", json={"block_ids": ids}, headers=headers, timeout=120
        )
        r.raise_for_status()
        return r.content

    return job


def _radio(url: str) -> dict[str, Any]:
    radio: dict[str, Any] = httpx.get(f"{url}/v1/stats").json()["radio"]
    return radio


@pytest.mark.parametrize("node", [2.0], indirect=True)
def test_three_requests_share_one_transmission_per_block(
    node: tuple[str, Any], model_store: tuple[Path, ModelManifest, Path]
) -> None:
    url, _app = node
    blocks = _big_blocks(model_store[1])
    ids = [b for b, _ in blocks]
    # The three requests name the blocks in different orders: grouping is per block.
    bodies = _together([_batch(url, ids), _batch(url, ids[::-1]), _batch(url, ids[1:] + ids[:1])])
    for order, body in zip((ids, ids[::-1], ids[1:] + ids[:1]), bodies, strict=True):
        pos = 0
        for block_id in order:
            size = dict(blocks)[block_id]
            assert hashlib.sha256(body[pos : pos + size]).hexdigest() == block_id
            pos += size
        assert pos == len(body)
    radio = _radio(url)
    total = sum(n for _, n in blocks)
    rate = World.load(model_store[2]).rates["edge-1"]["area-1"]
    assert radio["block_requests"] == 12
    assert radio["block_transmissions"] == 4, radio
    assert radio["broadcast_groups"] == 4
    assert radio["group_sizes"] == {"3": 4}
    assert radio["mid_joins"] == 0
    assert radio["bytes_on_air"] == total
    assert radio["bytes_delivered"] == 3 * total
    assert radio["airtime_by_kind_s"]["block"] == pytest.approx(total / rate, rel=1e-6)
    metrics = httpx.get(f"{url}/metrics").text
    assert 'edge_radio_group_size_total{cluster="edge-1",node_id="edge-1",size="3"} 4.0' in metrics


@pytest.mark.parametrize("node", [0.0], indirect=True)
def test_without_a_window_every_request_is_charged(
    node: tuple[str, Any], model_store: tuple[Path, ModelManifest, Path]
) -> None:
    url, _app = node
    blocks = _big_blocks(model_store[1])
    ids = [b for b, _ in blocks]
    bodies = _together([_batch(url, ids) for _ in range(3)])
    expected = b"".join(
        (model_store[0] / "edge-1").joinpath("blocks", "sha256", b[:2], b).read_bytes() for b in ids
    )
    assert all(body == expected for body in bodies)
    radio = _radio(url)
    total = sum(n for _, n in blocks)
    rate = World.load(model_store[2]).rates["edge-1"]["area-1"]
    assert radio["block_transmissions"] == 12
    assert radio["broadcast_groups"] == 0
    assert radio["bytes_on_air"] == 3 * total
    assert radio["airtime_by_kind_s"]["block"] == pytest.approx(3 * total / rate, rel=1e-6)


@pytest.mark.parametrize("node", [0.0], indirect=True)
def test_unknown_area_is_a_400(node: tuple[str, Any]) -> None:
    url, _app = node
    r = httpx.post(
        f"{url}/v1/blocks:batch", json={"block_ids": []}, headers={"X-TrimCache-Area": "moon"}
    )
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_request"
    assert "moon" in r.json()["error"]["message"]


def test_the_ledger_serialises_bookings_across_processes(tmp_path: Path) -> None:
    a, b = AirtimeLedger(tmp_path / "c1.airtime"), AirtimeLedger(tmp_path / "c1.airtime")
    try:
        first = a.book(10.0)
        second = b.book(5.0)  # another opener of the same file: queued behind the first
        assert second == pytest.approx(first + 5.0)
    finally:
        a.close()
        b.close()


def _wait_for(check: Callable[[], bool], timeout_s: float = 60.0) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


@pytest.mark.parametrize("node", [0.05], indirect=True)
def test_a_late_joiner_gets_the_rest_then_the_missed_head(
    node: tuple[str, Any], model_store: tuple[Path, ModelManifest, Path]
) -> None:
    url, _app = node
    blocks = _big_blocks(model_store[1])
    ids = [b for b, _ in blocks]
    first: list[bytes] = []
    early = threading.Thread(target=lambda: first.append(_batch(url, ids)()))
    early.start()
    # Join once the first block is on the air, before it is through.
    _wait_for(lambda: 0 < _radio(url)["bytes_on_air"] < blocks[0][1])
    late = _batch(url, ids)()
    early.join(timeout=120)
    expected = b"".join(
        (model_store[0] / "edge-1").joinpath("blocks", "sha256", b[:2], b).read_bytes() for b in ids
    )
    assert first == [expected]
    assert late == expected
    radio = _radio(url)
    total = sum(n for _, n in blocks)
    assert radio["mid_joins"] == 1, radio
    assert radio["block_transmissions"] == 4  # every block on air once in full
    assert 0 < radio["airtime_by_kind_s"]["head"]
    assert total < radio["bytes_on_air"] < total + blocks[0][1]  # + the missed head only


@pytest.mark.parametrize("node", [1.0], indirect=True)
def test_a_client_that_goes_away_does_not_stall_the_others(
    node: tuple[str, Any], model_store: tuple[Path, ModelManifest, Path]
) -> None:
    import socket

    url, _app = node
    blocks = _big_blocks(model_store[1])
    ids = [b for b, _ in blocks]
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"block_ids": ids}).encode()
    gone = socket.create_connection((host, int(port)))
    gone.sendall(
        b"POST /v1/blocks:batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    results: list[bytes] = []
    others = [threading.Thread(target=lambda: results.append(_batch(url, ids)())) for _ in range(2)]
    for t in others:
        t.start()
    # ...it reads a little of its body (the group is on the air) and drops the connection.
    got = 0
    while got < 1_000_000:
        got += len(gone.recv(65536))
    gone.close()
    for t in others:
        t.join(timeout=120)
    expected = b"".join(
        (model_store[0] / "edge-1").joinpath("blocks", "sha256", b[:2], b).read_bytes() for b in ids
    )
    assert results == [expected, expected]
    radio = _radio(url)
    assert radio["block_transmissions"] == 4, radio
    assert radio["group_sizes"] == {"3": 4}, radio
    assert radio["members_left"] == 1, radio  # dropped from the jobs it still waited for


def test_a_block_two_cluster_edges_hold_goes_out_at_the_joint_rate() -> None:
    import asyncio

    from edge_node.radio import Radio

    # 200 m apart: both edges cover area-1, so edge-2 joins edge-1's transmission (CoMP).
    layout = grid_topology(2, spacing_m=200.0)
    world = World.from_json(build_world(layout, clusters={"c1": ["edge-1", "edge-2"]}))
    size = 4_000_000

    async def airtime(holders: tuple[str, ...]) -> float:
        radio = Radio(
            world, "edge-1", window_s=0.0, ledger=AirtimeLedger(None), holders=lambda _b: holders
        )
        member = radio.member()
        [ticket] = radio.announce(member, "area-1", [("b" * 64, size)])
        await radio.ready(ticket, size)
        radio.leave(member, [ticket])
        await radio.close()
        spent: float = radio.stats.airtime_s["block"]
        return spent

    joint = world.joint_rates["c1"]["area-1"]["edge-1+edge-2"]
    alone = world.rates["edge-1"]["area-1"]
    assert asyncio.run(airtime(("edge-2",))) == pytest.approx(size / joint, rel=1e-9)
    assert asyncio.run(airtime(())) == pytest.approx(size / alone, rel=1e-9)
    assert joint > alone


def test_the_edges_of_a_cluster_share_one_downlink(tmp_path: Path) -> None:
    import time

    # Two edge servers of one cluster, each holding the model, each serving one request at
    # once: their airtime is booked on one ledger, so the two take at least the sum of it
    # (with a ledger each they would overlap: checked to fail that way).
    _write_model(tmp_path / "repo")
    layout = grid_topology(2, spacing_m=200.0)
    doc = build_world(
        layout, clusters={"c1": ["edge-1", "edge-2"]}, channel=Channel(bandwidth_hz=5e6)
    )
    world_file = write_world(tmp_path / "world.json", doc)
    manifest = _manifest(tmp_path, "edge-1")
    _manifest(tmp_path, "edge-2")
    ids = [b for b, _ in _big_blocks(manifest)]
    with edge_nodes(tmp_path) as make:
        urls = [
            make(n, world_file=world_file, medium_dir=tmp_path / "medium")[0]
            for n in ("edge-1", "edge-2")
        ]
        started = time.monotonic()
        bodies = _together([_batch(urls[0], ids), _batch(urls[1], ids, area="area-2")])
        elapsed = time.monotonic() - started
        spent = [_radio(u)["airtime_s"] for u in urls]
    assert all(len(b) == sum(n for _, n in _big_blocks(manifest)) for b in bodies)
    assert all(s > 0 for s in spent)
    assert elapsed >= 0.95 * sum(spent), (elapsed, spent)  # one medium: never both at once
    assert (tmp_path / "medium" / "c1.airtime").exists()


def test_a_block_reaches_its_client_in_pieces_as_its_airtime_passes(
    model_store: tuple[Path, ModelManifest, Path], tmp_path: Path
) -> None:
    # A 1 MHz downlink (~2 MB/s here): one 6 MB block is on the air for ~3 s, sent in
    # pieces of at most 1 MiB. The client's first bytes come while the block is still on the
    # air (the medium's counter is below the block's size then); whole-block sending would
    # hold every byte until the block's airtime had passed (the counter at its size).
    base, manifest, _world = model_store
    world_file = write_world(
        tmp_path / "slow.json", build_world(grid_topology(1), channel=Channel(bandwidth_hz=1e6))
    )
    block_id, size = _big_blocks(manifest)[0]
    expected = (base / "edge-1").joinpath("blocks", "sha256", block_id[:2], block_id).read_bytes()
    with edge_nodes(base) as make:
        url, _app = make("edge-1", world_file=world_file, broadcast_window_s=0.0)
        seen_on_air: list[int] = []
        body = bytearray()
        with httpx.stream(
            "POST",
            f"{url}/v1/blocks:batch",
            json={"block_ids": [block_id]},
            headers={"X-TrimCache-Area": "area-1"},
            timeout=120,
        ) as response:
            response.raise_for_status()
            for chunk in response.iter_raw():
                if not body:
                    seen_on_air.append(_radio(url)["bytes_on_air"])
                body += chunk
        radio = _radio(url)
    assert bytes(body) == expected
    assert 0 < seen_on_air[0] < size, (seen_on_air, size)
    assert radio["bytes_on_air"] == size
    assert radio["block_transmissions"] == 1
