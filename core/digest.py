"""Content digests: block ids are lowercase sha256 hex of exactly the block's bytes."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from pathlib import Path
from typing import NewType

BlockId = NewType("BlockId", str)

_BLOCK_ID_RE = re.compile(r"[0-9a-f]{64}")
#: Read size for hashing files: large reads keep sha256 near its ~1.8 GB/s peak.
CHUNK_BYTES = 1 << 20
#: sha256 of the empty string: the id of every zero-size tensor.
EMPTY_BLOCK_ID = BlockId(hashlib.sha256(b"").hexdigest())


def is_block_id(value: object) -> bool:
    """Return True when ``value`` is 64 lowercase hex characters.

    >>> is_block_id("0" * 64), is_block_id("../etc/passwd"), is_block_id("A" * 64)
    (True, False, False)
    """
    return isinstance(value, str) and _BLOCK_ID_RE.fullmatch(value) is not None


def check_block_id(value: object) -> BlockId:
    """Return ``value`` as a BlockId, or raise InvalidBlockIdError (blocks path traversal)."""
    from core.errors import InvalidBlockIdError

    if not is_block_id(value):
        raise InvalidBlockIdError(value)
    return BlockId(str(value))


def sha256_bytes(data: bytes | bytearray | memoryview) -> BlockId:
    """Block id of ``data``.

    >>> sha256_bytes(b"")[:12]
    'e3b0c44298fc'
    """
    return BlockId(hashlib.sha256(data).hexdigest())


def sha256_chunks(chunks: Iterable[bytes | memoryview]) -> BlockId:
    """Block id of the concatenation of ``chunks``."""
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return BlockId(digest.hexdigest())


def sha256_file(path: str | Path) -> str:
    """sha256 hex of a whole file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
