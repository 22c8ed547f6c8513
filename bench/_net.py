"""Loopback helpers shared by the benchmarks: a free port, and waiting for a server to answer."""

from __future__ import annotations

import httpx

from core.ports import free_port
from core.waiting import wait_until

__all__ = ["free_port", "wait_http"]


def wait_http(url: str, *, timeout_s: float = 60.0, method: str = "GET") -> None:
    """Poll ``url`` until it answers below 500; raise RuntimeError after ``timeout_s``."""

    def answers() -> bool:
        return httpx.request(method, url, timeout=2.0).status_code < 500

    try:
        wait_until(answers, timeout_s=timeout_s, what=f"{url} answers")
    except TimeoutError as exc:
        raise RuntimeError(f"{url} did not come up") from exc
