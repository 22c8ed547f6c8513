"""The edge node's errors: re-exported from the one tree in :mod:`core.errors`.

Core's block-format errors reach the app's handler unchanged too (``invalid_block_id`` 400,
``block_not_found`` 404, ``digest_mismatch`` 400, ``store_full`` 507). Every error response is
``{"error": {"code", "message"}}`` (:class:`core.wire.ErrorBody`) with an ``X-Error-Code``
header: the code itself, or on Hub errors the Hub's spelling (:func:`error_header_code`), which
``huggingface_hub`` maps to its own exception classes. The names stay importable from here.
"""

from __future__ import annotations

from core.errors import (
    InvalidRequestError,
    ModelNotFoundError,
    PlanSupersededError,
    PullBufferBusyError,
    ServiceError,
    StalePlanError,
    UnauthorizedError,
    UpstreamUnavailableError,
    error_header_code,
)
from core.hubapi import (
    EntryNotFoundError,
    HubError,
    RangeNotSatisfiableError,
    RepoNotFoundError,
    RevisionNotFoundError,
)

#: Former base of the edge node's errors: every service error now shares one base.
EdgeError = ServiceError

__all__ = [
    "EdgeError",
    "EntryNotFoundError",
    "HubError",
    "InvalidRequestError",
    "ModelNotFoundError",
    "PlanSupersededError",
    "PullBufferBusyError",
    "RangeNotSatisfiableError",
    "RepoNotFoundError",
    "RevisionNotFoundError",
    "StalePlanError",
    "UnauthorizedError",
    "UpstreamUnavailableError",
    "error_header_code",
]
