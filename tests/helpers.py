"""Shared test helpers: real servers on OS-assigned ports, waiting, subprocess CLIs.

Helpers live here rather than in conftest so test modules import them explicitly.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn

REPO_ROOT = Path(__file__).resolve().parent.parent


def wait_until(
    predicate: Callable[[], Any], *, timeout_s: float = 15.0, interval_s: float = 0.05
) -> Any:
    """Call ``predicate`` until it returns a truthy value (exceptions count as falsy)."""
    deadline = time.monotonic() + timeout_s
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last_exc = exc
        time.sleep(interval_s)
    raise TimeoutError(f"condition not met within {timeout_s}s (last error: {last_exc!r})")


@contextmanager
def live_server(app: Any) -> Iterator[str]:
    """Serve an ASGI app with a real uvicorn in a thread; yield its base URL.

    The socket is bound to port 0 first and handed to uvicorn, so there is no race for a port.
    """
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    host, port = sock.getsockname()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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
