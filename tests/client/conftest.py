"""Fixtures of the client tests: a MiniLM-derived zoo, a real origin, block servers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from core.blocks import build_manifest
from core.manifest import ModelManifest
from core.store import BlockStore
from tests.client.zoo import ORG, build_zoo
from tests.helpers import live_server


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
