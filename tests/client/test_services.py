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
from pathlib import Path
from typing import Any

import httpx
import pytest

from client import Client, ModelNotFoundError, fetch_model
from tests.client.services import (
    ORG,
    Stack,
    assert_zoo_files,
    corrupting_edge,
    edge_process,
    push_plan,
    route_sources,
)
from tests.helpers import run_cli, wait_until


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


class _HoldAdapter:
    """Progress hooks that hold the adapter's download until blocks of its base are verified
    on the device: only a base fetched alongside the adapter gets there (a base fetched after
    the adapter would never start, and the wait fails)."""

    def __init__(self, partial_dir: Path, manifest_id: str) -> None:
        self.partial_dir, self.manifest_id = partial_dir, manifest_id
        self.base_blocks_first = 0

    def on_phase(self, model_id: str, phase: str) -> None:
        pass

    def on_plan(self, model_id: str, **_: Any) -> None:
        from client._files import read_journal

        self.base_blocks_first = wait_until(
            lambda: len(read_journal(self.partial_dir, self.manifest_id)),
            timeout_s=60,
            what="base blocks verified while the adapter's download waits",
        )

    def on_bytes(self, source_url: str, nbytes: int) -> None:
        pass


def test_an_adapters_base_is_fetched_alongside_it(stack: Stack, tmp_path: Path) -> None:
    route = httpx.get(f"{stack.controller}/v1/routes/minilm-lora-topic", timeout=30).json()
    assert route["base_model_id"] == "minilm-base"
    assert "base_model_id" not in httpx.get(f"{stack.controller}/v1/routes/minilm-base").json()
    base = stack.manifest("minilm-base")
    hold = _HoldAdapter(tmp_path / "models" / ".partial-minilm-base", base.manifest_id)
    with Client(controller_url=stack.controller, cache_dir=tmp_path) as client:
        model = client.fetch("minilm-lora-topic", load=False, progress=hold)
    assert hold.base_blocks_first > 0
    assert model.base_path is not None
    assert_zoo_files(model.path, stack.zoo / "repos" / ORG / "minilm-lora-topic")
    assert_zoo_files(model.base_path, stack.zoo / "repos" / ORG / "minilm-base")
    # The blocks both share (tokenizer files) moved once: the base copied them from the adapter.
    base_report = model.report["base"]
    assert base_report["bytes_local"] > 0
    assert base_report["bytes_fetched"] + base_report["bytes_local"] == base.unique_bytes
    adapter_bytes = model.report["bytes_fetched"] - base_report["bytes_fetched"]
    assert adapter_bytes == stack.manifest("minilm-lora-topic").unique_bytes


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
    repo = stack.zoo / "repos" / ORG / "bert-sst2"
    with corrupting_edge(stack, tmp_path / "edge-0", "bert-sst2", corrupt=True) as (bad, faults):
        model = fetch_model(
            "bert-sst2", controller_url=stack.controller, cache_dir=tmp_path / "cache"
        )
    assert faults.flipped  # the fault was really injected
    assert faults.requests  # the bad node was really asked
    assert bad not in model.report["bytes_by_source"]
    assert model.report["failures"]
    assert all("sha256" in f["reason"] for f in model.report["failures"])
    assert_zoo_files(model.path, repo)
    assert model.predict(["I loved it"])[0]["label"] == "positive"
