"""The Hugging Face Hub download API as pure functions: the one place both servers build it from.

The edge node (answers rebuilt from manifests and blocks, :mod:`edge_node.hub`) and the testbed
origin (answers from files on disk, :mod:`testbed.origin`) describe their files as
:class:`HubFile` and get every answer here, so an unmodified ``huggingface_hub`` sees the same
model info, tree, headers and ranges from both:

- **LFS rule**: a file is LFS-like when its name has a weights suffix (``LFS_SUFFIXES``) or it has
  at least ``LFS_MIN_BYTES``. Its git oid is the sha1 of its LFS pointer (computable from sha256
  and size); any other file's git oid is the git blob sha1 of its content.
- **ETag rule** (the Hub's, which names huggingface_hub's cache blobs): LFS-like files carry their
  sha256, also as ``X-Linked-Etag`` with ``X-Linked-Size``; other files their git blob sha1. One
  file therefore gets one blob name whichever server filled the cache.
- **Range** (RFC 9110, one convention): ``bytes=a-b`` / ``a-`` / ``-n`` become a half-open
  ``(start, end)``; multi-range or other units serve everything (``None``); a range outside the
  file is :class:`RangeNotSatisfiableError` (416, ``Content-Range: bytes */size``).
- **Errors**: unknown repo / revision / path are 404s whose ``hub_code`` goes in ``X-Error-Code``
  (``RepoNotFound`` / ``RevisionNotFound`` / ``EntryNotFound``), which huggingface_hub maps to
  its own exceptions.

Pure: no I/O, no web framework, no HTTP client (the callers read files and send responses).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from core.errors import CoreError

DEFAULT_BRANCH = "main"
LFS_MIN_BYTES = 10 * 1024 * 1024
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".onnx", ".gguf")
#: The time every repo claims for lastModified/createdAt: stable, so answers are deterministic.
FIXED_TIMESTAMP = "2024-01-01T00:00:00.000Z"


class HubError(CoreError):
    """A Hugging Face API 404; ``hub_code`` is the Hub's ``X-Error-Code``."""

    hub_code: ClassVar[str] = ""
    status_code = 404


class RepoNotFoundError(HubError, LookupError):
    code = "repo_not_found"
    hub_code = "RepoNotFound"


class RevisionNotFoundError(HubError, LookupError):
    code = "revision_not_found"
    hub_code = "RevisionNotFound"


class EntryNotFoundError(HubError, LookupError):
    code = "entry_not_found"
    hub_code = "EntryNotFound"


class RangeNotSatisfiableError(CoreError):
    code = "range_not_satisfiable"
    status_code = 416

    def __init__(self, message: str, *, size_bytes: int) -> None:
        super().__init__(message)
        self.size_bytes = size_bytes


def is_lfs(path: str, size: int) -> bool:
    return path.endswith(LFS_SUFFIXES) or size >= LFS_MIN_BYTES


def lfs_pointer(sha256: str, size: int) -> bytes:
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    )


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


@dataclass(frozen=True, slots=True)
class HubFile:
    """One file of a repo with the digests the Hub shows for it."""

    path: str  # posix, relative to the repo root
    size: int
    git_oid: str  # git blob sha1 (LFS-like files: sha1 of the LFS pointer)
    lfs_sha256: str | None = None  # set for LFS-like files only

    @property
    def etag(self) -> str:
        return self.lfs_sha256 or self.git_oid

    @property
    def pointer_size(self) -> int:
        return len(lfs_pointer(self.lfs_sha256, self.size)) if self.lfs_sha256 else 0


def describe(
    path: str, size: int, *, sha256: Callable[[], str], content: Callable[[], bytes]
) -> HubFile:
    """A file's :class:`HubFile`: LFS-like files need only ``sha256()``, others ``content()``."""
    if is_lfs(path, size):
        digest = sha256()
        return HubFile(path, size, git_blob_sha1(lfs_pointer(digest, size)), digest)
    return HubFile(path, size, git_blob_sha1(content()), None)


def _lfs(file: HubFile, sha_key: str) -> dict[str, Any]:
    return {sha_key: file.lfs_sha256, "size": file.size, "pointerSize": file.pointer_size}


def model_info(
    repo_id: str,
    commit: str,
    files: Mapping[str, HubFile],
    *,
    tags: list[str],
    library_name: str | None = None,
) -> dict[str, Any]:
    """``GET /api/models/{repo_id}[/revision/{rev}]`` (siblings sorted by path)."""
    siblings = []
    for path in sorted(files):
        f = files[path]
        sibling: dict[str, Any] = {"rfilename": f.path, "size": f.size, "blobId": f.git_oid}
        if f.lfs_sha256 is not None:
            sibling["lfs"] = _lfs(f, "sha256")
        siblings.append(sibling)
    info: dict[str, Any] = {
        "_id": commit[:24],
        "id": repo_id,
        "modelId": repo_id,
        "author": repo_id.partition("/")[0],
        "sha": commit,
        "lastModified": FIXED_TIMESTAMP,
        "createdAt": FIXED_TIMESTAMP,
        "private": False,
        "gated": False,
        "disabled": False,
        "downloads": 0,
        "likes": 0,
    }
    if library_name is not None:
        info["library_name"] = library_name
    info["tags"] = list(tags)
    info["siblings"] = siblings
    info["usedStorage"] = sum(f.size for f in files.values())
    return info


def tree_entry(file: HubFile) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": "file", "oid": file.git_oid, "size": file.size}
    entry["path"] = file.path
    if file.lfs_sha256 is not None:
        entry["lfs"] = _lfs(file, "oid")
    return entry


def tree(
    repo_id: str, paths: list[str], prefix: str, *, recursive: bool, entry: Callable[[str], HubFile]
) -> list[dict[str, Any]]:
    """``GET /api/models/{repo_id}/tree/{rev}[/{prefix}]``: files, then directories.

    ``paths`` are the repo's file paths; ``entry(path)`` describes one (called only for the
    files listed, so a server can describe lazily).
    """
    prefix = prefix.strip("/")
    base = f"{prefix}/" if prefix else ""
    known = set(paths)
    if prefix and prefix in known:
        return [tree_entry(entry(prefix))]
    entries: list[dict[str, Any]] = []
    dirs: set[str] = set()
    for path in sorted(known):
        if not path.startswith(base):
            continue
        parts = path[len(base) :].split("/")
        for depth in range(1, len(parts)):
            if recursive or depth == 1:
                dirs.add(base + "/".join(parts[:depth]))
        if recursive or len(parts) == 1:
            entries.append(tree_entry(entry(path)))
    if prefix and not entries and not dirs:
        raise EntryNotFoundError(f"{prefix!r} not found in {repo_id!r}")
    for d in sorted(dirs):
        oid = hashlib.sha1(d.encode(), usedforsecurity=False).hexdigest()
        entries.append({"type": "directory", "oid": oid, "size": 0, "path": d})
    return entries


def file_headers(commit: str, file: HubFile) -> dict[str, str]:
    """Headers of ``HEAD|GET /{repo_id}/resolve/{rev}/{path}`` (without Content-Length/Range)."""
    headers = {
        "ETag": f'"{file.etag}"',
        "X-Repo-Commit": commit,
        "Accept-Ranges": "bytes",
        "Content-Disposition": f'inline; filename="{file.path.rsplit("/", 1)[-1]}"',
    }
    if file.lfs_sha256 is not None:
        headers["X-Linked-Etag"] = f'"{file.lfs_sha256}"'
        headers["X-Linked-Size"] = str(file.size)
    return headers


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


def range_headers(
    headers: dict[str, str], span: tuple[int, int] | None, size: int
) -> tuple[int, int, int]:
    """Add ``Content-Length`` (and ``Content-Range`` for a span) to ``headers``; returns
    ``(status, start, end)`` of the body to send."""
    start, end = span or (0, size)
    status = 200
    if span is not None:
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    headers["Content-Length"] = str(end - start)
    return status, start, end
