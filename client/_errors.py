"""Errors raised by the client SDK, and the one place HTTP error responses become exceptions.

Hierarchy::

    TrimCacheError (core)
    └── ClientError                    any client failure; carries http_status / remote_code
        ├── ModelNotFoundError         (also LookupError) the model or repo is unknown
        ├── BlockNotFoundError         (also LookupError) one source lacks a block
        ├── ControllerUnavailableError (also ConnectionError) the controller is unreachable or 5xx;
        │                              the message names its URL and how to point at another
        ├── EdgeUnavailableError       (also ConnectionError) transport error or 5xx from a source
        ├── BlockIntegrityError        received bytes do not hash to the block id (or came short)
        ├── NoSourceError              every source of some block failed; names all it tried
        └── DiskFullError              (also OSError) the device cache is out of space

:func:`raise_for_error` maps a response's ``X-Error-Code`` (docs/api.md) to the most specific
class; an unknown code falls back to :class:`ClientError`. Transport errors are mapped with
:func:`transport_error` and always chained with ``raise ... from exc``; a failure of the
controller itself becomes :func:`controller_unavailable` (an error of the edge nodes it routes to
stays an :class:`EdgeUnavailableError`). Every message is one line: the CLI prints it as is.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import ClassVar

import httpx

from core.errors import ErrorCode, TrimCacheError

__all__ = [
    "BlockIntegrityError",
    "BlockNotFoundError",
    "ClientError",
    "ControllerUnavailableError",
    "DiskFullError",
    "EdgeUnavailableError",
    "ModelNotFoundError",
    "NoSourceError",
    "controller_unavailable",
    "raise_for_error",
    "transport_error",
]

# How a user points the SDK or the CLI at another controller (part of every "unreachable" message).
CONTROLLER_HINT = (
    "point at the right one with --controller URL (SDK: controller_url=) or"
    " TRIMCACHE_CONTROLLER_URL; `trimcache testbed status` shows a testbed's controller URL"
)


class ClientError(TrimCacheError):
    """Base of every client error.

    Args:
        message: the one-line message (the CLI prints it as is).
        http_status: the HTTP status of the response that caused it, if any.
        remote_code: the server's ``X-Error-Code``, if any.
        url: the URL of the request, if any.
        request_id: the server's ``X-Request-Id``, if any.
        body: the start of the response body, for debugging.
    """

    code: ClassVar[str] = ErrorCode.client_error
    exit_code: ClassVar[int] = 1

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        remote_code: str | None = None,
        url: str | None = None,
        request_id: str | None = None,
        body: str | None = None,
    ) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.remote_code = remote_code
        self.url = url
        self.request_id = request_id
        self.body = body


class ModelNotFoundError(ClientError, LookupError):
    """The controller (or edge node, origin, device cache) does not know the model."""

    code = ErrorCode.model_not_found


class BlockNotFoundError(ClientError, LookupError):
    """A source does not hold a block it was asked for."""

    code = ErrorCode.block_not_found


class ControllerUnavailableError(ClientError, ConnectionError):
    """The controller could not be reached, dropped the connection, or answered 5xx.

    Not an edge error: no edge node was asked. ``url`` is the controller's base URL.
    """

    code = ErrorCode.controller_unavailable


class EdgeUnavailableError(ClientError, ConnectionError):
    """A source could not be reached, dropped the connection, or answered 5xx."""

    code = ErrorCode.edge_unavailable


class BlockIntegrityError(ClientError):
    """Received bytes do not match the block id (wrong bytes or a short body)."""

    code = ErrorCode.block_integrity


class NoSourceError(ClientError):
    """Some blocks could not be fetched from any source.

    ``tried`` maps each failed block id to the ``(source_url, reason)`` attempts made for it.
    """

    code = ErrorCode.no_source

    def __init__(self, model_id: str, tried: Mapping[str, Sequence[tuple[str, str]]]) -> None:
        sources: dict[str, str] = {}
        for attempts in tried.values():
            for url, reason in attempts:
                sources.setdefault(url, reason)
        shown = "; ".join(f"{url} ({reason})" for url, reason in sources.items()) or "none"
        super().__init__(
            f"no source could deliver {len(tried)} block(s) of {model_id}; tried: {shown}"
        )
        self.model_id = model_id
        self.tried = {bid: list(attempts) for bid, attempts in tried.items()}


class DiskFullError(ClientError, OSError):
    """The device cache ran out of space; nothing half-written was left in it."""

    code = ErrorCode.disk_full


# Error code -> class (either spelling of X-Error-Code, see core.errors.ErrorCode.parse).
_CODE_TO_ERROR: dict[ErrorCode, type[ClientError]] = {
    ErrorCode.model_not_found: ModelNotFoundError,
    ErrorCode.repo_not_found: ModelNotFoundError,
    ErrorCode.revision_not_found: ModelNotFoundError,
    ErrorCode.block_not_found: BlockNotFoundError,
    ErrorCode.entry_not_found: BlockNotFoundError,
    ErrorCode.state_unavailable: EdgeUnavailableError,
    ErrorCode.upstream_unavailable: EdgeUnavailableError,
    ErrorCode.internal: EdgeUnavailableError,
}


def _message_of(body: str) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(data.get("detail"), str):
            return str(data["detail"])
    return None


def raise_for_error(response: httpx.Response) -> None:
    """Raise the client error matching an error response; do nothing on 2xx/3xx.

    A streamed response must be read (``response.read()``) first.

    Args:
        response: the HTTP response.

    Raises:
        ModelNotFoundError: ``model_not_found`` and the repo/revision codes.
        BlockNotFoundError: ``block_not_found`` / ``EntryNotFound``.
        EdgeUnavailableError: any 5xx (``state_unavailable``, ``internal``, ...).
        ClientError: any other error status.
    """
    if response.status_code < 400:
        return
    remote_code = response.headers.get("X-Error-Code")
    try:
        body = response.text[:2000]
    except (httpx.ResponseNotRead, UnicodeDecodeError):
        body = ""
    message = _message_of(body) or body.strip()[:200] or response.reason_phrase
    code = ErrorCode.parse(remote_code)
    cls = _CODE_TO_ERROR.get(code) if code is not None else None
    if cls is None:
        cls = EdgeUnavailableError if response.status_code >= 500 else ClientError
    url = str(response.request.url)
    raise cls(
        f"{message} ({response.status_code} {remote_code or 'no error code'} from {url})",
        http_status=response.status_code,
        remote_code=remote_code,
        url=url,
        request_id=response.headers.get("X-Request-Id"),
        body=body,
    )


def _one_line(text: str) -> str:
    return " ".join(text.split())


def transport_error(exc: httpx.TransportError, url: str) -> EdgeUnavailableError:
    """The client error for a transport failure (raise it ``from exc``)."""
    reason = _one_line(f"{type(exc).__name__}: {exc}")
    return EdgeUnavailableError(f"{url} unreachable: {reason}", url=url)


def controller_unavailable(controller_url: str, cause: ClientError) -> ControllerUnavailableError:
    """The error for a controller that failed at the transport level or with a 5xx.

    When nothing answered, the message says how to point at another controller
    (:data:`CONTROLLER_HINT`).

    Args:
        controller_url: the controller's base URL (named in the message).
        cause: the transport or 5xx error of the request (raise the result ``from`` it).

    >>> err = controller_unavailable("http://127.0.0.1:9", EdgeUnavailableError("refused"))
    >>> str(err).startswith("controller http://127.0.0.1:9 is unreachable (refused); point at")
    True
    """
    if cause.http_status is None:  # nothing answered: most likely the wrong URL
        reason = str(cause).removeprefix(f"{cause.url} unreachable: ")
        message = f"controller {controller_url} is unreachable ({reason}); {CONTROLLER_HINT}"
    else:  # it answered, but could not serve (its Redis is down, ...)
        message = f"controller {controller_url} failed: {cause}"
    return ControllerUnavailableError(
        _one_line(message),
        http_status=cause.http_status,
        remote_code=cause.remote_code,
        url=controller_url,
        request_id=cause.request_id,
        body=cause.body,
    )
