"""The edge's side of the Hugging Face Hub download API: manifests described as Hub files.

``huggingface_hub.snapshot_download(repo_id, endpoint=EDGE_URL)`` needs model info, the tree
listing and ``resolve`` with HEAD/GET/Range. The answers themselves (ETag and LFS rules, headers,
Range parsing, tree layout) come from :mod:`core.hubapi`, shared with the testbed origin; this
module maps manifests onto them:

- Repo ids and revisions come from manifests: those the node holds, else the controller's
  catalogue (:mod:`edge_node.pull` finds them and rebuilds the bytes). A repo's commit id (``sha``)
  is the manifest revision when that is a 40-hex commit (manifests built from the Hub or the
  testbed origin), else a stable 40-hex derived from the manifest id. ``main``, the manifest
  revision and the commit id all resolve.
- A file's :class:`core.hubapi.HubFile` uses the manifest's sha256 for LFS-like files; other
  (small) files are read once per content for their git blob sha1 (cached by sha256), which is
  also their ETag, as on the Hub.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable, Sequence
from typing import Any

from core import hubapi
from core.hubapi import DEFAULT_BRANCH, HubFile
from core.manifest import FileEntry, ModelManifest
from edge_node.errors import EntryNotFoundError, RepoNotFoundError, RevisionNotFoundError

__all__ = ["DEFAULT_BRANCH", "commit_id", "find_file", "find_repo", "hub_file"]

_COMMIT_RE = re.compile(r"[0-9a-f]{40}")
_TAGS = ["trimcache-edge"]

#: Reads a whole (small) file of the repo being answered.
ReadFile = Callable[[FileEntry], bytes]

_git_oid_cache: dict[str, str] = {}
_git_oid_lock = threading.Lock()


def commit_id(manifest: ModelManifest) -> str:
    if _COMMIT_RE.fullmatch(manifest.revision):
        return manifest.revision
    return hashlib.sha1(manifest.manifest_id.encode(), usedforsecurity=False).hexdigest()


def find_repo(
    manifests: Sequence[ModelManifest],
    repo_id: str,
    revision: str = DEFAULT_BRANCH,
    *,
    where: str,
) -> ModelManifest:
    """The manifest with ``repo_id`` at ``revision`` (``main`` or its commit) among ``manifests``.

    ``where`` names the place searched in the 404 messages (e.g. ``node edge-2``).
    """
    candidates = [m for m in manifests if m.repo_id == repo_id]
    if not candidates:
        raise RepoNotFoundError(f"repository {repo_id!r} not found on {where}")
    if revision == DEFAULT_BRANCH:
        return candidates[0]
    for manifest in candidates:
        if revision in (manifest.revision, commit_id(manifest)):
            return manifest
    raise RevisionNotFoundError(f"revision {revision!r} not found in {repo_id!r} on {where}")


def find_file(manifest: ModelManifest, path: str) -> FileEntry:
    try:
        return manifest.file(path)
    except KeyError:
        raise EntryNotFoundError(
            f"{path!r} not found in {manifest.repo_id!r}@{commit_id(manifest)}"
        ) from None


def hub_file(entry: FileEntry, read: ReadFile) -> HubFile:
    """The Hub's view of one manifest file (small files are read once per content)."""
    if hubapi.is_lfs(entry.path, entry.size):
        return hubapi.describe(entry.path, entry.size, sha256=lambda: entry.sha256, content=bytes)
    with _git_oid_lock:
        oid = _git_oid_cache.get(entry.sha256)
    if oid is None:
        oid = hubapi.git_blob_sha1(read(entry))
        with _git_oid_lock:
            _git_oid_cache[entry.sha256] = oid
    return HubFile(entry.path, entry.size, oid)


def model_info(manifest: ModelManifest, read: ReadFile) -> dict[str, Any]:
    files = {e.path: hub_file(e, read) for e in manifest.files}
    return hubapi.model_info(manifest.repo_id, commit_id(manifest), files, tags=_TAGS)


def tree(
    manifest: ModelManifest, prefix: str, *, recursive: bool, read: ReadFile
) -> list[dict[str, Any]]:
    """Entries under ``prefix`` (files, then directories), like the Hub's tree API."""
    return hubapi.tree(
        manifest.repo_id,
        [e.path for e in manifest.files],
        prefix,
        recursive=recursive,
        entry=lambda path: hub_file(manifest.file(path), read),
    )


def file_headers(manifest: ModelManifest, entry: FileEntry, read: ReadFile) -> dict[str, str]:
    return hubapi.file_headers(commit_id(manifest), hub_file(entry, read))
