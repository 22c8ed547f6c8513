"""The client against the real services: origin, controller (real Redis), edge nodes.

Every service is a real uvicorn server (one edge node is a separate process, so it can be killed
with SIGKILL mid-download). Edge nodes get their blocks by plans pushed over HTTP, as the
controller's planner does, and report them to the controller by heartbeats; the controller's
route is what the client follows.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from client import Client, ModelNotFoundError, fetch_model
from core.blocks import build_manifest
from core.digest import sha256_file
from core.manifest import ModelManifest
from core.store import BlockStore
from tests.client.fakes import Faults, create_block_app
from tests.client.services import edge_node, edge_process, push_plan, route_sources
from tests.helpers import live_server, run_cli, wait_until

ORG = "trimcache-zoo"
MODELS = ("bert-sst2", "bert-spam", "minilm-base", "minilm-lora-topic")


@dataclass
class Stack:
    zoo: Path
    origin: str
    controller: str
    edges: list[str]
    tmp: Path

    def manifest(self, model_id: str) -> ModelManifest:
        data = httpx.get(f"{self.controller}/v1/models/{model_id}").json()["manifest"]
        return ModelManifest.from_dict(data)

    def register(self, node_id: str, url: str, models: list[str]) -> None:
        body = {
            "url": url,
            "capacity_bytes": 10**9,
            "position": [0.0, 0.0],
            "physical_bytes": 0,
            "models": models,
            "blocks_digest": "",
        }
        httpx.put(f"{self.controller}/v1/nodes/{node_id}", json=body).raise_for_status()

    def unregister(self, node_id: str) -> None:
        httpx.delete(f"{self.controller}/v1/nodes/{node_id}")


@pytest.fixture(scope="module")
def stack(
    zoo_dir: Path, redis_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    import redis

    from controller.app import create_app as create_controller
    from controller.settings import Settings
    from testbed.origin import create_app as create_origin

    tmp = tmp_path_factory.mktemp("client-stack")
    with ExitStack() as stack:
        origin = stack.enter_context(live_server(create_origin(zoo_dir)))
        settings = Settings(redis_url=redis_server, origin_url=origin, auto_plan=False)
        controller = stack.enter_context(live_server(create_controller(settings)))
        for model_id in MODELS:
            body = {"model_id": model_id, "repo_id": f"{ORG}/{model_id}"}
            httpx.post(f"{controller}/v1/models", json=body, timeout=300).raise_for_status()
        edges = [
            stack.enter_context(
                edge_node(
                    f"edge-{i}", tmp / f"edge-{i}", origin_url=origin, controller_url=controller
                )
            )
            for i in (1, 2)
        ]
        push_plan(edges[0], controller, origin, list(MODELS))
        push_plan(edges[1], controller, origin, ["bert-sst2"])
        wait_until(lambda: route_sources(controller, "bert-sst2") == [*edges, origin])
        wait_until(lambda: route_sources(controller, "bert-spam")[0] == edges[0])
        yield Stack(zoo_dir, origin, controller, edges, tmp)
    redis.Redis.from_url(redis_server).flushdb()


def assert_zoo_files(path: Path, repo_dir: Path) -> None:
    names = sorted(p.name for p in repo_dir.iterdir() if p.is_file())
    assert names
    for name in names:
        assert sha256_file(path / name) == sha256_file(repo_dir / name), name


def test_bert_sst2_then_sibling(stack: Stack, tmp_path: Path) -> None:
    model = fetch_model("bert-sst2", controller_url=stack.controller, cache_dir=tmp_path)
    assert model.predict(["I loved it"])[0]["label"] == "positive"
    assert model.predict(["I hated it, a terrible waste of time"])[0]["label"] == "negative"
    assert_zoo_files(model.path, stack.zoo / "repos" / ORG / "bert-sst2")
    sst2 = stack.manifest("bert-sst2")
    by_source = model.report["bytes_by_source"]
    assert by_source.pop("local") == 0
    assert set(by_source) <= set(stack.edges) and by_source
    assert sum(by_source.values()) == sst2.unique_bytes
    assert model.report["bytes_by_kind"] == {"local": 0, "edge": sst2.unique_bytes, "origin": 0}

    spam = stack.manifest("bert-spam")
    unique = sum(n for b, n in spam.block_sizes().items() if b not in sst2.block_sizes())
    sibling = fetch_model("bert-spam", controller_url=stack.controller, cache_dir=tmp_path)
    assert sibling.report["bytes_fetched"] == unique
    assert sibling.report["bytes_by_source"] == {
        "local": spam.unique_bytes - unique,
        stack.edges[0]: unique,
    }
    assert 0 < unique < spam.unique_bytes / 2
    assert_zoo_files(sibling.path, stack.zoo / "repos" / ORG / "bert-spam")


def test_lora_adapter_on_its_base(stack: Stack, tmp_path: Path) -> None:
    zoo = json.loads((stack.zoo / "zoo.json").read_text())
    labels = next(m["labels"] for m in zoo["models"] if m["model_id"] == "minilm-lora-topic")
    model = fetch_model("minilm-lora-topic", controller_url=stack.controller, cache_dir=tmp_path)
    out = model.predict(["The striker scored twice in the final match"])
    assert out[0]["label"] in labels
    assert model.base_path is not None
    assert_zoo_files(model.base_path, stack.zoo / "repos" / ORG / "minilm-base")
    base = stack.manifest("minilm-base")
    base_report = model.report["base"]
    # The adapter repo ships the base's tokenizer files: those blocks are already local.
    assert base_report["bytes_fetched"] + base_report["bytes_local"] == base.unique_bytes
    assert base_report["bytes_local"] > 0


def test_unknown_model_cli(stack: Stack, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError):
        fetch_model("no-such-model", controller_url=stack.controller, cache_dir=tmp_path)
    env = {"TRIMCACHE_CONTROLLER_URL": stack.controller, "TRIMCACHE_CACHE_DIR": str(tmp_path)}
    result = run_cli("fetch", "no-such-model", env=env, timeout_s=120)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "no-such-model" in result.stderr


class _KillAt:
    """A progress hook that SIGKILLs an edge process once it has sent ``at_bytes``."""

    def __init__(self, url: str, pid: int, at_bytes: int) -> None:
        self.url, self.pid, self.at_bytes = url, pid, at_bytes
        self.seen = 0
        self.killed = False
        self._lock = threading.Lock()

    def on_phase(self, model_id: str, phase: str) -> None:
        pass

    def on_plan(self, model_id: str, **_: Any) -> None:
        pass

    def on_bytes(self, source_url: str, nbytes: int) -> None:
        with self._lock:
            if source_url != self.url or self.killed:
                return
            self.seen += nbytes
            if self.seen >= self.at_bytes:
                os.kill(self.pid, signal.SIGKILL)
                self.killed = True


def test_edge_killed_mid_download(stack: Stack, tmp_path: Path) -> None:
    sst2 = stack.manifest("bert-sst2")
    rate = 40 * 1024 * 1024  # a radio link, so the kill lands mid-transfer
    with edge_process(
        "edge-0",
        tmp_path / "edge-0",
        origin_url=stack.origin,
        controller_url=stack.controller,
        link_rate_bytes_per_s=rate,
    ) as (url, pid):
        push_plan(url, stack.controller, stack.origin, ["bert-sst2"])
        wait_until(lambda: route_sources(stack.controller, "bert-sst2")[0] == url)
        hook = _KillAt(url, pid, sst2.unique_bytes // 4)
        with Client(controller_url=stack.controller, cache_dir=tmp_path / "cache") as client:
            model = client.fetch("bert-sst2", progress=hook)
    stack.unregister("edge-0")
    assert hook.killed
    assert model.predict(["I loved it"])[0]["label"] == "positive"
    assert_zoo_files(model.path, stack.zoo / "repos" / ORG / "bert-sst2")
    by_source = model.report["bytes_by_source"]
    assert 0 < by_source.get(url, 0) < sst2.unique_bytes
    assert sum(n for u, n in by_source.items() if u in stack.edges) > 0
    assert {f["source"] for f in model.report["failures"]} == {url}


def test_corrupting_edge_in_route(stack: Stack, tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "bad-store", durable=False)
    repo = stack.zoo / "repos" / ORG / "bert-sst2"
    build_manifest(repo, model_id="bert-sst2", store=store)
    faults = Faults(corrupt=True)
    with live_server(create_block_app(store, [stack.manifest("bert-sst2")], faults)) as bad:
        stack.register("edge-0", bad, ["bert-sst2"])
        try:
            assert route_sources(stack.controller, "bert-sst2")[0] == bad
            model = fetch_model("bert-sst2", controller_url=stack.controller, cache_dir=tmp_path)
        finally:
            stack.unregister("edge-0")
    assert faults.requests  # the bad node was really asked
    assert bad not in model.report["bytes_by_source"]
    assert model.report["failures"]
    assert all("sha256" in f["reason"] for f in model.report["failures"])
    assert_zoo_files(model.path, repo)
    assert model.predict(["I loved it"])[0]["label"] == "positive"
