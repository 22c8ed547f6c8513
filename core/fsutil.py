"""Atomic file writes: unique temp file in the target's directory, fsync, ``os.replace``.

A reader never sees a half-written file under its final name: after a crash only a ``.tmp-*``
file can be left behind, and stores sweep those when they open.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

TMP_PREFIX = ".tmp-"


def atomic_write(
    path: str | Path, chunks: Iterable[bytes | memoryview], *, durable: bool = True
) -> int:
    """Write ``chunks`` to ``path`` atomically; return the number of bytes written.

    Internal logic:
    1. create a unique temp file next to ``path`` (unique per call, so concurrent writers of the
       same path never share a temp file);
    2. write every chunk, then fsync when ``durable``;
    3. ``os.replace`` onto ``path``; on any error the temp file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
    written = 0
    try:
        with os.fdopen(fd, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
                written += len(chunk)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp_name, path)
    finally:
        # After a successful replace the temp name no longer exists.
        Path(tmp_name).unlink(missing_ok=True)
    return written


def atomic_write_bytes(path: str | Path, data: bytes, *, durable: bool = True) -> None:
    atomic_write(path, [data], durable=durable)


def sweep_temp_files(root: Path) -> int:
    """Remove leftover temp files (from a crash) under ``root``; return how many."""
    removed = 0
    if root.exists():
        for tmp in root.rglob(f"{TMP_PREFIX}*"):
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed
