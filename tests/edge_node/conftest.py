"""Fixtures of the edge node tests: a derived model zoo, a real origin, edge node factories,
and :func:`edge_cluster`: the origin, controller and edge nodes as real processes."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.blocks import build_manifest
from core.digest import sha256_file
from core.manifest import ModelManifest
from edge_node.app import create_app
from edge_node.settings import Settings
from tests.controller.procs import ServiceProcess
from tests.edge_node.zoo import build_zoo
from tests.helpers import live_server, wait_until

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


# -- a cluster of real processes -------------------------------------------------------------
@dataclass
class Cluster:
    """Real processes of an edge scenario: the origin and controller (``python -m``), edge
    nodes heartbeating to it (``edges``: node id -> URL) holding ``held`` (pushed plans)."""

    zoo: Path
    tmp: Path
    origin_process: ServiceProcess
    controller_process: ServiceProcess
    edges: dict[str, str]
    models: dict[str, str]  # model_id -> repo_id
    held: Mapping[str, Sequence[str]]

    @property
    def origin(self) -> str:
        return self.origin_process.url

    @property
    def controller(self) -> str:
        return self.controller_process.url

    def stats(self, node_id: str) -> dict[str, Any]:
        stats: dict[str, Any] = httpx.get(f"{self.edges[node_id]}/v1/stats").json()
        return stats

    def origin_stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = httpx.get(f"{self.origin}/v1/stats").json()
        return stats

    def manifest(self, model_id: str) -> ModelManifest:
        doc = httpx.get(f"{self.controller}/v1/models/{model_id}").json()["manifest"]
        return ModelManifest.from_dict(doc)

    def model_blocks(self, model_id: str) -> dict[str, int]:
        """Block id -> size of every block of the model (the controller's manifest)."""
        return {str(b): n for b, n in self.manifest(model_id).block_sizes().items()}

    def held_blocks(self, node_id: str) -> set[str]:
        return {b for m in self.held[node_id] for b in self.manifest(m).block_sizes()}

    def repo_dir(self, model_id: str) -> Path:
        return self.zoo / "repos" / self.models[model_id]

    def routes_to(self, model_id: str, urls: set[str]) -> bool:
        """The controller's route for the model names every one of ``urls``."""
        sources = httpx.get(f"{self.controller}/v1/routes/{model_id}").json()["sources"]
        return urls <= {s["url"] for s in sources}


@contextmanager
def edge_cluster(
    tmp: Path,
    zoo_dir: Path,
    redis_url: str,
    *,
    held: Mapping[str, Sequence[str]],
    index: Sequence[str] | None = None,
    topology: Mapping[str, Any] | None = None,
    capacity_bytes: int = 500_000_000,
    catalogue_ttl_s: float = 0.5,
    controller: Mapping[str, Any] | None = None,
    edge: Mapping[str, Mapping[str, Any]] | None = None,
) -> Iterator[Cluster]:
    """Start a :class:`Cluster` and stop it (Redis flushed) on exit.

    The controller (``auto_plan`` off, the tests' token, ``controller`` settings on top)
    indexes ``index`` (default: the whole zoo) and gets ``topology`` (if any); one edge per
    key of ``held`` (``capacity_bytes``, ``catalogue_ttl_s``, 0.3 s heartbeats, ``edge[node_id]``
    settings on top) is pushed a plan of its models, and the cluster is ready once every held
    model is routed to its holder.
    """
    import redis

    from tests.client import services
    from tests.controller.procs import controller_process, edge_process, origin_process

    origin = origin_process(tmp, zoo_dir).start()
    processes = [origin]
    try:
        control = controller_process(
            tmp,
            redis_url=redis_url,
            origin_url=origin.url,
            auto_plan="false",
            heartbeat_expiry_s=60,
            auth_token=services.TOKEN,
            **(controller or {}),
        ).start()
        processes.append(control)
        catalogue = json.loads((zoo_dir / "zoo.json").read_text())["models"]
        models = {m["model_id"]: m["repo_id"] for m in catalogue}
        for model_id in models if index is None else index:
            body = {"model_id": model_id, "repo_id": models[model_id]}
            r = httpx.post(
                f"{control.url}/v1/models", json=body, timeout=300, headers=services.AUTH
            )
            assert r.status_code == 201, r.text
        if topology is not None:
            r = httpx.put(f"{control.url}/v1/topology", json=dict(topology), headers=services.AUTH)
            assert r.status_code == 200, r.text
        edges: dict[str, str] = {}
        for node_id in held:
            process = edge_process(
                tmp,
                node_id,
                data_dir=tmp / node_id,
                capacity_bytes=capacity_bytes,
                controller_url=control.url,
                origin_url=origin.url,
                auth_token=services.TOKEN,
                heartbeat_interval_s=0.3,
                catalogue_ttl_s=catalogue_ttl_s,
                durable="false",
                scrub_on_start="false",
                **(edge or {}).get(node_id, {}),
            ).start()
            processes.append(process)
            edges[node_id] = process.url
        for node_id, model_ids in held.items():
            if model_ids:
                services.push_plan(edges[node_id], control.url, origin.url, list(model_ids))
        cluster = Cluster(zoo_dir, tmp, origin, control, edges, models, held)
        wanted = [(m, edges[n]) for n, model_ids in held.items() for m in model_ids]
        wait_until(lambda: all(cluster.routes_to(m, {url}) for m, url in wanted), timeout_s=120)
        yield cluster
    finally:
        for process in reversed(processes):
            process.stop()
        redis.Redis.from_url(redis_url).flushdb()


def sha256_tree(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every regular file under ``root`` (hidden ones skipped)."""
    return {
        str(p.relative_to(root)): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    }
