"""Fixtures of the client tests: a MiniLM-derived zoo, a real origin, block servers, and the
``stack`` of real services (origin, controller on the real Redis, two edge nodes), started once
for the whole tests/client package.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from core.blocks import build_manifest
from core.manifest import ModelManifest
from core.store import BlockStore
from tests.client.services import MODELS, Stack, edge_node, push_plan, route_sources
from tests.client.services import ORG as STACK_ORG
from tests.client.zoo import ORG, build_zoo
from tests.helpers import live_server, wait_until


@pytest.fixture(scope="session")
def client_zoo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("client-zoo")
    return root, build_zoo(root)


@pytest.fixture(scope="session")
def origin_url(client_zoo: tuple[Path, dict[str, Path]]) -> Iterator[str]:
    from testbed.origin import create_app as create_origin

    with live_server(create_origin(client_zoo[0])) as url:
        yield url


@pytest.fixture(scope="session")
def manifests(
    client_zoo: tuple[Path, dict[str, Path]], origin_url: str
) -> dict[str, ModelManifest]:
    """Manifests of the zoo models at the origin's revision (as the controller builds them)."""
    out: dict[str, ModelManifest] = {}
    with httpx.Client() as http:
        for model_id, repo_dir in client_zoo[1].items():
            repo_id = f"{ORG}/{model_id}"
            info = http.get(f"{origin_url}/api/models/{repo_id}").json()
            out[model_id] = build_manifest(
                repo_dir, model_id=model_id, repo_id=repo_id, revision=info["sha"]
            )
    return out


@pytest.fixture(scope="session")
def full_store(
    client_zoo: tuple[Path, dict[str, Path]], tmp_path_factory: pytest.TempPathFactory
) -> BlockStore:
    """A block store holding every block of every zoo model (edge fakes serve from it)."""
    store = BlockStore(tmp_path_factory.mktemp("edge-store"), durable=False)
    for model_id, repo_dir in client_zoo[1].items():
        build_manifest(repo_dir, model_id=model_id, store=store)
    return store


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="package")
def stack(
    zoo_dir: Path, redis_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """Origin, controller (real Redis, no auto-plan) and two edge nodes holding pushed plans."""
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
            body = {"model_id": model_id, "repo_id": f"{STACK_ORG}/{model_id}"}
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
        yield Stack(zoo_dir, origin, controller, edges, tmp, redis_server)
    redis.Redis.from_url(redis_server).flushdb()
