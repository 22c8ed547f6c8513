"""Atomic file writes: unique temp file in the target's directory, fsync, ``os.replace``.

The one writer of every file that appears under a final name (blocks, manifests, state files,
reports, CSV results): :func:`atomic_write` for chunks, ``atomic_write_bytes`` / ``_text`` /
``_json`` for whole values.

A reader never sees a half-written file under its final name: after a crash only a ``.tmp-*``
file can be left behind, and stores sweep those when they open. A writer holds an exclusive
``flock`` on its temp file until the file has its final name, and the sweep leaves locked files
alone, so opening a store never destroys another thread's or process's write in progress (the
kernel drops the lock when a writer dies, which is what makes its leftover sweepable).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from core.errors import DiskFullError

TMP_PREFIX = ".tmp-"
# Mode of reports, state and result files (blocks keep the temp file's 0600).
PUBLIC_MODE = 0o644


def atomic_write(
    path: str | Path,
    chunks: Iterable[bytes | memoryview],
    *,
    durable: bool = True,
    mode: int | None = None,
) -> int:
    """Write ``chunks`` to ``path`` atomically; return the number of bytes written.

    Internal logic:
    1. create a unique temp file next to ``path`` (unique per call, so concurrent writers of the
       same path never share a temp file);
    2. write every chunk, then fsync when ``durable``;
    3. ``os.replace`` onto ``path``; on any error the temp file is removed (a full disk
       raises :class:`~core.errors.DiskFullError`).

    The file keeps the temp file's owner-only mode (0600) unless ``mode`` is given.
    """
    path = Path(path)
    with disk_full_as_store_full(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = make_temp(path.parent)
    written = 0
    try:
        with disk_full_as_store_full(path.parent), os.fdopen(fd, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
                written += len(chunk)
            fh.flush()
            if mode is not None:
                os.fchmod(fh.fileno(), mode)
            if durable:
                os.fsync(fh.fileno())
            os.replace(tmp_name, path)  # before close: the lock guards the temp name until here
    finally:
        # After a successful replace the temp name no longer exists.
        Path(tmp_name).unlink(missing_ok=True)
    return written


def atomic_write_bytes(path: str | Path, data: bytes, *, durable: bool = True) -> None:
    atomic_write(path, [data], durable=durable)


def atomic_write_text(
    path: str | Path, text: str, *, durable: bool = True, mode: int = PUBLIC_MODE
) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically, readable by all (see :func:`atomic_write`).

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "sub" / "a.txt"
    >>> atomic_write_text(p, "hé\\n"); p.read_text(), oct(p.stat().st_mode & 0o777)
    ('hé\\n', '0o644')
    """
    atomic_write(path, [text.encode()], durable=durable, mode=mode)


def atomic_write_json(
    path: str | Path,
    data: object,
    *,
    default: Callable[[Any], Any] | None = None,
    durable: bool = True,
) -> None:
    """``data`` as indented, key-sorted JSON plus a newline, written atomically; ``default``
    as in :func:`json.dumps`."""
    text = json.dumps(data, indent=2, sort_keys=True, default=default) + "\n"
    atomic_write_text(path, text, durable=durable)


@contextmanager
def disk_full_as_store_full(where: object, needed_bytes: int = 0) -> Iterator[None]:
    """Turn the OS's "no space left" into :class:`~core.errors.DiskFullError` (a
    ``StoreFullError``: 507 ``store_full``), so a full disk is never a 500."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(where, needed_bytes) from exc
        raise


def make_temp(directory: Path) -> tuple[int, str]:
    """A new unique ``.tmp-*`` file in ``directory``, open and locked: ``(fd, path)``.

    Keep the fd open until the file is renamed or removed; closing it releases the lock.
    """
    fd, tmp_name = tempfile.mkstemp(prefix=TMP_PREFIX, dir=directory)
    fcntl.flock(fd, fcntl.LOCK_EX)  # new file: nobody else can hold it, never blocks
    return fd, tmp_name


def sweep_temp_files(root: Path) -> int:
    """Remove leftover temp files (from a crash) under ``root``; return how many.

    Files still locked by a live writer (see :func:`make_temp`) and directories are kept.
    """
    removed = 0
    if root.exists():
        for tmp in root.rglob(f"{TMP_PREFIX}*"):
            try:
                fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:  # renamed meanwhile, a symlink, or unreadable: not ours to remove
                continue
            try:
                if not os.path.isfile(tmp):
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a write in progress
                tmp.unlink(missing_ok=True)
                removed += 1
            finally:
                os.close(fd)
    return removed
