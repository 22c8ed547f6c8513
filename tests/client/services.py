"""The real services for the client's integration tests: origin, controller (real Redis) and
edge nodes, each a real uvicorn server; plus an edge node as a separate process (to kill it).

:class:`Stack` is the running set the ``stack`` fixture (tests/client/conftest.py) yields.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from core.digest import sha256_file
from core.manifest import ModelManifest
from tests.helpers import REPO_ROOT, free_port, wait_until

TOKEN = "client-test-token"
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
        httpx.put(f"{self.controller}/v1/nodes/{node_id}", json=body).raise_for_status()

    def unregister(self, node_id: str) -> None:
        httpx.delete(f"{self.controller}/v1/nodes/{node_id}")


def assert_zoo_files(path: Path, repo_dir: Path) -> None:
    names = sorted(p.name for p in repo_dir.iterdir() if p.is_file())
    assert names
    for name in names:
        assert sha256_file(path / name) == sha256_file(repo_dir / name), name


@contextmanager
def serve(factory: Callable[[str], Any]) -> Iterator[str]:
    """Like ``tests.helpers.live_server``, but the app is built knowing its own URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    host, port = sock.getsockname()
    url = f"http://{host}:{port}"
    server = uvicorn.Server(uvicorn.Config(factory(url), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


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
        **extra,
    )


@contextmanager
def edge_node(node_id: str, data_dir: Path, **kwargs: Any) -> Iterator[str]:
    from edge_node.app import create_app

    with serve(lambda url: create_app(edge_settings(node_id, data_dir, url, **kwargs))) as url:
        yield url


@contextmanager
def edge_process(node_id: str, data_dir: Path, **kwargs: Any) -> Iterator[tuple[str, int]]:
    """An edge node in its own process (``python -m edge_node``); yields (url, pid)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = edge_settings(node_id, data_dir, url, **kwargs)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    for name, value in settings.model_dump().items():
        if value is not None:
            env[f"EDGE_{name.upper()}"] = str(value)
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_node"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: httpx.get(f"{url}/healthz").status_code == 200, timeout_s=60)
        yield url, proc.pid
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)


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
    response = httpx.put(
        f"{edge_url}/v1/plan",
        json=body,
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=300,
    )
    response.raise_for_status()


def route_sources(controller_url: str, model_id: str) -> list[str]:
    response = httpx.get(f"{controller_url}/v1/routes/{model_id}")
    response.raise_for_status()
    return [s["url"] for s in response.json()["sources"]]
