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
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn

from core.asgi import KEEP_ALIVE_S
from core.ports import free_port
from core.waiting import wait_until

__all__ = [
    "PREDICT_SCRIPT",
    "REPO_ROOT",
    "free_port",
    "hf_env",
    "last_json_line",
    "live_server",
    "process_gone",
    "run_cli",
    "run_python",
    "serve",
    "still_running",
    "start_testbed",
    "wait_until",
]

REPO_ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def serve(factory: Callable[[str], Any]) -> Iterator[str]:
    """Serve the ASGI app ``factory(url)`` with a real uvicorn in a thread; yield its base URL.

    The socket is bound to an OS-assigned port first and handed to uvicorn, so there is no race
    for a port, and the app is built knowing its own URL (an edge node's ``public_url``).
    """
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    host, port = sock.getsockname()
    url = f"http://{host}:{port}"
    config = uvicorn.Config(
        factory(url), log_level="warning", lifespan="on", timeout_keep_alive=KEEP_ALIVE_S
    )
    server = uvicorn.Server(config)
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
    state_dir: Path, zoo_dir: Path, *, edges: int, capacity_mb: int, timeout_s: int
) -> dict[str, Any]:
    """``trimcache testbed up`` (test profile, OS-assigned controller port); its state file."""
    result = run_cli(
        "testbed", "up", "--dir", str(state_dir), "--edges", str(edges), "--zoo", str(zoo_dir),
        "--profile", "test", "--capacity-mb", str(capacity_mb), "--timeout-s", str(timeout_s),
        "--controller-port", "0",
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
