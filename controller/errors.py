"""Errors raised by the controller service; each maps to one HTTP status and error code.

Hierarchy::

    TrimCacheError (core.errors)
    └── ControllerError                 base; 500 ``internal``
        ├── StateUnavailableError       Redis unreachable or timing out; 503 ``state_unavailable``
        ├── UnauthorizedError           missing/wrong bearer token; 401 ``unauthorized``
        ├── InvalidRequestError         a body that makes no sense; 400 ``invalid_request``
        ├── ModelNotFoundError          model id not in the catalogue; 404 ``model_not_found``
        ├── NodeNotFoundError           node id not registered (or expired); 404 ``node_not_found``
        ├── RepoNotFoundError           the origin has no such repo; 404 ``repo_not_found``
        ├── RevisionNotFoundError       the repo has no such revision; 404 ``revision_not_found``
        ├── UpstreamUnavailableError    origin failed/unreachable; 502 ``upstream_unavailable``
        └── IndexingError               a repo downloaded but could not be described as blocks;
                                        422 ``invalid_model``

The single exception handler in :mod:`controller.app` turns any of these into
``{"error": {"code", "message"}}`` with an ``X-Error-Code`` header.
"""

from __future__ import annotations

from core.errors import TrimCacheError


class ControllerError(TrimCacheError):
    """Base of controller errors."""


class StateUnavailableError(ControllerError):
    code = "state_unavailable"
    status_code = 503


class UnauthorizedError(ControllerError):
    code = "unauthorized"
    status_code = 401
    exit_code = 2


class InvalidRequestError(ControllerError, ValueError):
    code = "invalid_request"
    status_code = 400
    exit_code = 2


class ModelNotFoundError(ControllerError, LookupError):
    code = "model_not_found"
    status_code = 404
    exit_code = 2

    def __init__(self, model_id: str) -> None:
        super().__init__(f"model {model_id!r} is not in the catalogue")
        self.model_id = model_id


class NodeNotFoundError(ControllerError, LookupError):
    code = "node_not_found"
    status_code = 404
    exit_code = 2

    def __init__(self, node_id: str) -> None:
        super().__init__(f"node {node_id!r} is not registered (or its heartbeat expired)")
        self.node_id = node_id


class RepoNotFoundError(ControllerError, LookupError):
    code = "repo_not_found"
    status_code = 404
    exit_code = 2


class RevisionNotFoundError(ControllerError, LookupError):
    code = "revision_not_found"
    status_code = 404
    exit_code = 2


class UpstreamUnavailableError(ControllerError):
    code = "upstream_unavailable"
    status_code = 502


class IndexingError(ControllerError):
    code = "invalid_model"
    status_code = 422
    exit_code = 2
