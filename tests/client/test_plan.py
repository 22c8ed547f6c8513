"""The downloader's request plan (client._download.Downloader._plan) for an edge that pulls
some of the blocks: every request of the fetch is in flight at once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from client._download import Downloader, DownloadOptions
from client._route import Delivery, Route, Source
from core.blocks import build_manifest
from core.store import BlockStore
from core.transfer import Span

ELEMS = 600_000  # float32: 2.4 MB per block


def _route(tmp_path: Path, pulled: int) -> tuple[Route, list[Span]]:
    repo = tmp_path / "repo"
    repo.mkdir()
    rng = np.random.default_rng(3)
    save_file(
        {f"layer.{i}.weight": rng.standard_normal(ELEMS).astype(np.float32) for i in range(6)},
        str(repo / "model.safetensors"),
    )
    (repo / "config.json").write_text(json.dumps({"model_type": "synthetic"}))
    manifest = build_manifest(
        repo, model_id="m", repo_id="synthetic/m", store=BlockStore(tmp_path / "s", durable=False)
    )
    locate = manifest.locate()
    spans = [
        Span(b, n, locate[b][0], locate[b][1]) for b, n in sorted(manifest.block_sizes().items())
    ]
    edge = Source("http://edge", "edge", node_id="edge-1")
    origin = Source("http://origin", "origin")
    delivery = {s.block_id: Delivery(0, "origin") for s in spans[:pulled]}
    route = Route(
        "m", manifest, (edge, origin), {s.block_id: (0, 1) for s in spans}, delivery=delivery
    )
    return route, spans


def test_held_blocks_leave_a_connection_to_the_pulled_batch(tmp_path: Path) -> None:
    route, spans = _route(tmp_path, pulled=2)
    options = DownloadOptions(connections_per_source=2)
    tasks = Downloader(None, None, route, options=options)._plan({0: list(spans)})  # type: ignore[arg-type]
    assert [t.pulled for t in tasks] == [True, False]  # pulled first, then one held batch
    assert len(tasks) <= options.connections_per_source  # nothing queued behind the pull
    assert sorted(i.block_id for t in tasks for i in t.items) == sorted(s.block_id for s in spans)


def test_without_pulled_blocks_the_held_ones_use_every_connection(tmp_path: Path) -> None:
    route, spans = _route(tmp_path, pulled=0)
    tasks = Downloader(None, None, route)._plan({0: list(spans)})  # type: ignore[arg-type]
    assert len(tasks) == DownloadOptions().connections_per_source
    assert not any(t.pulled for t in tasks)
