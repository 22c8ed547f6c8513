"""The controller's errors: re-exported from the one tree in :mod:`core.errors`.

Each maps to one HTTP status and :class:`~core.errors.ErrorCode`; the single exception handler
in :mod:`controller.app` turns any of them into ``{"error": {"code", "message"}}``
(:class:`core.wire.ErrorBody`) with an ``X-Error-Code`` header. The names stay importable from
here so code written against ``controller.errors`` keeps working.
"""

from __future__ import annotations

from core.errors import (
    IndexingError,
    InvalidRequestError,
    ModelNotFoundError,
    NodeNotFoundError,
    StateUnavailableError,
    TrimCacheError,
    UnauthorizedError,
    UpstreamUnavailableError,
)
from core.hubapi import RepoNotFoundError, RevisionNotFoundError

#: Former base of the controller's errors: now the one root (Hub errors live in core.hubapi).
ControllerError = TrimCacheError

__all__ = [
    "ControllerError",
    "IndexingError",
    "InvalidRequestError",
    "ModelNotFoundError",
    "NodeNotFoundError",
    "RepoNotFoundError",
    "RevisionNotFoundError",
    "StateUnavailableError",
    "UnauthorizedError",
    "UpstreamUnavailableError",
]
