"""The Hugging Face Hub download API: answers built from manifests, files rebuilt from blocks.

``huggingface_hub.snapshot_download(repo_id, endpoint=EDGE_URL)`` needs model info, the tree
listing and ``resolve`` with HEAD/GET/Range; this module builds those answers from manifests.

- Repo ids and revisions come from manifests: those the node holds, else the controller's
  catalogue (:mod:`edge_node.pull` finds them and rebuilds the bytes). A repo's commit id (``sha``)
  is the manifest revision when that is a 40-hex commit (manifests built from the Hub or the
  testbed origin), else a stable 40-hex derived from the manifest id. ``main``, the manifest
  revision and the commit id all resolve.
- ``ETag`` is the file's sha256 (quoted) for every file, also sent as ``X-Linked-Etag`` with
  ``X-Linked-Size`` as the Hub does for LFS files; huggingface_hub names its cache blobs by it.
- Tree ``oid`` is the git blob sha1 the Hub would show: for LFS-like files the sha1 of the LFS
  pointer (computable from sha256 and size), for small files the sha1 of the content (cached).
- Unknown repo / revision / path: 404 with ``X-Error-Code`` RepoNotFound / RevisionNotFound /
  EntryNotFound, which huggingface_hub maps to its own errors.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable, Sequence
from typing import Any

from core.manifest import FileEntry, ModelManifest
from edge_node.errors import (
    EntryNotFoundError,
    RangeNotSatisfiableError,
    RepoNotFoundError,
    RevisionNotFoundError,
)

DEFAULT_BRANCH = "main"
LFS_MIN_BYTES = 10 * 1024 * 1024
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".onnx", ".gguf")
FIXED_TIMESTAMP = "2024-01-01T00:00:00.000Z"
_COMMIT_RE = re.compile(r"[0-9a-f]{40}")

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


def _is_lfs(entry: FileEntry) -> bool:
    return entry.path.endswith(LFS_SUFFIXES) or entry.size >= LFS_MIN_BYTES


def _lfs_pointer(entry: FileEntry) -> bytes:
    return (
        "version https://git-lfs.github.com/spec/v1\n"
        f"oid sha256:{entry.sha256}\nsize {entry.size}\n"
    ).encode()


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def git_oid(entry: FileEntry, read: ReadFile) -> str:
    """The git blob sha1 of a file; small files are read (once per content) with ``read``."""
    if _is_lfs(entry):
        return _git_blob_sha1(_lfs_pointer(entry))
    with _git_oid_lock:
        cached = _git_oid_cache.get(entry.sha256)
    if cached is None:
        cached = _git_blob_sha1(read(entry))
        with _git_oid_lock:
            _git_oid_cache[entry.sha256] = cached
    return cached


def model_info(manifest: ModelManifest, read: ReadFile) -> dict[str, Any]:
    org, _, _name = manifest.repo_id.partition("/")
    commit = commit_id(manifest)
    siblings = []
    for entry in manifest.files:
        sibling: dict[str, Any] = {
            "rfilename": entry.path,
            "size": entry.size,
            "blobId": git_oid(entry, read),
        }
        if _is_lfs(entry):
            sibling["lfs"] = {
                "sha256": entry.sha256,
                "size": entry.size,
                "pointerSize": len(_lfs_pointer(entry)),
            }
        siblings.append(sibling)
    return {
        "_id": commit[:24],
        "id": manifest.repo_id,
        "modelId": manifest.repo_id,
        "author": org,
        "sha": commit,
        "lastModified": FIXED_TIMESTAMP,
        "createdAt": FIXED_TIMESTAMP,
        "private": False,
        "gated": False,
        "disabled": False,
        "downloads": 0,
        "likes": 0,
        "tags": ["trimcache-edge"],
        "siblings": siblings,
        "usedStorage": manifest.total_bytes,
    }


def _tree_entry(entry: FileEntry, read: ReadFile) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": "file",
        "oid": git_oid(entry, read),
        "size": entry.size,
        "path": entry.path,
    }
    if _is_lfs(entry):
        out["lfs"] = {
            "oid": entry.sha256,
            "size": entry.size,
            "pointerSize": len(_lfs_pointer(entry)),
        }
    return out


def tree(
    manifest: ModelManifest, prefix: str, *, recursive: bool, read: ReadFile
) -> list[dict[str, Any]]:
    """Entries under ``prefix`` (files, then directories), like the Hub's tree API."""
    prefix = prefix.strip("/")
    base = f"{prefix}/" if prefix else ""
    paths = {e.path: e for e in manifest.files}
    if prefix and prefix in paths:
        return [_tree_entry(paths[prefix], read)]
    entries: list[dict[str, Any]] = []
    dirs: set[str] = set()
    for path in sorted(paths):
        if not path.startswith(base):
            continue
        parts = path[len(base) :].split("/")
        for depth in range(1, len(parts)):
            if recursive or depth == 1:
                dirs.add(base + "/".join(parts[:depth]))
        if recursive or len(parts) == 1:
            entries.append(_tree_entry(paths[path], read))
    if prefix and not entries and not dirs:
        raise EntryNotFoundError(f"{prefix!r} not found in {manifest.repo_id!r}")
    for d in sorted(dirs):
        oid = hashlib.sha1(d.encode(), usedforsecurity=False).hexdigest()
        entries.append({"type": "directory", "oid": oid, "size": 0, "path": d})
    return entries


def file_headers(manifest: ModelManifest, entry: FileEntry) -> dict[str, str]:
    return {
        "ETag": f'"{entry.sha256}"',
        "X-Linked-Etag": f'"{entry.sha256}"',
        "X-Linked-Size": str(entry.size),
        "X-Repo-Commit": commit_id(manifest),
        "Accept-Ranges": "bytes",
        "Content-Disposition": f'inline; filename="{entry.path.rsplit("/", 1)[-1]}"',
    }


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``bytes=a-b`` / ``a-`` / ``-n`` -> half-open ``(start, end)``; None: serve it all.

    Multi-range or non-byte units are ignored (a 200 with everything, which RFC 9110 allows).
    """
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, sep, last = spec.strip().partition("-")
    if not sep:
        return None
    try:
        if first == "":
            suffix = int(last)
            if suffix <= 0 or size == 0:
                raise RangeNotSatisfiableError("empty suffix range", size_bytes=size)
            return max(0, size - suffix), size
        start = int(first)
        end = int(last) + 1 if last else size
    except ValueError:
        return None
    if start < 0 or start >= size or end <= start:
        raise RangeNotSatisfiableError(f"range {spec!r} outside 0-{size - 1}", size_bytes=size)
    return start, min(end, size)
