"""Fail over between equivalent services (controller replicas): the one loop edges and clients use.

A *service list* is one or more base URLs separated by commas (``EDGE_CONTROLLER_URL``,
``TRIMCACHE_CONTROLLER_URL``, ``--controller``, ``controller_url=``), e.g.
``http://10.0.0.1:8080,http://10.0.0.2:8080``; :func:`parse_urls` normalises it.

:meth:`Endpoints.call` sends one request to each URL in turn, starting with the one that
answered last (so a dead replica costs one failed attempt, not one per request), until one
answers: an exception of ``errors`` (connection refused, reset, timeout) or a result that
``retry_on`` rejects (a 5xx) moves on to the next URL; anything else is the answer, and its
URL is tried first next time. When every URL failed, the last rejected result is returned if
there was one (the caller reports it as it would a single service's), else the last exception
is raised. Transport-agnostic (core imports no HTTP client): the caller's ``send`` does the I/O.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

R = TypeVar("R")


def parse_urls(value: str | Iterable[str]) -> tuple[str, ...]:
    """The base URLs of a comma-separated list (or of a sequence of them), without trailing
    slashes or repeats, in order.

    Raises:
        ValueError: no URL, or one that is not http(s).
    """
    parts = value.split(",") if isinstance(value, str) else [p for v in value for p in v.split(",")]
    urls: list[str] = []
    for part in parts:
        url = part.strip().rstrip("/")
        if not url:
            continue
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"expected an http(s) URL, got {url!r}")
        if url not in urls:
            urls.append(url)
    if not urls:
        raise ValueError("expected at least one http(s) URL")
    return tuple(urls)


class Endpoints:
    """An ordered list of equivalent base URLs and the one that answered last."""

    def __init__(self, urls: Sequence[str]) -> None:
        self.urls = parse_urls(urls)
        self._lock = threading.Lock()
        self._first = 0

    def __str__(self) -> str:
        return ",".join(self.urls)

    @property
    def current(self) -> str:
        """The URL tried first (the one that answered last)."""
        with self._lock:
            return self.urls[self._first]

    def order(self) -> list[str]:
        """Every URL, the one that answered last first, then the others in list order."""
        with self._lock:
            first = self._first
        return [self.urls[(first + i) % len(self.urls)] for i in range(len(self.urls))]

    def call(
        self,
        send: Callable[[str], R],
        *,
        errors: tuple[type[BaseException], ...],
        retry_on: Callable[[R], bool] = lambda _result: False,
    ) -> R:
        """``send(base_url)`` on each URL in turn until one answers (see the module docstring)."""
        rejected: list[R] = []
        failure: BaseException | None = None
        for url in self.order():
            try:
                result = send(url)
            except errors as exc:
                failure = exc
                continue
            if retry_on(result):
                rejected.append(result)
                continue
            with self._lock:
                self._first = self.urls.index(url)
            return result
        if rejected:
            return rejected[-1]
        assert failure is not None, "at least one URL was tried"
        raise failure
