"""fetch_model against real HTTP servers: stand-in edge nodes and controller, the real origin."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from client import (
    Client,
    ControllerUnavailableError,
    ModelNotFoundError,
    NoSourceError,
    fetch_model,
)
from core.digest import sha256_file
from core.manifest import ModelManifest
from core.store import BlockStore
from tests.client.fakes import Faults, create_block_app, create_route_app
from tests.helpers import free_port, live_server


@contextmanager
def services(
    manifests: dict[str, ModelManifest],
    store: BlockStore,
    origin_url: str | None,
    edges: list[Faults | None],
    *,
    holders: dict[int, set[str]] | None = None,
) -> Iterator[tuple[str, list[str], Any]]:
    """Edge stand-ins (one per ``edges`` entry) + a route server; yields (controller, edges)."""
    with ExitStack() as stack:
        edge_urls = [
            stack.enter_context(live_server(create_block_app(store, manifests.values(), f)))
            for f in edges
        ]
        sources: list[dict[str, Any]] = [
            {"url": url, "kind": "edge", "node_id": f"edge-{i}"} for i, url in enumerate(edge_urls)
        ]
        if origin_url is not None:
            sources.append({"url": origin_url, "kind": "origin"})
        if holders is None:
            holders = {i: set(manifests) for i in range(len(edge_urls))}
        app = create_route_app(manifests, sources, holders)
        controller = stack.enter_context(live_server(app))
        yield controller, edge_urls, app


def assert_same_files(path: Path, repo_dir: Path) -> None:
    for src in repo_dir.iterdir():
        assert sha256_file(path / src.name) == sha256_file(src), src.name


def test_fetch_predict_from_edge(client_zoo, manifests, full_store, origin_url, tmp_path):
    with services(manifests, full_store, origin_url, [None]) as (controller, edges, app):
        model = fetch_model("clf-a", controller_url=controller, cache_dir=tmp_path)
    assert_same_files(model.path, client_zoo[1]["clf-a"])
    out = model.predict(["I loved it", "terrible"])
    assert [o["label"] in ("negative", "positive") for o in out] == [True, True]
    assert all(0.0 <= o["score"] <= 1.0 for o in out)
    report = model.report
    assert report["bytes_by_source"] == {"local": 0, edges[0]: manifests["clf-a"].unique_bytes}
    assert report["seconds"] > 0
    assert set(report["phase_seconds"]) == {"route", "verify", "download", "assemble", "load"}
    assert app.state.demand[0]["model_id"] == "clf-a"
    assert app.state.demand[0]["outcome"] == "hit"


def test_sibling_moves_only_its_unique_bytes(manifests, full_store, origin_url, tmp_path):
    a, b = manifests["clf-a"], manifests["clf-b"]
    unique_b = sum(n for bid, n in b.block_sizes().items() if bid not in a.block_sizes())
    shared_b = b.unique_bytes - unique_b
    assert 0 < unique_b < shared_b  # the zoo really shares most bytes
    with services(manifests, full_store, origin_url, [None]) as (controller, edges, _):
        with Client(controller_url=controller, cache_dir=tmp_path) as client:
            client.fetch("clf-a", load=False)
            second = client.fetch("clf-b", load=False)
    assert second.report["bytes_by_source"] == {"local": shared_b, edges[0]: unique_b}
    assert second.report["bytes_fetched"] == unique_b


def test_unknown_model(manifests, full_store, origin_url, tmp_path):
    with services(manifests, full_store, origin_url, [None]) as (controller, _, app):
        with pytest.raises(ModelNotFoundError, match="nope"):
            fetch_model("nope", controller_url=controller, cache_dir=tmp_path)
    assert app.state.demand[0]["outcome"] == "error"


def test_corrupt_source_falls_back(client_zoo, manifests, full_store, origin_url, tmp_path):
    edges = [Faults(corrupt=True), None]
    with services(manifests, full_store, origin_url, edges) as (controller, urls, _):
        model = fetch_model("clf-a", controller_url=controller, cache_dir=tmp_path, load=False)
    assert_same_files(model.path, client_zoo[1]["clf-a"])
    report = model.report
    assert urls[0] not in report["bytes_by_source"]
    assert report["bytes_by_source"][urls[1]] == manifests["clf-a"].unique_bytes
    assert {f["source"] for f in report["failures"]} == {urls[0]}
    assert all("sha256" in f["reason"] for f in report["failures"])


def test_edge_killed_mid_download(client_zoo, manifests, full_store, origin_url, tmp_path):
    total = manifests["clf-a"].unique_bytes
    faults = Faults(die_after_bytes=total // 3)
    with services(manifests, full_store, origin_url, [faults]) as (controller, urls, _):
        model = fetch_model("clf-a", controller_url=controller, cache_dir=tmp_path, load=False)
    assert faults.dead
    assert_same_files(model.path, client_zoo[1]["clf-a"])
    by_source = model.report["bytes_by_source"]
    assert by_source.get(urls[0], 0) < total
    assert by_source[origin_url] > 0
    assert by_source.get(urls[0], 0) + by_source[origin_url] == total


def test_no_source_names_what_was_tried(manifests, full_store, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    with services(manifests, full_store, None, []) as (controller, _, app):
        app.router.routes.clear()
        sources = [{"url": dead, "kind": "edge"}]
        replacement = create_route_app(manifests, sources, {0: set(manifests)})
        app.router.routes.extend(replacement.router.routes)
        with pytest.raises(NoSourceError, match=dead.replace(".", r"\.")):
            fetch_model("clf-a", controller_url=controller, cache_dir=tmp_path, load=False)


def test_interrupted_fetch_resumes(client_zoo, manifests, full_store, tmp_path):
    total = manifests["clf-a"].unique_bytes
    faults = Faults(die_after_bytes=total // 2)
    with services(manifests, full_store, None, [faults]) as (controller, urls, _):
        with pytest.raises(NoSourceError):
            fetch_model("clf-a", controller_url=controller, cache_dir=tmp_path, load=False)
    kept = BlockStore(tmp_path / "store").used_bytes
    assert 0 < kept < total
    with services(manifests, full_store, None, [None]) as (controller, urls, _):
        model = fetch_model("clf-a", controller_url=controller, cache_dir=tmp_path, load=False)
    assert model.report["bytes_by_source"] == {"local": kept, urls[0]: total - kept}
    assert_same_files(model.path, client_zoo[1]["clf-a"])


def test_edge_only_and_cached_refetch(client_zoo, manifests, full_store, tmp_path):
    with live_server(create_block_app(full_store, manifests.values())) as edge:
        first = fetch_model("clf-b", edge_url=edge, cache_dir=tmp_path, load=False)
        again = fetch_model("clf-b", edge_url=edge, cache_dir=tmp_path, load=False)
        with pytest.raises(ModelNotFoundError):
            fetch_model("nope", edge_url=edge, cache_dir=tmp_path, load=False)
    assert first.report["bytes_fetched"] == manifests["clf-b"].unique_bytes
    assert again.report["bytes_fetched"] == 0
    assert again.report["bytes_local"] == manifests["clf-b"].unique_bytes
    assert_same_files(again.path, client_zoo[1]["clf-b"])


def test_origin_only(client_zoo, origin_url, tmp_path):
    model = fetch_model(
        "clf-a",
        origin_url=origin_url,
        repo_id="trimcache-zoo/clf-a",
        cache_dir=tmp_path,
        load=False,
    )
    assert_same_files(model.path, client_zoo[1]["clf-a"])
    assert model.report["bytes_by_source"][origin_url] > 0


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 24 MB filesystem (tmpfs) for the full-disk test; skipped when we cannot mount."""
    import subprocess

    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_is_a_clean_error(manifests, full_store, tiny_disk):
    from client import DiskFullError

    with live_server(create_block_app(full_store, manifests.values())) as edge:
        with pytest.raises(DiskFullError, match="space"):
            fetch_model("clf-a", edge_url=edge, cache_dir=tiny_disk, load=False)
    store = BlockStore(tiny_disk / "store")
    assert 0 < len(store)
    assert store.scrub() == []  # every block kept is a verified block
    assert not list(tiny_disk.rglob(".tmp-*"))
    assert not (tiny_disk / "models" / "clf-a").exists()


def test_cached_model_without_controller(manifests, full_store, origin_url, tmp_path):
    with services(manifests, full_store, origin_url, [None]) as (controller, _, _):
        fetch_model("clf-a", controller_url=controller, cache_dir=tmp_path, load=False)
    # The controller is gone now: the cached model is still served from the device cache.
    model = fetch_model("clf-a", controller_url=controller, cache_dir=tmp_path, load=False)
    assert model.report["bytes_by_source"] == {"local": manifests["clf-a"].unique_bytes}
    with pytest.raises(ControllerUnavailableError, match="unreachable"):
        fetch_model("clf-b", controller_url=controller, cache_dir=tmp_path, load=False)


def test_rotten_cached_block_is_refetched(client_zoo, manifests, full_store, tmp_path):
    a, b = manifests["clf-a"], manifests["clf-b"]
    shared = next(
        bid for bid in b.block_sizes() if bid in a.block_sizes() and a.block_sizes()[bid] > 1000
    )
    with live_server(create_block_app(full_store, manifests.values())) as edge:
        fetch_model("clf-a", edge_url=edge, cache_dir=tmp_path, load=False)
        path = BlockStore(tmp_path / "store").path(shared)
        data = bytearray(path.read_bytes())
        data[0] ^= 0xFF  # bit rot on the device
        path.write_bytes(bytes(data))
        model = fetch_model("clf-b", edge_url=edge, cache_dir=tmp_path, load=False)
    assert model.report["bytes_by_source"][edge] == (
        sum(n for bid, n in b.block_sizes().items() if bid not in a.block_sizes())
        + b.block_sizes()[shared]
    )
    assert_same_files(model.path, client_zoo[1]["clf-b"])
    assert (tmp_path / "store" / "quarantine").is_dir()
