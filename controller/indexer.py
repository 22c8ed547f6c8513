"""Indexing: download a model repo once from the origin and describe it as blocks.

Internal logic of :func:`index_model`:

1. resolve the requested revision to the origin's commit id (``HfApi.model_info``);
2. ``snapshot_download`` that commit into a private temp directory (``huggingface_hub`` pointed
   at ``origin_url``, exactly as any Hub client would be);
3. :func:`core.build_manifest` over the files, recording the resolved commit as the revision;
4. delete the temp directory, whatever happened.

The origin's errors map to :mod:`controller.errors`: unknown repo -> ``RepoNotFoundError``,
unknown revision -> ``RevisionNotFoundError``, anything transport-level or 5xx ->
``UpstreamUnavailableError``, files that are not a valid model -> ``IndexingError``. Nothing
here touches Redis; the caller stores the manifest only when indexing succeeded.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

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

from controller.errors import (
    IndexingError,
    RepoNotFoundError,
    UpstreamUnavailableError,
)
from controller.errors import (
    RevisionNotFoundError as ControllerRevisionNotFoundError,
)
from core import ModelManifest, build_manifest
from core.errors import CoreError

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
