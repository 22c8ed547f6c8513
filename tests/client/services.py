"""The real services for the client's integration tests: origin, controller (real Redis) and
edge nodes, each a real uvicorn server (:func:`edge_node` takes fault-injection middleware, see
tests/faults.py); plus an edge node as a separate process (to kill it).

:class:`Stack` is the running set the ``stack`` fixture (tests/client/conftest.py) yields.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from core.digest import sha256_file
from core.manifest import ModelManifest
from tests.faults import CorruptBlocks
from tests.helpers import apply_plan, serve, wait_until

TOKEN = "client-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PLAN_SCHEMA = "trimcache.edge-plan/v1"
ORG = "trimcache-zoo"
MODELS = ("bert-sst2", "bert-spam", "minilm-base", "minilm-lora-topic")


@dataclass
class Stack:
    """The running services of the ``stack`` fixture: base URLs, the zoo, the Redis URL."""

    zoo: Path
    origin: str
    controller: str
    edges: list[str]
    tmp: Path
    redis: str

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
        httpx.put(
            f"{self.controller}/v1/nodes/{node_id}", json=body, headers=AUTH
        ).raise_for_status()

    def unregister(self, node_id: str) -> None:
        httpx.delete(f"{self.controller}/v1/nodes/{node_id}", headers=AUTH)


def assert_zoo_files(path: Path, repo_dir: Path) -> None:
    names = sorted(p.name for p in repo_dir.iterdir() if p.is_file())
    assert names
    for name in names:
        assert sha256_file(path / name) == sha256_file(repo_dir / name), name


def edge_settings(
    node_id: str, data_dir: Path, url: str, *, origin_url: str, controller_url: str, **extra: Any
) -> Any:
    from edge_node.settings import Settings

    port = int(url.rsplit(":", 1)[1])
    return Settings(
        node_id=node_id,
        data_dir=data_dir,
        origin_url=origin_url,
        controller_url=controller_url,
        public_url=url,
        port=port,
        auth_token=TOKEN,
        heartbeat_interval_s=0.2,
        scrub_on_start=False,
        durable=False,
        **{"allowed_hosts": "127.0.0.1", **extra},  # peers: other loopback test edges
    )


@contextmanager
def edge_node(
    node_id: str,
    data_dir: Path,
    *,
    wrap: Callable[[Any], Any] | None = None,
    **kwargs: Any,
) -> Iterator[str]:
    """The real edge app on a real uvicorn; ``wrap`` puts fault-injection middleware around it
    (tests/faults.py)."""
    from edge_node.app import create_app

    def build(url: str) -> Any:
        app = create_app(edge_settings(node_id, data_dir, url, **kwargs))
        return app if wrap is None else wrap(app)

    with serve(build) as url:
        yield url


@contextmanager
def edge_process(node_id: str, data_dir: Path, **kwargs: Any) -> Iterator[tuple[str, int]]:
    """An edge node in its own process (``python -m edge_node``, set up like :func:`edge_node`);
    yields ``(url, pid)``, SIGKILLs it at the end if still running."""
    from tests.controller.procs import edge_process as service

    proc = service(
        data_dir.parent,
        node_id,
        data_dir=data_dir,
        auth_token=TOKEN,
        heartbeat_interval_s=0.2,
        scrub_on_start="false",
        durable="false",
        **kwargs,
    ).start()
    assert proc.proc is not None
    try:
        yield proc.url, proc.proc.pid
    finally:
        proc.kill()


def manifest_of(controller_url: str, model_id: str) -> dict[str, Any]:
    response = httpx.get(f"{controller_url}/v1/models/{model_id}")
    response.raise_for_status()
    manifest: dict[str, Any] = response.json()["manifest"]
    return manifest


def push_plan(edge_url: str, controller_url: str, origin_url: str, model_ids: list[str]) -> None:
    """Make an edge node hold these models (what the controller's planner pushes)."""
    body = {
        "schema": PLAN_SCHEMA,
        "version": int(time.time() * 1000),
        "manifests": [manifest_of(controller_url, m) for m in model_ids],
        "peers": {},
        "origin_url": origin_url,
    }
    outcome = apply_plan(
        edge_url, body, headers={"Authorization": f"Bearer {TOKEN}"}, timeout_s=300
    )
    if not outcome.applied:
        raise RuntimeError(f"plan not applied on {edge_url}: {outcome.status}")


def route_sources(controller_url: str, model_id: str) -> list[str]:
    response = httpx.get(f"{controller_url}/v1/routes/{model_id}")
    response.raise_for_status()
    return [s["url"] for s in response.json()["sources"]]


@contextmanager
def corrupting_edge(
    stack: Stack, data_dir: Path, model_id: str, **faults: Any
) -> Iterator[tuple[str, CorruptBlocks]]:
    """A real edge node ``edge-0`` holding ``model_id`` behind :class:`CorruptBlocks`
    (``faults``: ``corrupt=`` / ``corrupt_ids=``), first in the controller's route.

    Yields ``(url, middleware)``; the node is unregistered when it stops.
    """
    sizes = {str(b): n for b, n in stack.manifest(model_id).block_sizes().items()}
    wrapped: list[CorruptBlocks] = []

    def wrap(app: Any) -> CorruptBlocks:
        wrapped.append(CorruptBlocks(app, sizes=sizes, **faults))
        return wrapped[0]

    kwargs = {"origin_url": stack.origin, "controller_url": stack.controller}
    try:
        with edge_node("edge-0", data_dir, wrap=wrap, **kwargs) as url:
            push_plan(url, stack.controller, stack.origin, [model_id])
            wait_until(lambda: route_sources(stack.controller, model_id)[0] == url)
            yield url, wrapped[0]
    finally:
        stack.unregister("edge-0")
