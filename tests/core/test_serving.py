"""Connection policy of every service (core.serving): request-head deadline, long keep-alive.

Real uvicorn (both HTTP stacks) on an OS-assigned port, raw sockets: a half-sent request head is
answered 408 and closed; a complete request arriving slowly (within the deadline) and a
kept-alive connection idle for longer than the head deadline are still served.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tests.helpers import serve

HEAD_TIMEOUT_S = 0.5


async def _hello(_request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


# Both HTTP stacks of core.serving: h11 on asyncio (the default) and httptools on uvloop (the
# controller's).
@pytest.fixture(
    scope="module",
    params=[{"http": "h11"}, {"http": "httptools", "loop": "uvloop"}],
    ids=["h11", "httptools"],
)
def address(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    app = Starlette(routes=[Route("/", _hello)])
    with serve(lambda _url: app, header_timeout_s=HEAD_TIMEOUT_S, **request.param) as url:
        parts = urlsplit(url)
        assert parts.hostname and parts.port
        yield parts.hostname, parts.port


def _read_response(sock: socket.socket) -> bytes:
    """Bytes until the connection closes, or one whole response with a Content-Length."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            lengths = [
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ]
            if lengths and len(body) >= lengths[0]:
                return data


def _connect(address: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(address)
    sock.settimeout(30)  # a guard against hanging forever, not a speed bound
    return sock


def test_a_half_sent_request_head_is_408_and_closed(address: tuple[str, int]) -> None:
    with _connect(address) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # never finishes the head
        answer = _read_response(sock)
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert b"request_timeout" in answer
        assert sock.recv(1) == b""  # closed


def test_a_connection_that_sends_nothing_is_closed_too(address: tuple[str, int]) -> None:
    with _connect(address) as sock:
        assert _read_response(sock).startswith(b"HTTP/1.1 408")


def test_a_slow_but_timely_head_and_a_long_idle_keep_alive_are_served(
    address: tuple[str, int],
) -> None:
    with _connect(address) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n")
        time.sleep(HEAD_TIMEOUT_S / 5)
        sock.sendall(b"Host: x\r\n\r\n")
        first = _read_response(sock)
        assert first.startswith(b"HTTP/1.1 200") and first.endswith(b"hello")
        # Idle: the keep-alive timeout (75 s) governs now, not the head deadline.
        time.sleep(HEAD_TIMEOUT_S * 3)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        second = _read_response(sock)
        assert second.startswith(b"HTTP/1.1 200") and second.endswith(b"hello")
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # the next head starts: its deadline runs
        assert _read_response(sock).startswith(b"HTTP/1.1 408")
