"""How every TrimCache HTTP service runs under uvicorn: one place for connection-level timeouts.

uvicorn bounds only the idle wait between two requests of a kept-alive connection, so a client
that connects and sends half a request head holds the connection (and its memory) forever.
:class:`GuardedH11Protocol` adds the missing bound, as nginx's ``client_header_timeout`` does:

- a request head (request line and headers) must arrive whole within ``header_timeout_s`` of
  its first byte (or of the connection opening); otherwise the server answers 408
  ``request_timeout`` in the project's error body and closes the connection;
- a body that stalls is :class:`core.asgi.RequestGuard`'s (408 too), and a kept-alive
  connection that sends nothing is closed after :data:`KEEP_ALIVE_S`.

:func:`run` (the services' entry points) and :func:`config` (tests' in-thread servers) apply
both, so every server of the project has the same connection policy.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

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


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request head (module docstring)."""

    header_timeout_s: float = HEADER_TIMEOUT_S

    def connection_made(self, transport: Any) -> None:
        self._head_timer: asyncio.TimerHandle | None = None
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

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _in_request(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_request() or self.transport.is_closing():
            return
        self.transport.write(_TIMEOUT_RESPONSE)
        self.transport.close()


def protocol(header_timeout_s: float = HEADER_TIMEOUT_S) -> type[GuardedH11Protocol]:
    """The protocol class with ``header_timeout_s`` (a subclass when it is not the default)."""
    if header_timeout_s == HEADER_TIMEOUT_S:
        return GuardedH11Protocol
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"header_timeout_s": header_timeout_s})


def config(
    app: Any, *, header_timeout_s: float = HEADER_TIMEOUT_S, **kwargs: Any
) -> uvicorn.Config:
    """A ``uvicorn.Config`` for ``app`` with the project's connection policy."""
    kwargs.setdefault("timeout_keep_alive", KEEP_ALIVE_S)
    kwargs.setdefault("log_level", "warning")
    return uvicorn.Config(app, http=protocol(header_timeout_s), **kwargs)


def run(app: Any, *, host: str, port: int, **kwargs: Any) -> None:
    """Serve ``app`` in the foreground until interrupted (the services' entry points)."""
    uvicorn.Server(config(app, host=host, port=port, **kwargs)).run()
