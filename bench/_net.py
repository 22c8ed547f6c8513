"""Loopback helpers shared by the benchmarks: a free port, waiting for a server to answer, and
stopping the servers a benchmark started."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

import httpx

from core.ports import free_port
from core.waiting import wait_until

__all__ = ["free_port", "stop_processes", "wait_http"]


def wait_http(url: str, *, timeout_s: float = 60.0, method: str = "GET") -> None:
    """Poll ``url`` until it answers below 500; raise RuntimeError after ``timeout_s``."""

    def answers() -> bool:
        return httpx.request(method, url, timeout=2.0).status_code < 500

    try:
        wait_until(answers, timeout_s=timeout_s, what=f"{url} answers")
    except TimeoutError as exc:
        raise RuntimeError(f"{url} did not come up") from exc


def stop_processes(procs: Sequence[subprocess.Popen[bytes]], *, timeout_s: float = 10.0) -> None:
    """Terminate ``procs`` (the last started first), then kill any still alive after
    ``timeout_s``."""
    for proc in reversed(procs):
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
