"""Indexing: download a model repo once from the origin and describe it as blocks.

:func:`add_model` is the one way into the catalogue (the ``POST /v1/models`` route and the
origin indexer both call it): a repo already indexed at that revision is a no-op, anything else
goes through :func:`index_model` and is stored only when indexing succeeded.
:class:`OriginIndexer` (setting ``CONTROLLER_INDEX_FROM_ORIGIN``) runs once in the background
at startup: it lists every repo of the origin with ``HfApi.list_models``, adds the ones the
catalogue lacks (model id = the repo's name; repos deleted on purpose stay out), retries with
backoff until every listed repo is in, then runs one placement so the edges fill at once.

Internal logic of :func:`index_model`:

1. resolve the requested revision to the origin's commit id (``HfApi.model_info``);
2. with a manifest cache (``CONTROLLER_MANIFEST_CACHE_DIR``), return the manifest built before
   for that (repo, commit, model id): a commit id names the repo's content, so it is the same;
3. ``snapshot_download`` that commit into a private temp directory (``huggingface_hub`` pointed
   at ``origin_url``, exactly as any Hub client would be);
4. :func:`core.build_manifest` over the files, recording the resolved commit as the revision
   (and store it in the cache, atomically);
5. delete the temp directory, whatever happened.

The origin's errors map to :mod:`controller.errors`: unknown repo -> ``RepoNotFoundError``,
unknown revision -> ``RevisionNotFoundError``, anything transport-level or 5xx ->
``UpstreamUnavailableError``, files that are not a valid model -> ``IndexingError``. Nothing
here touches Redis; the caller stores the manifest only when indexing succeeded.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from tqdm.auto import tqdm

from controller import adapters
from controller.errors import (
    ControllerError,
    IndexingError,
    RepoNotFoundError,
    UpstreamUnavailableError,
)
from controller.errors import (
    RevisionNotFoundError as ControllerRevisionNotFoundError,
)
from controller.state import CatalogueEntry, RedisState
from core import ModelManifest, build_manifest
from core.background import LoopThread
from core.errors import CoreError, TrimCacheError
from core.fsutil import atomic_write_text

if TYPE_CHECKING:
    from controller.metrics import Metrics
    from controller.planner import Planner

logger = logging.getLogger(__name__)

# huggingface_hub 2.x talks HTTP through ``httpx2`` (1.x through ``httpx``): catch both.
_TRANSPORT_ERRORS: tuple[type[Exception], ...] = (httpx.HTTPError,)
try:
    import httpx2

    _TRANSPORT_ERRORS = (httpx.HTTPError, httpx2.HTTPError)
except ImportError:  # pragma: no cover - huggingface_hub 1.x
    pass
_DOWNLOAD_ERRORS: tuple[type[Exception], ...] = (
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OSError,
    *_TRANSPORT_ERRORS,
)


class _Silent(tqdm):  # type: ignore[misc]
    """No progress bars in a server's logs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


def index_model(
    model_id: str,
    *,
    repo_id: str,
    revision: str,
    origin_url: str,
    timeout_s: float = 60.0,
    manifest_cache_dir: Path | None = None,
) -> ModelManifest:
    """Download ``repo_id@revision`` from the origin and return its manifest.

    Raises:
        RepoNotFoundError, RevisionNotFoundError: the origin does not have it.
        UpstreamUnavailableError: the origin is unreachable or failed.
        IndexingError: the files are not a valid model (bad safetensors, unsafe paths).
    """
    where = f"{repo_id}@{revision} from {origin_url}"
    try:
        api = HfApi(endpoint=origin_url, token=False)
        info = api.model_info(repo_id, revision=revision, timeout=timeout_s)
        commit = info.sha or revision
        cached = _cached_manifest(manifest_cache_dir, model_id, repo_id, commit)
        if cached is not None:
            logger.info("manifest of model_id=%s repo_id=%s@%s from the cache", model_id,
                        repo_id, commit)  # fmt: skip
            return cached
        with tempfile.TemporaryDirectory(prefix="trimcache-index-") as tmp:
            local_dir = Path(tmp) / "snapshot"
            snapshot_download(
                repo_id,
                revision=commit,
                endpoint=origin_url,
                local_dir=local_dir,
                cache_dir=Path(tmp) / "cache",
                token=False,
                etag_timeout=timeout_s,
                max_workers=4,
                tqdm_class=_Silent,
            )
            manifest = build_manifest(
                local_dir, model_id=model_id, repo_id=repo_id, revision=commit
            )
        if info.sha is not None:  # only a resolved commit names fixed content
            _cache_manifest(manifest_cache_dir, manifest)
    except RepositoryNotFoundError as exc:
        raise RepoNotFoundError(f"repo {repo_id!r} not found at {origin_url}") from exc
    except RevisionNotFoundError as exc:
        raise ControllerRevisionNotFoundError(
            f"revision {revision!r} of {repo_id!r} not found at {origin_url}"
        ) from exc
    except EntryNotFoundError as exc:
        raise UpstreamUnavailableError(f"{where}: a listed file is missing ({exc})") from exc
    except _DOWNLOAD_ERRORS as exc:
        raise UpstreamUnavailableError(f"cannot download {where}: {exc}") from exc
    except CoreError as exc:
        raise IndexingError(f"{where} is not a valid model: {exc}") from exc
    logger.info(
        "indexed model_id=%s repo_id=%s revision=%s total_bytes=%d",
        model_id,
        repo_id,
        manifest.revision,
        manifest.total_bytes,
    )
    return manifest


def _cache_path(cache_dir: Path, model_id: str, repo_id: str, commit: str) -> Path:
    return cache_dir / repo_id / commit / f"{model_id}.json"


def _cached_manifest(
    cache_dir: Path | None, model_id: str, repo_id: str, commit: str
) -> ModelManifest | None:
    if cache_dir is None:
        return None
    path = _cache_path(cache_dir, model_id, repo_id, commit)
    try:
        manifest = ModelManifest.from_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, CoreError) as exc:  # unreadable or damaged: index again
        logger.warning("ignoring the cached manifest %s: %s", path, exc)
        return None
    if (manifest.model_id, manifest.repo_id, manifest.revision) != (model_id, repo_id, commit):
        return None
    return manifest


def _cache_manifest(cache_dir: Path | None, manifest: ModelManifest) -> None:
    if cache_dir is None:
        return
    path = _cache_path(cache_dir, manifest.model_id, manifest.repo_id, manifest.revision)
    try:
        atomic_write_text(path, manifest.to_json(), durable=False)
    except OSError as exc:  # a cache, not a requirement (a full disk too)
        logger.warning("cannot cache the manifest in %s: %s", path, exc)


def add_model(
    state: RedisState,
    metrics: Metrics,
    *,
    model_id: str,
    repo_id: str,
    revision: str,
    origin_url: str,
    manifest_cache_dir: Path | None = None,
) -> tuple[CatalogueEntry, bool]:
    """Put ``repo_id@revision`` in the catalogue as ``model_id``; returns (entry, created).

    The same repo at the same (requested or resolved) revision again is a no-op, with no
    download. Raises the errors of :func:`index_model`; the catalogue is then unchanged.
    """
    existing = state.get_model(model_id)
    if (
        existing is not None
        and existing.repo_id == repo_id
        and revision in (existing.revision, existing.requested_revision)
    ):
        return existing, False
    try:
        manifest = index_model(
            model_id,
            repo_id=repo_id,
            revision=revision,
            origin_url=origin_url,
            manifest_cache_dir=manifest_cache_dir,
        )
    except ControllerError as exc:
        metrics.indexed.labels(outcome=exc.code).inc()
        raise
    base_repo_id: str | None = None
    if adapters.is_adapter(manifest):
        try:
            base_repo_id = adapters.read_base_repo(origin_url, manifest)
        except (httpx.HTTPError, ValueError) as exc:
            logger.warning("adapter model_id=%s: cannot read its base model: %s", model_id, exc)
    entry = CatalogueEntry.of(
        manifest,
        model_id=model_id,
        requested_revision=revision,
        indexed_at=time.time(),
        base_repo_id=base_repo_id,
    )
    state.put_model(entry)
    metrics.indexed.labels(outcome="ok").inc()
    return entry, True


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def model_id_for(repo_id: str) -> str:
    """The catalogue id the origin indexer gives a repo: its name (``org/bert-sst2`` ->
    ``bert-sst2``), other characters replaced by ``-``."""
    name = repo_id.rpartition("/")[2]
    return _UNSAFE.sub("-", name).lstrip("._-")[:128] or "model"


def origin_repo_ids(origin_url: str) -> list[str]:
    """Every repo the origin lists (``GET /api/models`` through ``HfApi.list_models``)."""
    try:
        api = HfApi(endpoint=origin_url, token=False)
        return sorted(model.id for model in api.list_models())
    except (*_DOWNLOAD_ERRORS,) as exc:
        raise UpstreamUnavailableError(f"cannot list the repos of {origin_url}: {exc}") from exc


@dataclass
class IndexerStatus:
    """What the origin indexer did so far (``GET /v1/models`` shows it as ``origin_index``)."""

    state: str = "starting"  # starting | indexing | retrying | done | off
    listed: int = 0
    indexed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    error: str | None = None
    attempts: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "listed": self.listed,
            "indexed": list(self.indexed),
            "skipped": list(self.skipped),
            "error": self.error,
            "attempts": self.attempts,
        }


class OriginIndexer:
    """Index every repo the origin lists, in a background thread, then plan once.

    Idempotent (a repo already in the catalogue is not downloaded again) and retrying: a failed
    listing or download is retried after ``retry_s`` (doubling up to ``max_retry_s``) until
    every listed repo is in the catalogue, or ``stop()``.
    """

    def __init__(
        self,
        state: RedisState,
        metrics: Metrics,
        planner: Planner,
        *,
        origin_url: str,
        manifest_cache_dir: Path | None = None,
        retry_s: float = 1.0,
        max_retry_s: float = 30.0,
    ) -> None:
        self.state = state
        self.metrics = metrics
        self.planner = planner
        self.origin_url = origin_url
        self.manifest_cache_dir = manifest_cache_dir
        self.retry_s = retry_s
        self.max_retry_s = max_retry_s
        self.status = IndexerStatus()
        self._loop = LoopThread(self.run, name="origin-indexer")
        self._stop = self._loop.stop_event

    def run_once(self) -> bool:
        """One pass: list, add what is missing. True when every listed repo is in."""
        self.status.attempts += 1
        repo_ids = origin_repo_ids(self.origin_url)
        self.status.listed = len(repo_ids)
        present, deleted = self.state.model_ids()
        for repo_id in repo_ids:
            if self._stop.is_set():
                return False
            model_id = model_id_for(repo_id)
            if model_id in deleted:
                if repo_id not in self.status.skipped:
                    self.status.skipped.append(repo_id)  # removed on purpose: stays out
                continue
            existing = self.state.get_model(model_id) if model_id in present else None
            if existing is not None and existing.repo_id != repo_id:
                logger.warning(
                    "origin repo_id=%s not indexed: model_id=%s is taken by %s",
                    repo_id,
                    model_id,
                    existing.repo_id,
                )
                if repo_id not in self.status.skipped:
                    self.status.skipped.append(repo_id)
                continue
            self.status.state = "indexing"
            _, created = add_model(
                self.state,
                self.metrics,
                model_id=model_id,
                repo_id=repo_id,
                revision="main",
                origin_url=self.origin_url,
                manifest_cache_dir=self.manifest_cache_dir,
            )
            if created:
                self.status.indexed.append(model_id)
        return True

    def run(self) -> None:
        delay = self.retry_s
        while not self._stop.is_set():
            try:
                done = self.run_once()
            except TrimCacheError as exc:
                self.status.state, self.status.error = "retrying", str(exc)
                logger.warning("origin indexing failed (retrying in %.0f s): %s", delay, exc)
                self._stop.wait(delay)
                delay = min(delay * 2, self.max_retry_s)
                continue
            if not done:
                return
            self.status.error = None
            logger.info(
                "origin indexing done: listed=%d indexed=%d skipped=%d",
                self.status.listed,
                len(self.status.indexed),
                len(self.status.skipped),
            )
            try:
                if self.status.indexed:
                    self.planner.plan(trigger="catalogue")
            except TrimCacheError as exc:  # the loop re-plans later (interval, membership)
                logger.warning("placement after indexing failed: %s", exc)
            self.status.state = "done"
            return

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()
