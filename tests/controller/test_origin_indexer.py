"""CONTROLLER_INDEX_FROM_ORIGIN: the catalogue fills itself from the origin's repo list.

Real Redis, the real origin app on a real uvicorn, the controller app in-process.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from controller.app import create_app
from controller.indexer import model_id_for
from controller.settings import Settings
from tests.controller.conftest import MINI_MODELS
from tests.helpers import wait_until

TOKEN = "indexer-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _settings(redis_url: str, origin_url: str) -> Settings:
    return Settings(
        redis_url=redis_url,
        origin_url=origin_url,
        auto_plan=False,
        index_from_origin=True,
        auth_token=TOKEN,
    )


def _catalogue(client: TestClient) -> dict[str, str]:
    return {m["model_id"]: m["repo_id"] for m in client.get("/v1/models").json()["models"]}


def _done(client: TestClient) -> dict[str, Any] | None:
    status: dict[str, Any] = client.get("/v1/models").json()["origin_index"]
    return status if status["state"] == "done" else None


def test_model_ids_are_repo_names() -> None:
    assert model_id_for("trimcache-zoo/bert-sst2") == "bert-sst2"
    assert model_id_for("org/we!rd name") == "we-rd-name"
    assert model_id_for("solo") == "solo"


def test_every_listed_repo_is_indexed_once_and_then_planned(
    redis_url: str, mini_origin: str
) -> None:
    with TestClient(create_app(_settings(redis_url, mini_origin))) as client:
        status = wait_until(lambda: _done(client), timeout_s=60)
        assert _catalogue(client) == {m: f"mini/{m}" for m in MINI_MODELS}
        assert status["listed"] == len(MINI_MODELS)
        assert sorted(status["indexed"]) == sorted(MINI_MODELS)
        # The indexer ran the first placement (no node yet: an empty one).
        assert client.get("/v1/placement").json()["trigger"] == "catalogue"
    served = httpx.get(f"{mini_origin}/v1/stats").json()["bytes_served"]
    # A restart finds everything indexed: nothing is downloaded again.
    with TestClient(create_app(_settings(redis_url, mini_origin))) as client:
        status = wait_until(lambda: _done(client), timeout_s=60)
        assert status["indexed"] == []
        assert httpx.get(f"{mini_origin}/v1/stats").json()["bytes_served"] == served
        # A model removed on purpose stays out, also after the next start.
        assert client.delete("/v1/models/tiny-b", headers=AUTH).status_code == 200
    with TestClient(create_app(_settings(redis_url, mini_origin))) as client:
        status = wait_until(lambda: _done(client), timeout_s=60)
        assert status["skipped"] == ["mini/tiny-b"]
        assert set(_catalogue(client)) == {"tiny-a", "tiny-c"}


@contextmanager
def _serve_later(sock: socket.socket, app: object) -> Iterator[None]:
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, timeout_s=20)
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.mark.slow
def test_an_origin_that_comes_up_late_is_indexed_after_retries(
    redis_url: str, mini_zoo: Path
) -> None:
    from testbed.origin import create_app as create_origin

    # Bound but not listening: connections are refused until the origin starts on it.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = "http://{}:{}".format(*sock.getsockname())
        with TestClient(create_app(_settings(redis_url, url))) as client:

            def retrying() -> bool:
                status = client.get("/v1/models").json()["origin_index"]
                return status["state"] == "retrying" and url in str(status["error"])

            wait_until(retrying, timeout_s=30)
            assert _catalogue(client) == {}
            with _serve_later(sock, create_origin(mini_zoo)):
                status = wait_until(lambda: _done(client), timeout_s=90)
                assert set(_catalogue(client)) == set(MINI_MODELS)
                assert status["error"] is None and int(status["attempts"]) >= 2


def test_the_manifest_cache_spares_the_download_of_an_indexed_commit(
    redis_url: str, mini_origin: str, tmp_path: Path
) -> None:
    import redis

    cache = tmp_path / "manifests"
    settings = _settings(redis_url, mini_origin).model_copy(update={"manifest_cache_dir": cache})
    with TestClient(create_app(settings)) as client:
        wait_until(lambda: _done(client), timeout_s=60)
        first = {m: client.get(f"/v1/models/{m}").json()["manifest"] for m in MINI_MODELS}
    assert len(list(cache.rglob("*.json"))) == len(MINI_MODELS)
    # A damaged entry is ignored (that model is downloaded again), the others are used.
    damaged = cache / "mini/tiny-a" / first["tiny-a"]["revision"] / "tiny-a.json"
    damaged.write_text("{not json")
    redis.Redis.from_url(redis_url).flushdb()  # a new controller with an empty catalogue
    served = httpx.get(f"{mini_origin}/v1/stats").json()["repos"]
    with TestClient(create_app(settings)) as client:
        wait_until(lambda: _done(client), timeout_s=60)
        again = {m: client.get(f"/v1/models/{m}").json()["manifest"] for m in MINI_MODELS}
    assert again == first
    now = httpx.get(f"{mini_origin}/v1/stats").json()["repos"]
    grew = {r for r in now if now[r]["bytes_served"] > served.get(r, {}).get("bytes_served", 0)}
    assert grew == {"mini/tiny-a"}
