"""Errors raised by the block format.

Hierarchy::

    TrimCacheError                 base of every TrimCache error (CLI exit code, error code)
    └── CoreError
        ├── SafetensorsFormatError a file is not valid safetensors (names the file and problem)
        ├── ManifestError          a manifest is malformed or does not fit its files
        │   └── BlockLengthConflictError  it gives a held block another length (409)
        ├── InvalidBlockIdError    not 64 lowercase hex (also blocks path traversal)
        ├── BlockNotFoundError     a store lacks a block (also a LookupError)
        ├── DigestMismatchError    bytes do not hash to the id or the manifest's sha256
        └── StoreFullError         a write would exceed the store's capacity (507)
            └── DiskFullError      the disk itself is full (ENOSPC), also 507 store_full

Every other package's base error (EdgeError, ControllerError, ClientError) also derives from
``TrimCacheError``, so the CLI prints any of them as one line with ``exit_code``.
"""

from __future__ import annotations

from typing import ClassVar


class TrimCacheError(Exception):
    """Base of all TrimCache errors. ``code`` is the stable machine-readable error code."""

    code: ClassVar[str] = "internal"
    status_code: ClassVar[int] = 500
    exit_code: ClassVar[int] = 1


class CoreError(TrimCacheError):
    """Base of errors from the block format."""


class SafetensorsFormatError(CoreError):
    """A file is not a valid safetensors file."""

    code = "invalid_safetensors"
    status_code = 400
    exit_code = 2

    def __init__(self, path: object, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


class ManifestError(CoreError):
    """A manifest is malformed, has an unknown schema, or does not fit its files."""

    code = "invalid_manifest"
    status_code = 400
    exit_code = 2


class BlockLengthConflictError(ManifestError):
    """A manifest gives a block another length than the copy held (409: it contradicts the
    store, so it is rejected rather than making a model look complete and serve a cut file)."""

    code = "block_length_conflict"
    status_code = 409


class InvalidBlockIdError(CoreError, ValueError):
    """A block id is not 64 lowercase hex characters."""

    code = "invalid_block_id"
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

    code = "block_not_found"
    status_code = 404

    def __init__(self, block_id: str, where: object = "store") -> None:
        super().__init__(f"block {block_id} not found in {where}")
        self.block_id = block_id


class DigestMismatchError(CoreError):
    """Bytes do not hash to the id (or file sha256) they are supposed to have."""

    code = "digest_mismatch"
    status_code = 400

    def __init__(self, what: str, expected: str, actual: str) -> None:
        super().__init__(f"{what}: sha256 mismatch (expected {expected}, got {actual})")
        self.expected = expected
        self.actual = actual


class StoreFullError(CoreError):
    """Storing would exceed the store's capacity."""

    code = "store_full"
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
