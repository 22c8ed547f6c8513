"""Every TrimCache error, and the one enum of error codes that goes on the wire.

Hierarchy (one tree; the services' ``errors`` modules and ``client`` re-export from here)::

    TrimCacheError                 base of every TrimCache error (CLI exit code, error code)
    ├── CoreError
    │   ├── SafetensorsFormatError a file is not valid safetensors (names the file and problem)
    │   ├── ManifestError          a manifest is malformed or does not fit its files
    │   │   └── BlockLengthConflictError  it gives a held block another length (409)
    │   ├── HubError (core.hubapi) 404s of the Hugging Face API: RepoNotFoundError,
    │   │                          RevisionNotFoundError, EntryNotFoundError (``hub_code``)
    │   ├── RangeNotSatisfiableError (core.hubapi) 416 range_not_satisfiable
    │   ├── InvalidBlockIdError    not 64 lowercase hex (also blocks path traversal)
    │   ├── BlockNotFoundError     a store lacks a block (also a LookupError)
    │   ├── DigestMismatchError    bytes do not hash to the id or the manifest's sha256
    │   └── StoreFullError         a write would exceed the store's capacity (507)
    │       └── DiskFullError      the disk itself is full (ENOSPC), also 507 store_full
    └── ServiceError               what a service answers with (one HTTP status each)
        ├── InvalidRequestError        400 invalid_request (also a ValueError)
        │   └── HostNotAllowedError    400 host_not_allowed (a plan names an unlisted host)
        ├── UnauthorizedError          401 unauthorized
        ├── ModelNotFoundError         404 model_not_found (also a LookupError)
        ├── NodeNotFoundError          404 node_not_found
        ├── StalePlanError             409 stale_plan (older than the applied plan)
        ├── PlanSupersededError        409 plan_superseded (a newer plan replaced it)
        ├── IndexingError              422 invalid_model
        ├── UpstreamUnavailableError   502 upstream_unavailable
        ├── StateUnavailableError      503 state_unavailable (the controller's Redis)
        └── PullBufferBusyError        503 pull_buffer_busy

Each package's own base (``ClientError``, the testbed's errors) also derives from
``TrimCacheError``, so the CLI prints any of them as one line with ``exit_code``.

:class:`ErrorCode` is the one spelling of every code (``repo_not_found``, never
``RepoNotFound``). The Hugging Face protocol spells three 404 codes its own way in the
``X-Error-Code`` header of Hub routes (``huggingface_hub`` maps those to its exception classes):
:data:`HUB_ERROR_CODES` is that translation, and :meth:`ErrorCode.parse` reads either spelling.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar


class ErrorCode(StrEnum):
    """Every error code a TrimCache service or the client reports (``error.code``)."""

    internal = "internal"
    # core
    invalid_safetensors = "invalid_safetensors"
    invalid_manifest = "invalid_manifest"
    invalid_block_id = "invalid_block_id"
    block_not_found = "block_not_found"
    digest_mismatch = "digest_mismatch"
    block_length_conflict = "block_length_conflict"
    store_full = "store_full"
    # services
    invalid_request = "invalid_request"
    unauthorized = "unauthorized"
    model_not_found = "model_not_found"
    node_not_found = "node_not_found"
    repo_not_found = "repo_not_found"
    revision_not_found = "revision_not_found"
    entry_not_found = "entry_not_found"
    bad_request = "bad_request"
    stale_plan = "stale_plan"
    host_not_allowed = "host_not_allowed"
    range_not_satisfiable = "range_not_satisfiable"
    invalid_model = "invalid_model"
    upstream_unavailable = "upstream_unavailable"
    state_unavailable = "state_unavailable"
    pull_buffer_busy = "pull_buffer_busy"
    push_stalled = "push_stalled"
    plan_superseded = "plan_superseded"
    plan_lost = "plan_lost"
    file_unreadable = "file_unreadable"
    # generic HTTP answers (unknown route, wrong method, body too large, slow request, ...)
    not_found = "not_found"
    method_not_allowed = "method_not_allowed"
    http_error = "http_error"
    payload_too_large = "payload_too_large"
    request_timeout = "request_timeout"
    # client side (never sent by a service)
    client_error = "client_error"
    controller_unavailable = "controller_unavailable"
    edge_unavailable = "edge_unavailable"
    block_integrity = "block_integrity"
    no_source = "no_source"
    disk_full = "disk_full"

    @classmethod
    def parse(cls, value: str | None) -> ErrorCode | None:
        """The code of an ``X-Error-Code`` value in either spelling (None: unknown).

        >>> ErrorCode.parse("RepoNotFound") is ErrorCode.repo_not_found
        True
        >>> ErrorCode.parse("stale_plan") is ErrorCode.stale_plan
        True
        """
        if not value:
            return None
        try:
            return cls(value)
        except ValueError:
            return _FROM_HUB.get(value)


#: How the Hugging Face protocol spells some codes in ``X-Error-Code`` (Hub routes only).
HUB_ERROR_CODES: dict[ErrorCode, str] = {
    ErrorCode.repo_not_found: "RepoNotFound",
    ErrorCode.revision_not_found: "RevisionNotFound",
    ErrorCode.entry_not_found: "EntryNotFound",
    ErrorCode.bad_request: "BadRequest",
}
_FROM_HUB = {hub: code for code, hub in HUB_ERROR_CODES.items()}


class TrimCacheError(Exception):
    """Base of all TrimCache errors. ``code`` is the stable machine-readable error code."""

    code: ClassVar[str] = ErrorCode.internal
    status_code: ClassVar[int] = 500
    exit_code: ClassVar[int] = 1


class CoreError(TrimCacheError):
    """Base of errors from the block format."""


class SafetensorsFormatError(CoreError):
    """A file is not a valid safetensors file."""

    code = ErrorCode.invalid_safetensors
    status_code = 400
    exit_code = 2

    def __init__(self, path: object, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


class ManifestError(CoreError):
    """A manifest is malformed, has an unknown schema, or does not fit its files."""

    code = ErrorCode.invalid_manifest
    status_code = 400
    exit_code = 2


class BlockLengthConflictError(ManifestError):
    """A manifest gives a block another length than the copy held (409: it contradicts the
    store, so it is rejected rather than making a model look complete and serve a cut file)."""

    code = ErrorCode.block_length_conflict
    status_code = 409


class InvalidBlockIdError(CoreError, ValueError):
    """A block id is not 64 lowercase hex characters."""

    code = ErrorCode.invalid_block_id
    status_code = 400
    exit_code = 2

    def __init__(self, block_id: object) -> None:
        shown = repr(block_id)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"invalid block id {shown}: expected 64 lowercase hex characters")
        self.block_id = block_id


class BlockNotFoundError(CoreError, LookupError):
    """A block is not in the store."""

    code = ErrorCode.block_not_found
    status_code = 404

    def __init__(self, block_id: str, where: object = "store") -> None:
        super().__init__(f"block {block_id} not found in {where}")
        self.block_id = block_id


class DigestMismatchError(CoreError):
    """Bytes do not hash to the id (or file sha256) they are supposed to have."""

    code = ErrorCode.digest_mismatch
    status_code = 400

    def __init__(self, what: str, expected: str, actual: str) -> None:
        super().__init__(f"{what}: sha256 mismatch (expected {expected}, got {actual})")
        self.expected = expected
        self.actual = actual


class StoreFullError(CoreError):
    """Storing would exceed the store's capacity."""

    code = ErrorCode.store_full
    status_code = 507

    def __init__(self, needed_bytes: int, capacity_bytes: int) -> None:
        super().__init__(
            f"store full: needs {needed_bytes} bytes, capacity is {capacity_bytes} bytes"
        )
        self.needed_bytes = needed_bytes
        self.capacity_bytes = capacity_bytes


class DiskFullError(StoreFullError):
    """The file system ran out of space (ENOSPC/EDQUOT) before the store's own capacity did."""

    def __init__(self, path: object, needed_bytes: int = 0) -> None:
        CoreError.__init__(self, f"store full: the disk holding {path} is out of space")
        self.needed_bytes = needed_bytes
        self.capacity_bytes = -1


class ServiceError(TrimCacheError):
    """Base of the errors a service answers a request with."""


class InvalidRequestError(ServiceError, ValueError):
    """A request that makes no sense (a malformed plan, an impossible combination, ...)."""

    code = ErrorCode.invalid_request
    status_code = 400
    exit_code = 2


class HostNotAllowedError(InvalidRequestError):
    """A plan names a URL whose host:port is not on the edge's allow-list (edge_node.allowlist)."""

    code = ErrorCode.host_not_allowed


class UnauthorizedError(ServiceError):
    """A write without the right bearer token (policy: :mod:`core.auth`)."""

    code = ErrorCode.unauthorized
    status_code = 401
    exit_code = 2


class ModelNotFoundError(ServiceError, LookupError):
    """A model id the service does not have (``where`` says which: catalogue, node, ...)."""

    code = ErrorCode.model_not_found
    status_code = 404
    exit_code = 2

    def __init__(self, model_id: str, where: str = "is not in the catalogue") -> None:
        super().__init__(f"model {model_id!r} {where}")
        self.model_id = model_id


class NodeNotFoundError(ServiceError, LookupError):
    code = ErrorCode.node_not_found
    status_code = 404
    exit_code = 2

    def __init__(self, node_id: str) -> None:
        super().__init__(f"node {node_id!r} is not registered (or its heartbeat expired)")
        self.node_id = node_id


class StalePlanError(ServiceError):
    """A plan older than the one the node applied (fencing: a lapsed planner's late push)."""

    code = ErrorCode.stale_plan
    status_code = 409


class PlanSupersededError(ServiceError):
    """A plan an edge node stopped applying because a newer one arrived (nothing half-written
    stays: blocks already verified are kept, evictions never started)."""

    code = ErrorCode.plan_superseded
    status_code = 409


class IndexingError(ServiceError):
    """A repo downloaded but could not be described as blocks."""

    code = ErrorCode.invalid_model
    status_code = 422
    exit_code = 2


class UpstreamUnavailableError(ServiceError):
    """No peer, origin or controller delivered what the request needs."""

    code = ErrorCode.upstream_unavailable
    status_code = 502


class StateUnavailableError(ServiceError):
    """The controller's Redis is unreachable or timing out."""

    code = ErrorCode.state_unavailable
    status_code = 503


class PullBufferBusyError(ServiceError):
    """No room in the pull-through buffer in time."""

    code = ErrorCode.pull_buffer_busy
    status_code = 503


def error_header_code(exc: TrimCacheError) -> str:
    """The ``X-Error-Code`` value for ``exc`` (the Hub's spelling for Hub errors)."""
    hub_code = getattr(exc, "hub_code", "")
    return str(hub_code) if hub_code else str(exc.code)
