"""Shared test helpers: real servers on OS-assigned ports, subprocess CLIs; waiting is
:func:`core.waiting.wait_until`, re-exported here.

Helpers live here rather than in conftest so test modules import them explicitly.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from core import serving
from core.ports import free_port
from core.waiting import wait_until
from core.wire import PlanAccepted

__all__ = [
    "PREDICT_SCRIPT",
    "REPO_ROOT",
    "PlanOutcome",
    "apply_plan",
    "free_port",
    "hf_env",
    "last_json_line",
    "live_server",
    "plan_and_wait",
    "process_gone",
    "run_cli",
    "run_python",
    "serve",
    "still_running",
    "wait_pushed",
    "start_testbed",
    "wait_until",
]

REPO_ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def serve(factory: Callable[[str], Any], **server_options: Any) -> Iterator[str]:
    """Serve the ASGI app ``factory(url)`` with a real uvicorn in a thread; yield its base URL.

    ``server_options`` go to :func:`core.serving.config` (the services' connection policy).

    The socket is bound to an OS-assigned port first and handed to uvicorn, so there is no race
    for a port, and the app is built knowing its own URL (an edge node's ``public_url``).
    """
    # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets that say they are TCP. With
    # proto 0, a response's head and body wait for the client's delayed ACK (~40 ms a request).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    host, port = sock.getsockname()
    url = f"http://{host}:{port}"
    server = uvicorn.Server(serving.config(factory(url), lifespan="on", **server_options))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()

    def started() -> bool:
        if not thread.is_alive():
            raise RuntimeError("uvicorn exited")
        return bool(server.started)

    try:
        wait_until(started, timeout_s=20, interval_s=0.01, what="uvicorn started")
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@contextmanager
def live_server(app: Any) -> Iterator[str]:
    """Serve an ASGI app with a real uvicorn in a thread; yield its base URL."""
    with serve(lambda _url: app) as url:
        yield url


_PLAN_DONE = ("applied", "failed", "superseded")


@dataclass(frozen=True)
class PlanOutcome:
    """``PUT /v1/plan`` and, when the edge accepted it (202), the final ``GET /v1/plan``."""

    response: httpx.Response
    status: dict[str, Any] | None

    @property
    def state(self) -> str:
        return "refused" if self.status is None else str(self.status["state"])

    @property
    def applied(self) -> bool:
        return self.state == "applied"

    @property
    def result(self) -> dict[str, Any]:
        """The final status (AssertionError when the edge refused the plan)."""
        if self.status is None:
            raise AssertionError(f"plan refused: {self.response.status_code} {self.response.text}")
        return self.status


def apply_plan(
    url: str, body: Mapping[str, Any], *, headers: Mapping[str, str], timeout_s: float = 120.0
) -> PlanOutcome:
    """PUT a plan to the edge at ``url`` and wait until it applied, failed or was superseded.

    A plan the edge refuses synchronously (4xx/5xx instead of 202) is returned at once.
    """
    response = httpx.put(f"{url}/v1/plan", json=dict(body), headers=dict(headers), timeout=30)
    if response.status_code != 202:
        return PlanOutcome(response, None)
    plan_id = PlanAccepted.model_validate_json(response.content).plan_id

    def done() -> dict[str, Any] | None:
        status: dict[str, Any] = httpx.get(f"{url}/v1/plan", timeout=10).json()
        if status["plan_id"] != plan_id:
            return {**status, "state": "superseded"}
        return status if status["state"] in _PLAN_DONE else None

    return PlanOutcome(
        response, wait_until(done, timeout_s=timeout_s, interval_s=0.05, what="plan done")
    )


def wait_pushed(client: Any, version: int, *, timeout_s: float = 120.0) -> dict[str, Any]:
    """``GET /v1/placement`` once the push round of ``version`` ended (or a newer placement
    replaced it): ``POST /v1/placement:plan`` answers before the edges applied anything."""

    def done() -> dict[str, Any] | None:
        placement: dict[str, Any] = client.get("/v1/placement").json()
        dispatch = placement.get("dispatch") or {"state": "done"}
        if placement["version"] != version or dispatch["state"] == "done":
            return placement
        return None

    return wait_until(done, timeout_s=timeout_s, interval_s=0.05, what=f"pushes of v{version}")


def plan_and_wait(client: Any, *, timeout_s: float = 120.0) -> dict[str, Any]:
    """``POST /v1/placement:plan`` (with the client's own token), then wait for its pushes
    (:func:`wait_pushed`)."""
    response = client.post("/v1/placement:plan")
    assert response.status_code == 200, response.text
    return wait_pushed(client, int(response.json()["version"]), timeout_s=timeout_s)


#: Loads and runs bert-sst2 with unmodified transformers (HF_ENDPOINT picks the server).
PREDICT_SCRIPT = """
import json
from transformers import pipeline
classify = pipeline("text-classification", model="trimcache-zoo/bert-sst2")
out = classify(["what a wonderful, delightful film", "terrible, boring and awful"])
print(json.dumps([o["label"] for o in out]))
"""


def hf_env(endpoint: str, hf_home: Path) -> dict[str, str]:
    """This environment with unmodified huggingface_hub/transformers pointed at ``endpoint``
    (``HF_ENDPOINT``), a private ``HF_HOME``, online, no telemetry, no Xet, quiet."""
    env = {
        **os.environ,
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(hf_home),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "PYTHONWARNINGS": "ignore",
    }
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("TRANSFORMERS_OFFLINE", None)
    return env


def run_python(
    code: str, *, env: dict[str, str] | None = None, timeout_s: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run ``python -c CODE`` in a fresh interpreter in the repo root; output captured."""
    return subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def last_json_line(result: subprocess.CompletedProcess[str]) -> Any:
    """The JSON on the last stdout line of a successful run (stderr's tail in the failure)."""
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout_s: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run ``trimcache ARGS...`` in a subprocess (the installed console script's code path)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "testbed.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout_s,
        cwd=REPO_ROOT,
    )


def start_testbed(
    state_dir: Path,
    zoo_dir: Path,
    *,
    edges: int,
    capacity_mb: int,
    timeout_s: int,
    extra: Sequence[str] = (),
) -> dict[str, Any]:
    """``trimcache testbed up`` (test profile, OS-assigned controller port, then ``extra``
    arguments); its state file."""
    result = run_cli(
        "testbed", "up", "--dir", str(state_dir), "--edges", str(edges), "--zoo", str(zoo_dir),
        "--profile", "test", "--capacity-mb", str(capacity_mb), "--timeout-s", str(timeout_s),
        "--controller-port", "0", *extra,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    state: dict[str, Any] = json.loads((state_dir / "testbed.json").read_text())
    return state


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def still_running(pids: Mapping[str, int], *, timeout_s: float = 5.0) -> list[str]:
    """The names whose process is still alive once all are gone or ``timeout_s`` passed."""
    try:
        wait_until(lambda: all(process_gone(p) for p in pids.values()), timeout_s=timeout_s)
    except TimeoutError:
        pass
    return [name for name, pid in pids.items() if not process_gone(pid)]
