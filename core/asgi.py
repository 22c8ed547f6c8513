"""ASGI guards every TrimCache HTTP service mounts: bounded request bodies and body read timeouts.

:class:`RequestGuard` sits in front of the app (outermost middleware):

- a request whose ``Content-Length`` exceeds ``max_body_bytes``, or whose streamed body grows past
  it, answers 413 ``payload_too_large`` before the app parses anything (so a huge body never
  stalls the event loop in a JSON parser);
- a body that stops arriving for ``read_timeout_s`` between two chunks answers 408
  ``request_timeout`` and the connection is closed (a half-sent request never holds a worker);
- errors use the project's ``{"error": {"code", "message"}}`` body and an ``X-Error-Code`` header.

:func:`header_text` makes any text safe for an HTTP header value (latin-1 only, one line), so an
error message quoting a client's non-latin-1 path never turns a 404 into a 500.
:func:`validation_error` is FastAPI's 422 answer made safe for any input: FastAPI echoes the
offending value, and a NaN or infinity there made the answer itself fail with a 500.
:func:`bearer_dependency` is the one FastAPI dependency for control routes, enforcing the one
token policy of :mod:`core.auth` (which stays framework-free: the client imports it too).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from typing import Annotated, Any

import anyio
from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.auth import refusal
from core.errors import UnauthorizedError

#: Seconds a server keeps an idle keep-alive connection open (uvicorn's own default is 5 s).
#: HTTP client pools (httpx, huggingface_hub's 8 download threads) reuse idle connections; a server
#: that closes one while a client's next request is already on the wire resets that request, and
#: on a loaded host that happened to every retry of one file. 75 s is nginx's default.
KEEP_ALIVE_S = 75

# OpenAPI ``responses`` of routes that answer raw bytes (blocks, Hub file downloads).
_BYTES = {
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
}
BINARY_RESPONSES: dict[int | str, dict[str, Any]] = {200: _BYTES, 206: _BYTES}

DEFAULT_MAX_BODY_BYTES = 2 * 1024 * 1024
DEFAULT_READ_TIMEOUT_S = 15.0


def header_text(text: str, *, limit: int = 512) -> str:
    """``text`` as a header value: non-latin-1 escaped (``\\uXXXX``), one line, ``limit`` long."""
    safe = text.encode("latin-1", "backslashreplace").decode("latin-1")
    safe = safe.replace("\r", " ").replace("\n", " ")
    return safe if len(safe) <= limit else safe[: limit - 3] + "..."


async def send_error(send: Send, status: int, code: str, message: str) -> None:
    """Send a complete JSON error response (``Connection: close``)."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-error-code", code.encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as strings and unknown objects as ``str`` (JSON-able)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


async def validation_error(_request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 ``{"detail": [...]}``, whatever the rejected input held."""
    errors = getattr(exc, "errors", None)
    detail = json_safe(errors() if callable(errors) else str(exc))
    return JSONResponse({"detail": detail}, status_code=422)


class RequestGuard:
    """Refuse over-long bodies (413) and bodies that stall (408); see the module docstring."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.read_timeout_s = read_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await send_error(send, 400, "invalid_request", "malformed Content-Length")
                    return
                if declared > limit:
                    await send_error(
                        send,
                        413,
                        "payload_too_large",
                        f"request body of {declared} bytes exceeds the limit of {limit} bytes",
                    )
                    return
        # The body is read here, bounded in size and time, before the app sees the request; the
        # app then gets it replayed in one message (controller, origin and edge bodies are small).
        chunks: list[bytes] = []
        received = 0
        while True:
            message: Message | None = None
            with anyio.move_on_after(self.read_timeout_s):
                message = await receive()
            if message is None:
                await send_error(
                    send,
                    408,
                    "request_timeout",
                    f"request body stalled for more than {self.read_timeout_s:g} s",
                )
                return
            if message["type"] != "http.request":
                return  # the client went away before sending its body
            chunk: bytes = message.get("body", b"")
            received += len(chunk)
            if received > limit:
                await send_error(
                    send, 413, "payload_too_large", f"request body exceeds {limit} bytes"
                )
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


_BEARER = HTTPBearer(auto_error=False, description="the service's control token")


def bearer_dependency(
    tokens: Callable[[Request], Iterable[str | None]], *, setting: str
) -> Callable[..., None]:
    """The FastAPI dependency that enforces :func:`core.auth.refusal` on a control route.

    ``tokens(request)`` returns the tokens the service accepts (from its settings on
    ``app.state``); ``setting`` names the variable that configures them. The header is read with
    FastAPI's :class:`~fastapi.security.HTTPBearer` (``auto_error=False``: the one policy, not
    FastAPI's 403, decides), so each service's OpenAPI document declares the bearer scheme.
    Raises :class:`core.errors.UnauthorizedError` (401 ``unauthorized``).
    """

    def require_token(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
    ) -> None:
        header = request.headers.get("Authorization")
        if credentials is not None:
            header = f"{credentials.scheme} {credentials.credentials}"
        reason = refusal(header, tokens(request), setting=setting)
        if reason is not None:
            raise UnauthorizedError(reason)

    return require_token
