"""The data path's HTTP/1.1 reader: bodies are read straight into the caller's buffers.

Block bytes are the bulk of what the client moves, so they skip httpx (whose reads are 64 KiB
and copied again to be re-chunked): :class:`Wire` sends a request with the standard library's
``http.client`` and hands back a :class:`Reply` whose :meth:`Reply.readinto` fills a caller's
1 MiB buffer with one call (``recv_into`` under the hood, no extra copy). Connections are kept
alive per ``(scheme, host:port)`` and reused; redirects are followed (a Hub ``resolve`` may
redirect to a CDN). Control requests (routes, manifests, reports) stay on httpx.

Errors: no connection, a timeout or a cut body is :class:`EdgeUnavailableError` naming the URL;
a 4xx/5xx answer is the client error of its code (:func:`client._errors.raise_for_error`).
"""

from __future__ import annotations

import functools
import http.client
import ssl
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx

from ._errors import EdgeUnavailableError, raise_for_error

REDIRECTS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 5


@functools.lru_cache(maxsize=1)
def tls_context() -> ssl.SSLContext:
    """One TLS context per process, shared by every client (loading the CA bundle takes ~30 ms)."""
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


def _unreachable(url: str, exc: BaseException) -> EdgeUnavailableError:
    reason = " ".join(f"{type(exc).__name__}: {exc}".split())
    return EdgeUnavailableError(f"{url} unreachable: {reason}", url=url)


@dataclass(slots=True)
class Reply:
    """An answer with status < 400 whose body is still to read."""

    url: str
    status: int
    headers: Mapping[str, str]
    _response: http.client.HTTPResponse

    @property
    def length(self) -> int | None:
        """The body length the server announced (None when chunked)."""
        return self._response.length

    def readinto(self, view: memoryview) -> int:
        """Fill ``view`` (fewer bytes only at the end of the body); 0 means the body ended."""
        try:
            return self._response.readinto(view)
        except (OSError, http.client.HTTPException) as exc:
            raise _unreachable(self.url, exc) from exc


class Wire:
    """Keep-alive HTTP/1.1 connections for bulk bodies (thread-safe: one request per connection).

    Args:
        timeout_s: connect and per-read timeout.
        headers: sent with every request (the client's user area, ``X-TrimCache-Area``).
    """

    def __init__(self, timeout_s: float, *, headers: Mapping[str, str] | None = None) -> None:
        self._timeout_s = timeout_s
        self._headers = dict(headers or {})
        self._idle: dict[tuple[str, str], list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()

    def _take(self, key: tuple[str, str]) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            conns = self._idle.get(key)
            if conns:
                return conns.pop(), True
        scheme, netloc = key
        if scheme == "https":
            conn = http.client.HTTPSConnection(
                netloc, timeout=self._timeout_s, context=tls_context()
            )
            return conn, False
        return http.client.HTTPConnection(netloc, timeout=self._timeout_s), False

    def _give_back(self, key: tuple[str, str], conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._idle.setdefault(key, []).append(conn)

    def _send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
    ) -> tuple[tuple[str, str], http.client.HTTPConnection, http.client.HTTPResponse]:
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        while True:
            conn, reused = self._take(key)
            try:
                conn.request(method, target or "/", body=body, headers=dict(headers))
                return key, conn, conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                if reused:
                    continue  # the server closed an idle keep-alive connection: open a new one
                raise _unreachable(url, exc) from exc

    @contextmanager
    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> Iterator[Reply]:
        """Send a request; yield its :class:`Reply` (the connection is reused if fully read).

        Raises:
            EdgeUnavailableError: no connection, a timeout, or too many redirects.
            ClientError: (a subclass for) a 4xx/5xx answer.
        """
        sent = {"Content-Type": "application/json"} if body is not None else {}
        sent.update(self._headers)
        sent.update(headers or {})
        for _ in range(MAX_REDIRECTS + 1):
            key, conn, response = self._send(method, url, sent, body)
            location = response.getheader("Location")
            if response.status in REDIRECTS and location:
                response.read()
                self._release(key, conn, response)
                url = urljoin(url, location)
                if response.status == 303:
                    method, body = "GET", None
                continue
            if response.status >= 400:
                try:
                    content = response.read()
                except (OSError, http.client.HTTPException) as exc:
                    conn.close()
                    raise _unreachable(url, exc) from exc
                self._release(key, conn, response)
                raise_for_error(
                    httpx.Response(
                        response.status,
                        headers=response.getheaders(),
                        content=content,
                        request=httpx.Request(method, url),
                    )
                )
            reply = Reply(url, response.status, dict(response.getheaders()), response)
            try:
                yield reply
            finally:
                self._release(key, conn, response)
            return
        raise EdgeUnavailableError(f"{url}: more than {MAX_REDIRECTS} redirects", url=url)

    def _release(
        self,
        key: tuple[str, str],
        conn: http.client.HTTPConnection,
        response: http.client.HTTPResponse,
    ) -> None:
        if response.isclosed() and not response.will_close:
            self._give_back(key, conn)
        else:
            conn.close()
