"""The testbed's local Hugging Face Hub: serves a model zoo through the Hub's download API.

Hugging Face is unreachable from our machines, so this origin stands in for it. Any unmodified
client (``huggingface_hub.snapshot_download`` / ``hf_hub_download`` / ``get_safetensors_metadata``,
``transformers`` ``from_pretrained``) pointed at it with ``HF_ENDPOINT`` or ``endpoint=`` works.

On disk (the zoo layout of docs/api.md)::

    ROOT/repos/<org>/<name>/<path>     one HF-format repo per model; repo id "<org>/<name>"

Routes (all read-only but the counter reset):

- ``GET /api/models``: the repo list as the Hub gives it to ``HfApi.list_models`` (``search``,
  ``author``, ``filter`` (tags), ``sort``/``direction``, ``limit`` as the page size with a
  ``Link: <...>; rel="next"`` header for the next page, ``full`` and ``expand``).
- ``GET /api/models/{repo_id}`` and ``GET /api/models/{repo_id}/revision/{revision}``: model info
  (``id``, ``sha``, ``siblings`` with ``rfilename``, ``size`` and ``lfs`` for LFS-like files).
- ``GET /api/models/{repo_id}/tree/{revision}[/{path}][?recursive=true]``: tree entries.
- ``HEAD|GET /{repo_id}/resolve/{revision}/{path}``: the bytes, with ``ETag``, ``X-Repo-Commit``,
  ``Content-Length``, ``Accept-Ranges: bytes``; one ``Range`` gives 206, a bad one 416.
- ``GET /v1/stats``, ``POST /v1/stats/reset``: bytes served per repo; ``GET /healthz``. The reset
  needs ``Authorization: Bearer <ORIGIN_AUTH_TOKEN>`` (the one policy of :mod:`core.auth`: no token
  configured refuses it with 401 ``unauthorized``).

Invariants:

- A repo's revision is a deterministic 40-hex id: sha1 over its sorted (path, file digest) pairs.
  ``main`` resolves to it; any other revision is ``RevisionNotFound``.
- ETags follow the Hub: LFS-like files (weights, or >= 10 MiB) carry their sha256 (also as
  ``X-Linked-Etag``/``X-Linked-Size``), other files their git blob sha1. huggingface_hub names cache
  blobs by ETag and checks ``X-Repo-Commit``.
- Errors are 404s with the Hub's ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``,
  ``EntryNotFound``), which ``huggingface_hub.utils.hf_raise_for_status`` maps to
  ``RepositoryNotFoundError``, ``RevisionNotFoundError`` and ``RemoteEntryNotFoundError``; the body
  is the project's ``{"error": {"code", "message"}}``.
- Hashes are computed lazily per repo and cached until a file's size or mtime changes.
- Link emulation: ``latency_ms`` is added once per Hub request (an ASGI middleware), and
  ``rate_bytes_per_s`` paces every body through one shared token bucket
  (:class:`core.ratelimit.TokenBucket`), as one backhaul link would; a request carrying
  :data:`core.link.WIRED_HEADER` (an edge that emulates the backhaul itself, per transfer:
  ``edge_node.wired``) is neither delayed nor paced here.
- Request bodies and their read time are bounded (:class:`core.asgi.RequestGuard`); error headers
  are latin-1 safe (:func:`core.asgi.header_text`), so any path gives its 404, never a 500.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from core import hubapi
from core.asgi import BINARY_RESPONSES, RequestGuard, header_text, validation_error
from core.auth import refusal
from core.errors import ErrorCode, TrimCacheError
from core.hubapi import (
    DEFAULT_BRANCH,
    FIXED_TIMESTAMP,
    EntryNotFoundError,
    HubError,
    HubFile,
    RangeNotSatisfiableError,
    RepoNotFoundError,
    RevisionNotFoundError,
)
from core.link import WIRED_HEADER, LinkCounters, LinkEmulationMiddleware
from core.ratelimit import TokenBucket

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1024 * 1024
# One part of a repo id (the Hub's rule: at most 96 characters, no leading dot).
_REPO_PART = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,95}")


class OriginError(TrimCacheError):
    """Base of the origin's own HTTP errors (the Hub's 404s and 416 are :mod:`core.hubapi`'s)."""

    hub_code: ClassVar[str] = ""


class UnauthorizedError(OriginError):
    code = "unauthorized"
    status_code = 401


class BadRequestError(OriginError):
    code = "bad_request"
    hub_code = "BadRequest"
    status_code = 400


class FileUnreadableError(OriginError):
    """A zoo file the origin's user may not read (e.g. a host-built zoo mounted into a
    container whose user is not the owner): 503, the origin cannot serve it as it stands."""

    code = ErrorCode.file_unreadable
    status_code = 503


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _describe_file(root: Path, path: Path) -> HubFile:
    return hubapi.describe(
        path.relative_to(root).as_posix(),
        path.stat().st_size,
        sha256=lambda: _sha256_file(path),
        content=path.read_bytes,
    )


@dataclass(frozen=True, slots=True)
class RepoSnapshot:
    """A repo's files at its one revision."""

    repo_id: str
    revision: str
    root: Path
    files: dict[str, HubFile]


class RepoIndex:
    """Finds repos under ``root/repos`` and caches their file digests and revision."""

    def __init__(self, root: Path) -> None:
        self.repos_dir = root / "repos"
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[tuple[Any, ...], RepoSnapshot]] = {}

    def repo_ids(self) -> list[str]:
        if not self.repos_dir.is_dir():
            return []
        return sorted(
            f"{org.name}/{repo.name}"
            for org in self.repos_dir.iterdir()
            if org.is_dir() and not org.name.startswith(".")
            for repo in org.iterdir()
            if repo.is_dir() and not repo.name.startswith(".")
        )

    def snapshot(self, repo_id: str, revision: str = DEFAULT_BRANCH) -> RepoSnapshot:
        """The repo at ``revision`` (``main`` or its 40-hex id); raises the Hub's 404s."""
        org, _, name = repo_id.partition("/")
        if not (_REPO_PART.fullmatch(org) and _REPO_PART.fullmatch(name)):
            raise RepoNotFoundError(f"repository {repo_id[:200]!r} not found")
        repo_root = self.repos_dir / org / name
        if not repo_root.is_dir():
            raise RepoNotFoundError(f"repository {repo_id!r} not found")
        paths = sorted(
            p
            for p in repo_root.rglob("*")
            if p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(repo_root).parts)
        )
        signature = tuple(
            (p.as_posix(), st.st_size, st.st_mtime_ns) for p in paths for st in [p.stat()]
        )
        with self._lock:
            cached = self._cache.get(repo_id)
        if cached is not None and cached[0] == signature:
            snap = cached[1]
        else:
            files = {f.path: f for f in (_describe_file(repo_root, p) for p in paths)}
            commit = hashlib.sha1(usedforsecurity=False)
            for path in sorted(files):
                commit.update(f"{path}\0{files[path].etag}\n".encode())
            snap = RepoSnapshot(repo_id, commit.hexdigest(), repo_root, files)
            with self._lock:
                self._cache[repo_id] = (signature, snap)
            logger.info("indexed repo_id=%s revision=%s", repo_id, snap.revision)
        if revision not in (DEFAULT_BRANCH, snap.revision):
            raise RevisionNotFoundError(f"revision {revision!r} not found in {repo_id!r}")
        return snap

    def file(self, repo_id: str, revision: str, path: str) -> tuple[RepoSnapshot, HubFile]:
        snap = self.snapshot(repo_id, revision)
        entry = snap.files.get(path)
        if entry is None:
            raise EntryNotFoundError(f"{path!r} not found in {repo_id!r}@{snap.revision}")
        return snap, entry


@dataclass
class ServedStats:
    """Thread-safe counters of what the origin sent, per repo."""

    _lock: threading.Lock = field(default_factory=threading.Lock)
    bytes_served: int = 0
    requests: int = 0
    repos: dict[str, dict[str, int]] = field(default_factory=dict)

    def add_request(self, repo_id: str) -> None:
        with self._lock:
            self.requests += 1
            repo = self.repos.setdefault(repo_id, {"bytes_served": 0, "requests": 0})
            repo["requests"] += 1

    def add_bytes(self, repo_id: str, nbytes: int) -> None:
        with self._lock:
            self.bytes_served += nbytes
            repo = self.repos.setdefault(repo_id, {"bytes_served": 0, "requests": 0})
            repo["bytes_served"] += nbytes

    def reset(self) -> None:
        with self._lock:
            self.bytes_served = 0
            self.requests = 0
            self.repos = {}

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return {
                "bytes_served": self.bytes_served,
                "requests": self.requests,
                "repos": {k: dict(v) for k, v in sorted(self.repos.items())},
            }


class _FileRange(FileResponse):
    """Bytes ``[start, end)`` of a file through Starlette's ``FileResponse`` in 1 MiB chunks,
    counted per repo and paced by the shared backhaul bucket.

    The range was parsed once (:func:`core.hubapi.parse_range`), so the request's ``Range``
    header is hidden from ``FileResponse`` (which would parse it again its own way).
    """

    chunk_size = CHUNK_BYTES

    def __init__(
        self,
        path: Path,
        span: tuple[int, int],
        *,
        status_code: int,
        headers: dict[str, str],
        count: Callable[[int], None],
        shaper: TokenBucket | None,
    ) -> None:
        super().__init__(
            path, status_code=status_code, headers=headers, media_type="application/octet-stream"
        )
        self.span = span
        self.count = count
        self.shaper = shaper

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope = dict(scope)
        scope["headers"] = [(k, v) for k, v in scope["headers"] if k != b"range"]
        scope["extensions"] = {
            k: v
            for k, v in (scope.get("extensions") or {}).items()
            if k != "http.response.pathsend"
        }
        await super().__call__(scope, receive, send)

    async def _handle_simple(self, send: Send, send_header_only: bool, send_pathsend: bool) -> None:
        start, end = self.span
        chunk = self.shaper.slice_bytes() if self.shaper else self.chunk_size
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        async with self._open_file() as file:
            await file.seek(start)
            remaining = end - start
            while remaining > 0:
                data = await file.read(min(chunk, remaining))
                if not data:
                    logger.warning("file shrank while serving path=%s", self.path)
                    return  # the client sees a short body
                if self.shaper is not None:
                    await self.shaper.wait_async(len(data))
                remaining -= len(data)
                self.count(len(data))
                await send({"type": "http.response.body", "body": data, "more_body": remaining > 0})
        if start == end:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


_TAGS = ["transformers", "safetensors", "trimcache-zoo"]


def _model_info(snap: RepoSnapshot) -> dict[str, Any]:
    return hubapi.model_info(
        snap.repo_id, snap.revision, snap.files, tags=_TAGS, library_name="transformers"
    )


LIST_PAGE_SIZE = 1000
LIST_SORT_KEYS = ("id", "createdAt", "lastModified", "downloads", "likes", "trendingScore")
LIST_TAGS = _TAGS


def _list_item(
    index: RepoIndex, repo_id: str, *, full: bool, expand: list[str] | None
) -> dict[str, Any]:
    """One entry of ``GET /api/models``, as the Hub lists it.

    Without ``full``/``expand`` only cheap fields (no file hashing); ``full`` adds the model
    info (``sha``, ``siblings``, ...); ``expand`` selects fields of the model info.
    """
    org = repo_id.partition("/")[0]
    light: dict[str, Any] = {
        "_id": hashlib.sha1(repo_id.encode(), usedforsecurity=False).hexdigest()[:24],
        "id": repo_id,
        "modelId": repo_id,
        "author": org,
        "private": False,
        "downloads": 0,
        "likes": 0,
        "library_name": "transformers",
        "tags": list(LIST_TAGS),
        "createdAt": FIXED_TIMESTAMP,
    }
    if not full and not expand:
        return light
    info = _model_info(index.snapshot(repo_id))
    if full:
        return info
    return {"_id": light["_id"], "id": repo_id, **{k: info[k] for k in expand or [] if k in info}}


def _tree(snap: RepoSnapshot, prefix: str, *, recursive: bool) -> list[dict[str, Any]]:
    return hubapi.tree(
        snap.repo_id, list(snap.files), prefix, recursive=recursive, entry=snap.files.__getitem__
    )


def create_app(
    root: Path,
    *,
    rate_bytes_per_s: float | None = None,
    latency_ms: float = 0.0,
    auth_token: str | None = None,
) -> FastAPI:
    """Build the origin app serving ``root/repos/<org>/<name>`` as Hub repos.

    Args:
        root: the zoo directory (the one holding ``repos/`` and ``zoo.json``).
        rate_bytes_per_s: pace all response bodies together to this rate (None: no limit).
        latency_ms: added once before every Hub request.
        auth_token: the bearer token ``POST /v1/stats/reset`` needs (None: the reset is refused).
    """
    index = RepoIndex(Path(root))
    stats = ServedStats()
    shaper = TokenBucket(rate_bytes_per_s, burst_bytes=CHUNK_BYTES) if rate_bytes_per_s else None

    app = FastAPI(title="TrimCache origin (local Hugging Face Hub)", docs_url=None)
    app.state.index = index
    app.state.stats = stats
    # The backhaul's latency, once per Hub request (control and observability paths are left
    # alone); its rate is the bucket `_FileRange` paces by. One link-emulation middleware.
    app.state.link_counters = LinkCounters()
    if latency_ms > 0:
        app.add_middleware(
            LinkEmulationMiddleware,
            latency_ms=latency_ms,
            bucket=None,
            unemulated=("/v1/", "/healthz"),
            counters=app.state.link_counters,
        )
    app.add_middleware(RequestGuard)
    app.add_exception_handler(RequestValidationError, validation_error)

    @app.exception_handler(TrimCacheError)
    def _origin_error(_request: Request, exc: TrimCacheError) -> JSONResponse:
        hub_code = exc.hub_code if isinstance(exc, HubError | OriginError) else ""
        headers = {
            "X-Error-Code": hub_code or exc.code,
            "X-Error-Message": header_text(str(exc)),
        }
        if isinstance(exc, RangeNotSatisfiableError):
            headers["Content-Range"] = f"bytes */{exc.size_bytes}"
        return JSONResponse(
            {"error": {"code": exc.code, "message": str(exc)}},
            status_code=exc.status_code,
            headers=headers,
        )

    @app.exception_handler(PermissionError)
    def _unreadable(request: Request, exc: PermissionError) -> JSONResponse:
        name = Path(exc.filename).name if exc.filename else "a zoo file"
        message = f"the origin (uid {os.getuid()}) may not read {name}: make the zoo readable"
        return _origin_error(request, FileUnreadableError(message))

    @app.exception_handler(StarletteHTTPException)
    def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # An /api/models path no route matches (a one-part repo id, a stray segment) is a repo
        # the Hub does not have: RepoNotFound, as the Hub answers, so clients map it right.
        if exc.status_code == 404 and request.url.path.startswith("/api/models/"):
            return _origin_error(request, RepoNotFoundError("repository not found"))
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request")
        return JSONResponse(
            {"error": {"code": code, "message": header_text(str(exc.detail))}},
            status_code=exc.status_code,
            headers={"X-Error-Code": code},
        )

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "repos": len(index.repo_ids())}

    @app.get("/v1/stats")
    def get_stats() -> dict[str, Any]:
        return stats.to_json()

    @app.post("/v1/stats/reset")
    def reset_stats(request: Request) -> dict[str, Any]:
        reason = refusal(
            request.headers.get("Authorization"), [auth_token], setting="ORIGIN_AUTH_TOKEN"
        )
        if reason is not None:
            raise UnauthorizedError(reason)
        stats.reset()
        return stats.to_json()

    @app.get("/api/models")
    def list_models(
        request: Request,
        search: str | None = None,
        author: str | None = None,
        filter: Annotated[list[str] | None, Query()] = None,  # noqa: A002 - the Hub's name
        sort: str | None = None,
        direction: int | None = None,
        limit: Annotated[int | None, Query(ge=1)] = None,
        offset: Annotated[int, Query(ge=0)] = 0,
        full: bool = False,
        expand: Annotated[list[str] | None, Query()] = None,
    ) -> JSONResponse:
        repo_ids = [
            r
            for r in index.repo_ids()
            if (search is None or search.lower() in r.lower())
            and (author is None or r.partition("/")[0] == author)
        ]
        if sort is not None and sort not in LIST_SORT_KEYS:
            raise BadRequestError(f"sort must be one of {', '.join(LIST_SORT_KEYS)}")
        if direction is not None and direction < 0:
            repo_ids.reverse()  # every repo has the same dates and counts: ties sort by id
        page_size = min(limit or LIST_PAGE_SIZE, LIST_PAGE_SIZE)
        items = []
        for repo_id in repo_ids:
            item = _list_item(index, repo_id, full=full, expand=expand)
            if filter and not set(filter) <= set(item.get("tags", LIST_TAGS)):
                continue
            items.append(item)
        page = items[offset : offset + page_size]
        headers = {}
        if offset + page_size < len(items):
            # The Hub paginates with a GitHub-style Link header; huggingface_hub follows it.
            following = request.url.include_query_params(offset=offset + page_size)
            headers["Link"] = f'<{following}>; rel="next"'
        return JSONResponse(page, headers=headers)

    @app.get("/api/models/{org}/{name}")
    def model_info(org: str, name: str) -> dict[str, Any]:
        return _model_info(index.snapshot(f"{org}/{name}"))

    @app.get("/api/models/{org}/{name}/revision/{revision:path}")
    def model_info_at(org: str, name: str, revision: str) -> dict[str, Any]:
        return _model_info(index.snapshot(f"{org}/{name}", revision))

    @app.get("/api/models/{org}/{name}/tree/{revision}")
    def tree_root(
        org: str, name: str, revision: str, recursive: bool = False
    ) -> list[dict[str, Any]]:
        return _tree(index.snapshot(f"{org}/{name}", revision), "", recursive=recursive)

    @app.get("/api/models/{org}/{name}/tree/{revision}/{path:path}")
    def tree_path(
        org: str, name: str, revision: str, path: str, recursive: bool = False
    ) -> list[dict[str, Any]]:
        return _tree(index.snapshot(f"{org}/{name}", revision), path, recursive=recursive)

    @app.head(
        "/{org}/{name}/resolve/{revision}/{path:path}",
        response_class=Response,
        responses=BINARY_RESPONSES,
    )
    def resolve_head(org: str, name: str, revision: str, path: str) -> Response:
        snap, entry = index.file(f"{org}/{name}", revision, path)
        headers = hubapi.file_headers(snap.revision, entry)
        headers["Content-Length"] = str(entry.size)
        return Response(status_code=200, headers=headers, media_type="application/octet-stream")

    @app.get(
        "/{org}/{name}/resolve/{revision}/{path:path}",
        response_class=Response,
        responses=BINARY_RESPONSES,
    )
    def resolve_get(org: str, name: str, revision: str, path: str, request: Request) -> Response:
        repo_id = f"{org}/{name}"
        snap, entry = index.file(repo_id, revision, path)
        headers = hubapi.file_headers(snap.revision, entry)
        span = hubapi.parse_range(request.headers.get("range"), entry.size)
        status, start, end = hubapi.range_headers(headers, span, entry.size)
        stats.add_request(repo_id)
        return _FileRange(
            snap.root / entry.path,
            (start, end),
            status_code=status,
            headers=headers,
            count=lambda n: stats.add_bytes(repo_id, n),
            # An edge that emulates the backhaul itself (per transfer, edge_node.wired).
            shaper=None if request.headers.get(WIRED_HEADER) else shaper,
        )

    return app
