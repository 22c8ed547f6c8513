"""Errors of the edge node and the one place that maps them to HTTP.

Hierarchy::

    TrimCacheError (core.errors)          code / status_code / exit_code class vars
    ├── CoreError (core.errors)           also reach the handler unchanged:
    │   ├── InvalidBlockIdError    400 invalid_block_id
    │   ├── BlockNotFoundError     404 block_not_found
    │   ├── DigestMismatchError    400 digest_mismatch
    │   ├── StoreFullError         507 store_full
    │   ├── HubError               404s of the Hugging Face API (core.hubapi): ``hub_code``
    │   │                          (RepoNotFound, RevisionNotFound, EntryNotFound) goes in
    │   │                          ``X-Error-Code``, which huggingface_hub maps to its errors
    │   └── RangeNotSatisfiableError 416 range_not_satisfiable (core.hubapi)
    └── EdgeError
        ├── InvalidRequestError        400 invalid_request (a malformed plan or manifest)
        ├── UnauthorizedError          401 unauthorized
        ├── ModelNotFoundError         404 model_not_found (also a LookupError)
        ├── StalePlanError             409 stale_plan (older than the applied plan)
        ├── UpstreamUnavailableError   502 upstream_unavailable (no peer nor origin delivered,
        │                                  or the controller did not answer a catalogue lookup)
        └── PullBufferBusyError        503 pull_buffer_busy (no room for pull-through in time)

Every error response is ``{"error": {"code", "message"}}`` with an ``X-Error-Code`` header
(docs/api.md "Errors").
"""

from __future__ import annotations

from core.errors import TrimCacheError
from core.hubapi import (
    EntryNotFoundError,
    HubError,
    RangeNotSatisfiableError,
    RepoNotFoundError,
    RevisionNotFoundError,
)

__all__ = [
    "EntryNotFoundError",
    "HubError",
    "RangeNotSatisfiableError",
    "RepoNotFoundError",
    "RevisionNotFoundError",
]


class EdgeError(TrimCacheError):
    """Base of the edge node's own errors."""


class InvalidRequestError(EdgeError, ValueError):
    code = "invalid_request"
    status_code = 400
    exit_code = 2


class UnauthorizedError(EdgeError):
    code = "unauthorized"
    status_code = 401


class ModelNotFoundError(EdgeError, LookupError):
    code = "model_not_found"
    status_code = 404

    def __init__(self, model_id: str) -> None:
        super().__init__(f"model {model_id!r} is not held by this node")
        self.model_id = model_id


class StalePlanError(EdgeError):
    """A plan older than the one the node applied (fencing: a lapsed planner's late push)."""

    code = "stale_plan"
    status_code = 409


class UpstreamUnavailableError(EdgeError):
    code = "upstream_unavailable"
    status_code = 502


def error_header_code(exc: TrimCacheError) -> str:
    """The ``X-Error-Code`` value for ``exc`` (the Hub's code for Hub errors)."""
    if isinstance(exc, HubError) and exc.hub_code:
        return exc.hub_code
    return exc.code


class PullBufferBusyError(EdgeError):
    code = "pull_buffer_busy"
    status_code = 503
