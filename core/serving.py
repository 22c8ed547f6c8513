"""How every TrimCache HTTP service runs under uvicorn: one place for connection-level timeouts.

uvicorn bounds only the idle wait between two requests of a kept-alive connection, so a client
that connects and sends half a request head holds the connection (and its memory) forever.
:class:`GuardedH11Protocol` and :class:`GuardedHttpToolsProtocol` add the missing bound, as
nginx's ``client_header_timeout`` does:

- a request head (request line and headers) must arrive whole within ``header_timeout_s`` of
  its first byte (or of the connection opening); otherwise the server answers 408
  ``request_timeout`` in the project's error body and closes the connection;
- a body that stalls is :class:`core.asgi.RequestGuard`'s (408 too), and a kept-alive
  connection that sends nothing is closed after :data:`KEEP_ALIVE_S`.

:func:`run` (the services' entry points) and :func:`config` (tests' in-thread servers) apply
both, so every server of the project has the same connection policy.

Two HTTP stacks, one policy: ``http="h11"`` (pure Python, the default, on asyncio's selector
loop: the edge node's direct path writes on that loop's transports, ``edge_node.direct``) and
``http="httptools"`` (the C parser; with ``loop="uvloop"``, the controller's: a cached route
answer is a few microseconds of work, so the parser and the loop were most of its cost).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

#: Seconds a server keeps an idle keep-alive connection open (uvicorn's own default is 5 s).
#: HTTP client pools (httpx, huggingface_hub's 8 download threads) reuse idle connections; a server
#: that closes one while a client's next request is already on the wire resets that request, and
#: on a loaded host that happened to every retry of one file. 75 s is nginx's default.
KEEP_ALIVE_S = 75

#: Seconds a request head may take to arrive whole (nginx's ``client_header_timeout`` is 60 s).
HEADER_TIMEOUT_S = 30.0

_TIMEOUT_BODY = json.dumps(
    {"error": {"code": "request_timeout", "message": "request head not received in time"}}
).encode()
_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"Content-Type: application/json\r\n"
    b"X-Error-Code: request_timeout\r\n"
    b"Connection: close\r\n"
    b"Content-Length: " + str(len(_TIMEOUT_BODY)).encode() + b"\r\n\r\n" + _TIMEOUT_BODY
)


class _HeadDeadline:
    """The request-head timer both protocols share: :meth:`_arm` starts it, :meth:`_disarm`
    stops it, and when it fires while :meth:`_head_pending` holds, the connection gets the 408
    and is closed. Mixed in before the uvicorn protocol class."""

    header_timeout_s: float = HEADER_TIMEOUT_S
    _head_timer: asyncio.TimerHandle | None
    loop: asyncio.AbstractEventLoop
    transport: Any

    def _head_pending(self) -> bool:
        raise NotImplementedError

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._head_pending() or self.transport.is_closing():
            return
        self.transport.write(_TIMEOUT_RESPONSE)
        self.transport.close()


class GuardedH11Protocol(_HeadDeadline, H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request head (module docstring)."""

    def connection_made(self, transport: Any) -> None:
        self._head_timer = None
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._in_request():
            self._disarm()  # the head is complete: the body's timeouts are RequestGuard's
        elif self._head_timer is None and not self.transport.is_closing():
            self._arm()  # the first bytes of the next request on a kept-alive connection

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self._in_request():
            self._disarm()  # idle again: the keep-alive timeout governs the wait

    def _in_request(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _head_pending(self) -> bool:
        return not self._in_request()


class GuardedHttpToolsProtocol(_HeadDeadline, HttpToolsProtocol):
    """uvicorn's httptools protocol with the same deadline for each request head: armed when
    the connection opens and when a request's first byte is parsed, disarmed when its headers
    are complete."""

    def connection_made(self, transport: Any) -> None:
        self._head_timer = None
        self._head_open = True  # the connection's first request head is awaited
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_open = True
        if self._head_timer is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._head_open = False
        self._disarm()  # the head is complete: the body's timeouts are RequestGuard's
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self._head_open:
            self._disarm()  # idle again: the keep-alive timeout governs the wait

    def _head_pending(self) -> bool:
        return self._head_open


_PROTOCOLS: dict[str, type[GuardedH11Protocol] | type[GuardedHttpToolsProtocol]] = {
    "h11": GuardedH11Protocol,
    "httptools": GuardedHttpToolsProtocol,
}


def protocol(
    header_timeout_s: float = HEADER_TIMEOUT_S, *, http: str = "h11"
) -> type[GuardedH11Protocol] | type[GuardedHttpToolsProtocol]:
    """The protocol class of ``http`` (``h11`` or ``httptools``) with ``header_timeout_s`` (a
    subclass when it is not the default)."""
    base = _PROTOCOLS[http]
    if header_timeout_s == HEADER_TIMEOUT_S:
        return base
    return type(base.__name__, (base,), {"header_timeout_s": header_timeout_s})


def config(
    app: Any, *, header_timeout_s: float = HEADER_TIMEOUT_S, http: str = "h11", **kwargs: Any
) -> uvicorn.Config:
    """A ``uvicorn.Config`` for ``app`` with the project's connection policy (``http``: which
    parser, module docstring; ``loop`` and the rest go to uvicorn)."""
    kwargs.setdefault("timeout_keep_alive", KEEP_ALIVE_S)
    kwargs.setdefault("log_level", "warning")
    # Never uvicorn's "auto" (uvloop whenever it is installed): the edge needs asyncio's loop.
    kwargs.setdefault("loop", "asyncio")
    return uvicorn.Config(app, http=protocol(header_timeout_s, http=http), **kwargs)


def run(app: Any, *, host: str, port: int, **kwargs: Any) -> None:
    """Serve ``app`` in the foreground until interrupted (the services' entry points)."""
    uvicorn.Server(config(app, host=host, port=port, **kwargs)).run()
