"""A content-addressed block store on disk, shared by edge nodes, the client cache and the CLI.

On-disk tree under ``root``::

    blocks/sha256/ab/abcdef...      one file per block, named by its sha256 (first 2 hex = fan-out)
    manifests/<model_id>.json       canonical manifest JSON of each model the store knows
    quarantine/<block_id>.<n>       blocks whose bytes stopped matching their id (kept to inspect)

Invariants:

- a block file's name is the sha256 of its bytes when written: every write hashes what it
  writes and refuses a mismatch (:class:`DigestMismatchError`), and writes are atomic
  (:mod:`core.fsutil`), so a crash leaves at most a ``.tmp-*`` file, swept on open;
- block ids are validated before any path is built (no path traversal);
- with ``durable``, every write is on disk when it returns, except inside
  :meth:`BlockStore.one_sync`: there block writes skip their own fsync and one ``syncfs`` of the
  store's filesystem at the end makes them all durable at once (an edge node's plan apply);
- ``capacity_bytes`` (if set) bounds the sum of block sizes; a write that would pass it raises
  :class:`StoreFullError` and stores nothing;
- bytes that rot on disk after the write are caught by :meth:`BlockStore.verify` /
  :meth:`BlockStore.read` with ``verify=True``: the block is moved to ``quarantine/`` and the
  caller sees :class:`BlockNotFoundError` (so it refetches), never the bad bytes.

The in-memory index (id -> size) is rebuilt from the directory tree on open; it is guarded by a
lock, so one store can be shared by the threads of a web server.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from core.digest import CHUNK_BYTES, BlockId, check_block_id, is_block_id
from core.errors import (
    BlockLengthConflictError,
    BlockNotFoundError,
    DigestMismatchError,
    StoreFullError,
)
from core.fsutil import atomic_write_bytes, disk_full_as_store_full, make_temp, sweep_temp_files
from core.manifest import ModelManifest, check_model_id


class BlockStore:
    """Content-addressed blocks and manifests under one directory.

    Args:
        root: the store directory (created if missing).
        capacity_bytes: bound on the total size of blocks, or None for unbounded.
        durable: fsync each write (turn off only for throwaway stores).

    >>> import tempfile
    >>> store = BlockStore(tempfile.mkdtemp())
    >>> bid = store.put(b"hello")
    >>> store.read(bid), store.used_bytes
    (b'hello', 5)
    """

    def __init__(
        self,
        root: str | Path,
        *,
        capacity_bytes: int | None = None,
        durable: bool = True,
    ) -> None:
        self.root = Path(root)
        self.capacity_bytes = capacity_bytes
        self.durable = durable
        self._blocks_dir = self.root / "blocks" / "sha256"
        self._manifests_dir = self.root / "manifests"
        self._quarantine_dir = self.root / "quarantine"
        self._tmp_dir = self.root / "tmp"
        for d in (self._blocks_dir, self._manifests_dir, self._tmp_dir):
            d.mkdir(parents=True, exist_ok=True)
        sweep_temp_files(self.root)
        self._lock = threading.Lock()
        self._sizes: dict[BlockId, int] = {}
        # fspath() of stored blocks: a server opens the same block files on every request.
        self._fspaths: dict[BlockId, str] = {}
        # Blocks reserved in the index whose file is still being written: set when done, so
        # a second writer or a reader of the same block waits instead of racing the rename.
        self._writing: dict[BlockId, threading.Event] = {}
        self._used = 0
        self._batches = 0  # open one_sync() scopes: block writes skip their own fsync meanwhile
        self._generation = 0  # bumped on every change of the index (see generation)
        self._reload_index()

    # -- index -----------------------------------------------------------------------------
    def _reload_index(self) -> None:
        sizes: dict[BlockId, int] = {}
        for fan in self._blocks_dir.iterdir():
            if not fan.is_dir():
                continue
            for entry in os.scandir(fan):
                if is_block_id(entry.name) and entry.name[:2] == fan.name:
                    sizes[BlockId(entry.name)] = entry.stat().st_size
        with self._lock:
            self._sizes = sizes
            self._fspaths = {}
            self._used = sum(sizes.values())
            self._generation += 1

    def _checked(self, block_id: str) -> BlockId:
        """``block_id`` validated: an id in the index is one already (no regex per call)."""
        try:
            if block_id in self._sizes:
                return BlockId(block_id)
        except TypeError:  # unhashable: not an id
            pass
        return check_block_id(block_id)

    def path(self, block_id: str) -> Path:
        """Where a block lives (validates the id first)."""
        bid = check_block_id(block_id)
        return self._blocks_dir / bid[:2] / bid

    def fspath(self, block_id: str) -> str:
        """:meth:`path` as a string; cached while the block is stored (servers ask per request)."""
        bid = self._checked(block_id)
        found = self._fspaths.get(bid)
        if found is None:
            found = os.fspath(self.path(bid))
            if bid in self._sizes:
                self._fspaths[bid] = found
        return found

    def has(self, block_id: str) -> bool:
        return self._checked(block_id) in self._sizes

    def size(self, block_id: str) -> int:
        try:
            return self._sizes[block_id]  # type: ignore[index]
        except (KeyError, TypeError):
            bid = check_block_id(block_id)
            raise BlockNotFoundError(bid, self.root) from None

    def ids(self) -> list[BlockId]:
        with self._lock:
            return list(self._sizes)

    def __len__(self) -> int:
        return len(self._sizes)

    @property
    def generation(self) -> int:
        """A counter that changes whenever a block enters or leaves the index (cache key)."""
        return self._generation

    @property
    def used_bytes(self) -> int:
        return self._used

    def free_bytes(self) -> int | None:
        return None if self.capacity_bytes is None else self.capacity_bytes - self._used

    # -- writes ----------------------------------------------------------------------------
    def put(self, data: bytes | memoryview, block_id: str | None = None) -> BlockId:
        """Store ``data``; if ``block_id`` is given the bytes must hash to it. Returns the id."""
        actual = BlockId(hashlib.sha256(data).hexdigest())
        if block_id is not None and check_block_id(block_id) != actual:
            raise DigestMismatchError(f"block {block_id}", block_id, actual)
        self._put_hashed(bytes(data), actual)
        return actual

    def _put_hashed(self, data: bytes, block_id: BlockId) -> None:
        """:meth:`put` for a caller in core that has just hashed this immutable ``data``."""
        if not self._reserve(block_id, len(data)):
            return
        try:
            durable = self.durable and not self._batches
            atomic_write_bytes(self.path(block_id), data, durable=durable)
        except BaseException:
            self._release(block_id)
            raise
        finally:
            self._written(block_id)

    def put_stream(
        self,
        chunks: Iterable[bytes | memoryview],
        *,
        block_id: str | None = None,
        size: int | None = None,
    ) -> BlockId:
        """Store a block arriving in chunks, hashing as it is written.

        With ``block_id`` the bytes must hash to it, else :class:`DigestMismatchError` and nothing
        is stored. ``size`` (if known) is checked against capacity before any byte is written.
        """
        expected = check_block_id(block_id) if block_id is not None else None
        if expected is not None and self._is_stored(expected):
            for _ in chunks:  # drain so a streaming producer is not left half-read
                pass
            return expected
        if size is not None and self.capacity_bytes is not None:
            if self._used + size > self.capacity_bytes:
                raise StoreFullError(self._used + size, self.capacity_bytes)
        digest = hashlib.sha256()
        written = 0
        with disk_full_as_store_full(self.root, size or 0):
            fd, tmp_name = make_temp(self._tmp_dir)
        try:
            # The temp file stays open (and locked, see core.fsutil) until it is renamed.
            with disk_full_as_store_full(self.root, size or 0), os.fdopen(fd, "wb") as fh:
                for chunk in chunks:
                    digest.update(chunk)
                    fh.write(chunk)
                    written += len(chunk)
                if self.durable and not self._batches:
                    fh.flush()
                    os.fsync(fh.fileno())
                actual = BlockId(digest.hexdigest())
                if expected is not None and actual != expected:
                    raise DigestMismatchError(f"block {expected}", expected, actual)
                if size is not None and written != size:
                    raise DigestMismatchError(f"block {actual} length", str(size), str(written))
                if self._reserve(actual, written):
                    dest = self.path(actual)
                    try:
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        os.replace(tmp_name, dest)
                    except BaseException:
                        self._release(actual)
                        raise
                    finally:
                        self._written(actual)
            return actual
        finally:
            Path(tmp_name).unlink(missing_ok=True)

    @contextmanager
    def one_sync(self) -> Iterator[None]:
        """Block writes inside skip their own fsync; one ``syncfs`` at the end covers them all.

        Scopes nest and may overlap across threads: the sync runs when the last one closes
        (also on an error, so what was written is durable). Without ``durable``: no effect.
        """
        with self._lock:
            self._batches += 1
        try:
            yield
        finally:
            with self._lock:
                self._batches -= 1
                last = self._batches == 0
            if last and self.durable:
                sync_filesystem(self.root)

    def _reserve(self, block_id: BlockId, size: int) -> bool:
        """Claim the write of a new block: False if it is stored (waits for an in-flight write).

        On True the caller writes the file, then calls :meth:`_release` on failure and
        :meth:`_written` in any case.
        """
        while True:
            with self._lock:
                pending = self._writing.get(block_id)
                if pending is None:
                    if block_id in self._sizes:
                        return False
                    if self.capacity_bytes is not None and self._used + size > self.capacity_bytes:
                        raise StoreFullError(self._used + size, self.capacity_bytes)
                    self._sizes[block_id] = size
                    self._used += size
                    self._generation += 1
                    self._writing[block_id] = threading.Event()
                    return True
            pending.wait()  # the other writer may fail: then loop and write it ourselves

    def _written(self, block_id: BlockId) -> None:
        with self._lock:
            pending = self._writing.pop(block_id, None)
        if pending is not None:
            pending.set()

    def _wait_written(self, block_id: BlockId) -> None:
        with self._lock:
            pending = self._writing.get(block_id)
        if pending is not None:
            pending.wait()

    def _is_stored(self, block_id: BlockId) -> bool:
        self._wait_written(block_id)
        return block_id in self._sizes

    def _release(self, block_id: BlockId) -> None:
        with self._lock:
            size = self._sizes.pop(block_id, None)
            self._fspaths.pop(block_id, None)
            if size is not None:
                self._used -= size
                self._generation += 1

    def delete(self, block_id: str) -> bool:
        """Remove a block; returns False if it was not there."""
        bid = check_block_id(block_id)
        self._wait_written(bid)
        with self._lock:
            size = self._sizes.pop(bid, None)
            self._fspaths.pop(bid, None)
            if size is None:
                return False
            self._used -= size
            self._generation += 1
        self.path(bid).unlink(missing_ok=True)
        return True

    # -- reads -----------------------------------------------------------------------------
    def open(self, block_id: str) -> BinaryIO:
        """Open a block for reading (no verification; see :meth:`read_verified_chunks`).

        Unbuffered: servers open a block per request (or hand its fd to ``sendfile``) and read
        it in 1 MiB pieces, so a read buffer would only cost an allocation and a copy.
        """
        bid = self._checked(block_id)
        self._wait_written(bid)
        try:
            return open(self.fspath(bid), "rb", buffering=0)
        except FileNotFoundError:
            self._release(bid)
            raise BlockNotFoundError(bid, self.root) from None

    def read(self, block_id: str, *, verify: bool = True) -> bytes:
        """The block's bytes; with ``verify`` a block that no longer matches is quarantined."""
        with self.open(block_id) as fh:
            data = fh.read()
        if verify and hashlib.sha256(data).hexdigest() != block_id:
            self.quarantine(block_id)
            raise BlockNotFoundError(block_id, f"{self.root} (corrupt copy quarantined)")
        return data

    def iter_range(
        self,
        block_id: str,
        start: int = 0,
        end: int | None = None,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> Iterator[bytes]:
        """Yield bytes ``[start, end)`` of a block in chunks (no verification)."""
        with self.open(block_id) as fh:
            fh.seek(start)
            remaining = (self.size(block_id) if end is None else end) - start
            while remaining > 0:
                chunk = fh.read(min(chunk_bytes, remaining))
                if not chunk:
                    raise BlockNotFoundError(block_id, f"{self.root} (truncated on disk)")
                remaining -= len(chunk)
                yield chunk

    def verify(self, block_id: str) -> bool:
        """Re-hash a block; quarantine it and return False if its bytes no longer match."""
        digest = hashlib.sha256()
        try:
            for chunk in self.iter_range(block_id):
                digest.update(chunk)
        except BlockNotFoundError:
            return False
        if digest.hexdigest() == block_id:
            return True
        self.quarantine(block_id)
        return False

    def quarantine(self, block_id: str) -> None:
        """Move a corrupt block out of the store (kept under quarantine/ for inspection)."""
        bid = check_block_id(block_id)
        self._quarantine_dir.mkdir(parents=True, exist_ok=True)
        self._release(bid)
        src = self.path(bid)
        n = 0
        while (dest := self._quarantine_dir / f"{bid}.{n}").exists():
            n += 1
        try:
            os.replace(src, dest)
        except FileNotFoundError:
            pass

    def scrub(self) -> list[BlockId]:
        """Verify every block; return the ids that were corrupt (now quarantined)."""
        return [bid for bid in self.ids() if not self.verify(bid)]

    # -- manifests -------------------------------------------------------------------------
    def _manifest_path(self, model_id: str) -> Path:
        return self._manifests_dir / f"{check_model_id(model_id)}.json"

    def put_manifest(self, manifest: ModelManifest) -> None:
        """Store ``manifest``; BlockLengthConflictError (409) if it gives a held block (or one
        of its own blocks twice) another length than it has."""
        self.check_manifest(manifest)
        atomic_write_bytes(
            self._manifest_path(manifest.model_id),
            manifest.to_json().encode(),
            durable=self.durable,
        )

    def check_manifest(self, manifest: ModelManifest) -> None:
        """BlockLengthConflictError (409) if ``manifest`` gives a held block (or one of its own
        blocks twice) another length than it has; nothing is written."""
        seen: dict[BlockId, int] = {}
        for entry in manifest.files:
            for ref in entry.blocks:
                known = seen.setdefault(ref.block_id, self._sizes.get(ref.block_id, ref.length))
                if known != ref.length:
                    raise BlockLengthConflictError(
                        f"manifest {manifest.model_id!r} gives block {ref.block_id} "
                        f"{ref.length} bytes ({entry.path}); it has {known}"
                    )

    def get_manifest(self, model_id: str) -> ModelManifest:
        path = self._manifest_path(model_id)
        try:
            return ModelManifest.from_json(path.read_bytes())
        except FileNotFoundError:
            raise KeyError(model_id) from None

    def has_manifest(self, model_id: str) -> bool:
        return self._manifest_path(model_id).exists()

    def delete_manifest(self, model_id: str) -> bool:
        path = self._manifest_path(model_id)
        existed = path.exists()
        path.unlink(missing_ok=True)
        return existed

    def manifests(self) -> list[ModelManifest]:
        """All manifests, sorted by model id."""
        return [
            ModelManifest.from_json(p.read_bytes())
            for p in sorted(self._manifests_dir.glob("*.json"))
        ]

    def missing_blocks(self, manifest: ModelManifest) -> dict[BlockId, int]:
        """Blocks of ``manifest`` this store lacks (id -> size)."""
        return {b: n for b, n in manifest.block_sizes().items() if b not in self._sizes}

    def is_complete(self, manifest: ModelManifest) -> bool:
        return not self.missing_blocks(manifest)


def sync_filesystem(path: Path) -> None:
    """Flush the filesystem holding ``path`` to disk: ``syncfs(2)``, else ``sync(2)``."""
    libc_name = ctypes.util.find_library("c")
    syncfs = getattr(ctypes.CDLL(libc_name, use_errno=True), "syncfs", None) if libc_name else None
    if syncfs is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        if syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)
