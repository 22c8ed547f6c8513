"""Fetching without a controller or edge node: index a repo locally from the origin.

Block ids are sha256 of tensor bytes, so a manifest cannot be built from metadata alone: the first
fetch of a repo streams its files once into a directory of the device cache (file sha256 checked
against the Hub's ``lfs.sha256`` when given) and describes them with
:func:`core.blocks.build_manifest`; those files then become the model's files as they are (the
block ids were just computed from their bytes). Later fetches of the same revision reuse the
manifest, and any blocks that went missing are read back with HTTP Range requests (the
downloader's origin path).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from core.blocks import build_manifest
from core.digest import sha256_file
from core.manifest import ModelManifest, check_relpath

from ._download import READ_CHUNK_BYTES, ByteCallback
from ._errors import (
    BlockIntegrityError,
    EdgeUnavailableError,
    ModelNotFoundError,
    raise_for_error,
    transport_error,
)


def _is_hub_transport_error(exc: BaseException) -> bool:
    """A connection failure of huggingface_hub's HTTP backend: httpx (1.x) or httpx2 (2.x)."""
    return any(
        cls.__name__ == "TransportError" and cls.__module__.split(".")[0] in ("httpx", "httpx2")
        for cls in type(exc).__mro__
    )


def repo_info(origin_url: str, repo_id: str, revision: str) -> tuple[str, list[dict[str, Any]]]:
    """``(commit sha, [{"path", "size", "sha256"|None}])`` of a repo, via huggingface_hub.

    Raises:
        ModelNotFoundError: the origin does not have the repo or revision.
        EdgeUnavailableError: the origin is unreachable (the message names its URL).
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        info = HfApi(endpoint=origin_url).model_info(
            repo_id, revision=revision, files_metadata=True
        )
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise ModelNotFoundError(f"{repo_id}@{revision} not found on {origin_url}") from exc
    except Exception as exc:
        if not _is_hub_transport_error(exc):
            raise
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise EdgeUnavailableError(f"{origin_url} unreachable: {reason}", url=origin_url) from exc
    files = []
    for sibling in info.siblings or []:
        lfs = getattr(sibling, "lfs", None)
        files.append(
            {
                "path": sibling.rfilename,
                "size": sibling.size,
                "sha256": getattr(lfs, "sha256", None) if lfs is not None else None,
            }
        )
    if not info.sha:
        raise ModelNotFoundError(f"{repo_id}@{revision}: origin gave no commit id")
    return info.sha, files


def index_from_origin(
    http: httpx.Client,
    dest: Path,
    *,
    origin_url: str,
    model_id: str,
    repo_id: str,
    revision: str,
    files: list[dict[str, Any]],
    on_bytes: ByteCallback | None = None,
) -> tuple[ModelManifest, int]:
    """Download a repo's files once into ``dest`` (a new dir); return (manifest, bytes read).

    The caller removes ``dest`` on an error.
    """
    dest.mkdir(parents=True)
    moved = 0
    for entry in files:
        rel = check_relpath(entry["path"])
        if rel.startswith(".") or "/." in rel:
            continue  # .gitattributes and friends are not model files
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        url = f"{origin_url}/{repo_id}/resolve/{revision}/{rel}"
        try:
            with http.stream("GET", url) as response, open(target, "wb") as fh:
                if response.status_code >= 400:
                    response.read()
                    raise_for_error(response)
                for chunk in response.iter_raw(READ_CHUNK_BYTES):
                    fh.write(chunk)
                    moved += len(chunk)
                    if on_bytes is not None:
                        on_bytes(origin_url, len(chunk))
        except httpx.TransportError as exc:
            raise transport_error(exc, url) from exc
        expected = entry.get("sha256")
        if expected and sha256_file(target) != expected:
            raise BlockIntegrityError(f"{url}: file sha256 does not match the origin's")
    manifest = build_manifest(dest, model_id=model_id, repo_id=repo_id, revision=revision)
    return manifest, moved
