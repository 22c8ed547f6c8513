"""Fixtures of the edge node tests: a derived model zoo, a real origin, edge node factories."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.blocks import build_manifest
from core.manifest import ModelManifest
from edge_node.app import create_app
from edge_node.settings import Settings
from tests.edge_node.zoo import build_zoo
from tests.helpers import live_server

TOKEN = "test-token"


@pytest.fixture(scope="session")
def edge_zoo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("edge-zoo")
    return root, build_zoo(root)


@pytest.fixture(scope="session")
def origin_url(edge_zoo: tuple[Path, dict[str, Path]]) -> Iterator[str]:
    from testbed.origin import create_app as create_origin

    with live_server(create_origin(edge_zoo[0], auth_token=TOKEN)) as url:
        yield url


@pytest.fixture(scope="session")
def manifests(edge_zoo: tuple[Path, dict[str, Path]], origin_url: str) -> dict[str, ModelManifest]:
    """Manifests of the zoo models, at the origin's revision (as the controller builds them)."""
    out: dict[str, ModelManifest] = {}
    with httpx.Client() as client:
        for repo_id, repo_dir in edge_zoo[1].items():
            info = client.get(f"{origin_url}/api/models/{repo_id}").json()
            model_id = repo_id.split("/")[1]
            out[model_id] = build_manifest(
                repo_dir, model_id=model_id, repo_id=repo_id, revision=info["sha"]
            )
    return out


@pytest.fixture
def origin_bytes(origin_url: str) -> Callable[[], int]:
    """Bytes the origin has served since this test started."""
    httpx.post(f"{origin_url}/v1/stats/reset", headers=AUTH).raise_for_status()

    def read() -> int:
        served: int = httpx.get(f"{origin_url}/v1/stats").json()["bytes_served"]
        return served

    return read


EdgeFactory = Callable[..., tuple[str, Any]]


@contextmanager
def edge_nodes(base_dir: Path) -> Iterator[EdgeFactory]:
    """``make(node_id, **settings) -> (url, app)``: edge nodes on live uvicorn servers."""
    with ExitStack() as stack:

        def make(node_id: str = "edge-a", **overrides: Any) -> tuple[str, Any]:
            fields: dict[str, Any] = {
                "node_id": node_id,
                "data_dir": base_dir / node_id,
                "auth_token": TOKEN,
                "durable": False,
                # Every test server listens on loopback (tests of the allow-list override it).
                "allowed_hosts": "127.0.0.1",
                **overrides,
            }
            app = create_app(Settings(**fields))
            server: AbstractContextManager[str] = live_server(app)
            return stack.enter_context(server), app

        yield make


@pytest.fixture
def edge_factory(tmp_path: Path) -> Iterator[EdgeFactory]:
    with edge_nodes(tmp_path) as make:
        yield make


def plan_body(
    manifests: list[ModelManifest],
    *,
    version: int = 1,
    origin_url: str | None = None,
    peers: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    return {
        "schema": "trimcache.edge-plan/v1",
        "version": version,
        "manifests": [m.to_dict() for m in manifests],
        "peers": peers or {},
        "origin_url": origin_url,
    }


AUTH = {"Authorization": f"Bearer {TOKEN}"}
