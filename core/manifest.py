"""Model manifests: how a model's files decompose into content-addressed blocks.

A :class:`ModelManifest` lists a model's files (sorted by path). Each :class:`FileEntry` is

- ``kind="safetensors"``: the exact header prefix bytes (8-byte length + JSON, padding included)
  and one :class:`BlockRef` per tensor, in file order, tiling ``[len(header), size)`` exactly;
- ``kind="file"``: any other file, one block covering the whole file (``block_id == sha256``).

Writing the header followed by each block's bytes rebuilds the original file byte for byte, which
the file's ``sha256`` then proves. Block offsets are absolute in the original file, so a reader
can also fetch a single block from the origin with one HTTP Range read.

The JSON form is canonical (``sort_keys``, no whitespace, header bytes in base64) and carries
``schema``; :attr:`ModelManifest.manifest_id` is the sha256 of that JSON. Construction validates
everything, so a manifest that exists is well formed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from core.digest import BlockId, check_block_id, is_block_id
from core.errors import InvalidBlockIdError, ManifestError

SCHEMA = "trimcache.manifest/v1"
FileKind = Literal["safetensors", "file"]

_MODEL_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_REPO_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?")


def check_model_id(model_id: object) -> str:
    """Return ``model_id`` if it is a safe short id (letters, digits, ``.``, ``_``, ``-``)."""
    if not isinstance(model_id, str) or not _MODEL_ID_RE.fullmatch(model_id):
        raise ManifestError(
            f"invalid model id {model_id!r}: use letters, digits, '.', '_' and '-' "
            "(at most 128, starting with a letter or digit)"
        )
    if ".." in model_id:
        raise ManifestError(f"invalid model id {model_id!r}: '..' is not allowed")
    return model_id


def check_repo_id(repo_id: object) -> str:
    """Return ``repo_id`` if it looks like a Hub repo id (``org/name`` or ``name``)."""
    if not isinstance(repo_id, str) or not _REPO_ID_RE.fullmatch(repo_id) or ".." in repo_id:
        raise ManifestError(f"invalid repo id {repo_id!r}: expected 'org/name'")
    return repo_id


def check_relpath(path: object) -> str:
    """Return ``path`` if it is a safe relative POSIX path inside a repo."""
    if (
        not isinstance(path, str)
        or not path
        or path.startswith("/")
        or "\\" in path
        or "\x00" in path
        or any(part in ("", ".", "..") for part in path.split("/"))
    ):
        raise ManifestError(f"invalid file path {path!r}: must be relative, without '..'")
    return path


def _as_int(value: object) -> int:
    """A JSON integer (not a bool, float or string): manifests are canonical."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r:.40}")
    return value


@dataclass(frozen=True, slots=True)
class BlockRef:
    """One block of a file: ``length`` bytes at absolute ``offset``; ``name`` is the tensor name."""

    block_id: BlockId
    offset: int
    length: int
    name: str | None = None

    def __post_init__(self) -> None:
        check_block_id(self.block_id)
        if self.offset < 0 or self.length < 0:
            raise ManifestError(f"block {self.block_id}: negative offset or length")
        if self.name is not None and not isinstance(self.name, str):
            raise ManifestError(f"block {self.block_id}: tensor name {self.name!r} is not a string")


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One file of a model and the blocks that rebuild it."""

    path: str
    size: int
    sha256: str
    kind: FileKind
    blocks: tuple[BlockRef, ...]
    header: bytes = b""

    def __post_init__(self) -> None:
        check_relpath(self.path)
        if not is_block_id(self.sha256):
            raise ManifestError(f"{self.path}: sha256 {self.sha256!r} is not 64 lowercase hex")
        if self.kind == "file":
            if self.header or len(self.blocks) != 1:
                raise ManifestError(f"{self.path}: a plain file is exactly one block")
            block = self.blocks[0]
            if block.block_id != self.sha256:
                raise ManifestError(f"{self.path}: a plain file's block id must be its sha256")
        elif self.kind != "safetensors":
            raise ManifestError(f"{self.path}: unknown file kind {self.kind!r}")
        cursor = len(self.header)
        for block in self.blocks:
            if block.offset != cursor:
                raise ManifestError(
                    f"{self.path}: block {block.block_id} at offset {block.offset}, "
                    f"expected {cursor} (blocks must tile the file)"
                )
            cursor += block.length
        if cursor != self.size:
            raise ManifestError(
                f"{self.path}: header and blocks cover {cursor} bytes, file size is {self.size}"
            )

    def segments(self) -> Iterator[tuple[int, int, bytes | BlockRef]]:
        """Yield ``(start, end, source)`` pieces of the file in order (header bytes or a block)."""
        if self.header:
            yield 0, len(self.header), self.header
        for block in self.blocks:
            yield block.offset, block.offset + block.length, block

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": self.path,
            "size": self.size,
            "sha256": self.sha256,
            "kind": self.kind,
            "blocks": [
                [b.block_id, b.offset, b.length] + ([b.name] if b.name is not None else [])
                for b in self.blocks
            ],
        }
        if self.header:
            out["header"] = base64.b64encode(self.header).decode("ascii")
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FileEntry:
        if not isinstance(data, Mapping):
            raise ManifestError(f"malformed file entry {data!r:.80}: not a JSON object")
        try:
            header_b64 = data.get("header", "")
            header = base64.b64decode(header_b64, validate=True) if header_b64 else b""
            blocks = tuple(
                BlockRef(
                    BlockId(row[0]),
                    _as_int(row[1]),
                    _as_int(row[2]),
                    row[3] if len(row) > 3 else None,
                )
                for row in data["blocks"]
            )
            return cls(
                path=data["path"],
                size=_as_int(data["size"]),
                sha256=data["sha256"],
                kind=data["kind"],
                blocks=blocks,
                header=header,
            )
        except InvalidBlockIdError as exc:
            raise ManifestError(f"file {data.get('path')!r}: {exc}") from exc
        except (KeyError, TypeError, ValueError, IndexError, binascii.Error) as exc:
            raise ManifestError(f"file {data.get('path')!r}: malformed entry ({exc})") from exc


@dataclass(frozen=True, slots=True)
class ModelManifest:
    """A model (one Hub repo at one revision) as files made of blocks.

    >>> from core.digest import sha256_bytes
    >>> bid = sha256_bytes(b"{}")
    >>> m = ModelManifest("demo", "org/demo", "main",
    ...     (FileEntry("config.json", 2, bid, "file", (BlockRef(bid, 0, 2),)),))
    >>> ModelManifest.from_json(m.to_json()) == m, m.total_bytes
    (True, 2)
    """

    model_id: str
    repo_id: str
    revision: str
    files: tuple[FileEntry, ...]
    schema: str = field(default=SCHEMA)

    def __post_init__(self) -> None:
        check_model_id(self.model_id)
        check_repo_id(self.repo_id)
        if not isinstance(self.revision, str) or not self.revision or "/" in self.revision:
            raise ManifestError(f"model {self.model_id}: invalid revision {self.revision!r}")
        if self.schema != SCHEMA:
            raise ManifestError(f"unsupported manifest schema {self.schema!r}, want {SCHEMA}")
        paths = [f.path for f in self.files]
        if paths != sorted(set(paths)):
            raise ManifestError(f"model {self.model_id}: file paths must be unique and sorted")

    # -- derived views -------------------------------------------------------------------
    @property
    def total_bytes(self) -> int:
        """Sum of file sizes (the logical size of the model)."""
        return sum(f.size for f in self.files)

    def block_sizes(self) -> dict[BlockId, int]:
        """Every distinct block id of the model and its size, in file order."""
        sizes: dict[BlockId, int] = {}
        for entry in self.files:
            for block in entry.blocks:
                sizes.setdefault(block.block_id, block.length)
        return sizes

    @property
    def unique_bytes(self) -> int:
        """Bytes after dedup within the model (headers are kept in the manifest)."""
        return sum(self.block_sizes().values())

    def file(self, path: str) -> FileEntry:
        for entry in self.files:
            if entry.path == path:
                return entry
        raise KeyError(path)

    def locate(self) -> dict[BlockId, tuple[str, int, int]]:
        """Where each block first appears: ``block_id -> (path, offset, length)``."""
        where: dict[BlockId, tuple[str, int, int]] = {}
        for entry in self.files:
            for block in entry.blocks:
                where.setdefault(block.block_id, (entry.path, block.offset, block.length))
        return where

    # -- JSON ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "model_id": self.model_id,
            "repo_id": self.repo_id,
            "revision": self.revision,
            "files": [f.to_dict() for f in self.files],
        }

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no whitespace."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @property
    def manifest_id(self) -> str:
        """sha256 of the canonical JSON."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelManifest:
        if not isinstance(data, Mapping):
            raise ManifestError("manifest is not a JSON object")
        schema = data.get("schema")
        if schema != SCHEMA:
            raise ManifestError(f"unsupported manifest schema {schema!r}, want {SCHEMA}")
        try:
            files = tuple(FileEntry.from_dict(f) for f in data["files"])
            return cls(
                model_id=data["model_id"],
                repo_id=data["repo_id"],
                revision=data["revision"],
                files=files,
            )
        except (KeyError, TypeError) as exc:
            raise ManifestError(f"malformed manifest: missing or bad field {exc}") from exc

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelManifest:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ManifestError(f"manifest is not valid JSON: {exc}") from exc
        return cls.from_dict(data)
