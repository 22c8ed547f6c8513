"""The model files *are* the device store: blocks are written in place, at manifest offsets.

A model being fetched lives in ``models/.partial-<model_id>/`` (a stable name, so an interrupted
fetch resumes there): every file of the manifest is preallocated to its final size, the
safetensors header comes from the manifest, and each block is written with ``os.pwrite`` at its
manifest offset. ``.verified`` is the journal of that dir: its first line is the manifest id,
then one block id per line, appended only after the block's bytes hashed to its id. When every
block is verified the dir is renamed to ``models/<model_id>/`` (see :class:`client._cache`), so
nothing half-written ever appears under a final name.

The device-side block index (:func:`block_index`) maps a block id to a place in a complete
model's file. A sibling model takes the blocks it shares from there with ``os.copy_file_range``
(a reflink where the filesystem has one), never over the network. A block repeated inside one
model is received once and copied to its other places.

Verified blocks plus the manifest's header imply each file's sha256, so files are not re-hashed
after a fetch; :func:`rehash_files` does it on demand (``trimcache cache verify``).
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from core.digest import CHUNK_BYTES, BlockId, is_block_id
from core.manifest import ModelManifest

from ._errors import DiskFullError

JOURNAL = ".verified"
PARTIAL_PREFIX = ".partial-"


@dataclass(frozen=True, slots=True)
class Place:
    """Where a block's bytes sit in a model's files: ``length`` bytes at ``offset`` of ``path``."""

    path: Path
    offset: int
    length: int


def places(manifest: ModelManifest, root: Path) -> dict[BlockId, list[Place]]:
    """Every place of every block of ``manifest`` under ``root``, in file order."""
    out: dict[BlockId, list[Place]] = {}
    for entry in manifest.files:
        for block in entry.blocks:
            out.setdefault(block.block_id, []).append(
                Place(root / entry.path, block.offset, block.length)
            )
    return out


def read_journal(directory: Path, manifest_id: str) -> set[BlockId]:
    """Block ids recorded as verified in ``directory`` for this manifest (empty if another)."""
    try:
        lines = (directory / JOURNAL).read_text().split("\n")
    except (OSError, UnicodeDecodeError):
        return set()
    if not lines or lines[0] != manifest_id:
        return set()
    return {BlockId(line) for line in lines[1:] if is_block_id(line)}


def block_index(models: Iterable[tuple[ModelManifest, Path]]) -> dict[BlockId, Place]:
    """The device-side block index: a block id -> one place of it in a complete model's file."""
    index: dict[BlockId, Place] = {}
    for manifest, root in models:
        for block_id, where in places(manifest, root).items():
            index.setdefault(block_id, where[0])
    return index


def disk_full(exc: OSError, what: str) -> DiskFullError:
    return DiskFullError(f"no space left on the device cache ({what}): {exc}")


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _copy_range(src: int, src_offset: int, dst: int, dst_offset: int, length: int) -> None:
    """``length`` bytes from ``src`` to ``dst``: ``copy_file_range`` (in kernel), else pread."""
    kernel_copy = getattr(os, "copy_file_range", None)  # Linux only
    while length > 0:
        n = 0
        if kernel_copy is not None:
            try:
                n = kernel_copy(src, dst, length, src_offset, dst_offset)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                kernel_copy = None
        if n == 0:  # no kernel copy here (or EOF): read and write through user space
            data = os.pread(src, min(length, CHUNK_BYTES), src_offset)
            if not data:
                raise OSError(errno.EIO, "source file ended early")
            _pwrite_all(dst, data, dst_offset)
            n = len(data)
        src_offset += n
        dst_offset += n
        length -= n


def hash_place(place: Place, fd: int | None = None) -> str:
    """sha256 hex of the bytes at ``place`` (read in 1 MiB pieces)."""
    own = fd is None
    handle = os.open(place.path, os.O_RDONLY) if fd is None else fd
    try:
        digest = hashlib.sha256()
        pos, end = place.offset, place.offset + place.length
        while pos < end:
            data = os.pread(handle, min(CHUNK_BYTES, end - pos), pos)
            if not data:
                break
            digest.update(data)
            pos += len(data)
        return digest.hexdigest()
    finally:
        if own:
            os.close(handle)


class ModelWriter:
    """The files of one model being written in place (``models/.partial-<id>/``).

    Thread-safe for :meth:`write` (``pwrite`` at distinct offsets) and :meth:`mark_verified`.
    A resumed dir keeps the blocks its journal lists, after re-hashing them (a crash may have
    lost bytes the journal already recorded).

    Args:
        manifest: the model to write.
        directory: its partial dir.
        durable: fsync each file once, when finished.

    Raises:
        DiskFullError: the files cannot be preallocated.
    """

    def __init__(self, manifest: ModelManifest, directory: Path, *, durable: bool) -> None:
        self.manifest = manifest
        self.directory = directory
        self.durable = durable
        self._places = places(manifest, directory)
        self._lock = threading.Lock()
        known = read_journal(directory, manifest.manifest_id)
        if not known and directory.exists():
            shutil.rmtree(directory)  # another manifest's leftovers, or nothing verified yet
        self._fds: dict[Path, int] = {}
        try:
            directory.mkdir(parents=True, exist_ok=True)
            for entry in manifest.files:
                path = directory / entry.path
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
                self._fds[path] = fd
                if os.fstat(fd).st_size != entry.size:
                    os.ftruncate(fd, entry.size)
                if entry.size and hasattr(os, "posix_fallocate"):  # not on macOS
                    os.posix_fallocate(fd, 0, entry.size)
                if entry.header:
                    _pwrite_all(fd, entry.header, 0)
            self.verified = {b for b in known if b in self._places and self._still_good(b)}
            with open(directory / JOURNAL, "w") as fh:
                fh.write("\n".join([manifest.manifest_id, *sorted(self.verified)]) + "\n")
            self._journal: TextIO | None = open(directory / JOURNAL, "a")  # noqa: SIM115
        except OSError as exc:
            self.close()
            if exc.errno == errno.ENOSPC:
                shutil.rmtree(directory, ignore_errors=True)
                raise disk_full(exc, f"preallocating {manifest.model_id}") from exc
            raise

    def _still_good(self, block_id: BlockId) -> bool:
        first = self._places[block_id][0]
        return hash_place(first, self._fds[first.path]) == block_id

    def first_place(self, block_id: BlockId) -> Place:
        return self._places[block_id][0]

    def missing(self) -> dict[BlockId, int]:
        """Blocks not verified yet (id -> size), in file order."""
        return {b: p[0].length for b, p in self._places.items() if b not in self.verified}

    def write(self, block_id: BlockId, pos: int, data: bytes | memoryview) -> None:
        """Write ``data`` at byte ``pos`` of the block's first place."""
        place = self._places[block_id][0]
        try:
            _pwrite_all(self._fds[place.path], data, place.offset + pos)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise disk_full(exc, f"writing {place.path.name}") from exc
            raise

    def mark_verified(self, block_id: BlockId) -> None:
        with self._lock:
            if block_id in self.verified:
                return
            self.verified.add(block_id)
            assert self._journal is not None, "writer is closed"
            self._journal.write(block_id + "\n")
            self._journal.flush()

    def copy_in(self, index: Mapping[BlockId, Place]) -> dict[BlockId, int]:
        """Copy the missing blocks found in ``index`` (other models' files); return them."""
        copied: dict[BlockId, int] = {}
        for block_id, size in self.missing().items():
            source = index.get(block_id)
            if source is None:
                continue
            dest = self._places[block_id][0]
            try:
                src = os.open(source.path, os.O_RDONLY)
            except OSError:
                continue  # removed meanwhile: the network has it
            try:
                _copy_range(src, source.offset, self._fds[dest.path], dest.offset, size)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise disk_full(exc, f"copying into {dest.path.name}") from exc
                continue
            finally:
                os.close(src)
            self.mark_verified(block_id)
            copied[block_id] = size
        return copied

    def finish(self) -> None:
        """Copy every block to its other places in the model, fsync (durable), close."""
        try:
            for where in self._places.values():
                first = where[0]
                for other in where[1:]:
                    _copy_range(
                        self._fds[first.path],
                        first.offset,
                        self._fds[other.path],
                        other.offset,
                        first.length,
                    )
            if self.durable:
                for fd in self._fds.values():
                    os.fsync(fd)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise disk_full(exc, f"finishing {self.manifest.model_id}") from exc
            raise
        finally:
            self.close()
        (self.directory / JOURNAL).unlink(missing_ok=True)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        journal: TextIO | None = getattr(self, "_journal", None)
        if journal is not None:
            journal.close()
            self._journal = None


def rehash_files(manifest: ModelManifest, root: Path) -> list[BlockId]:
    """Re-hash every block of a model's files under ``root``: the ids whose bytes are wrong.

    A header that no longer matches the manifest counts as its file's first block being bad.
    """
    bad: list[BlockId] = []
    for entry in manifest.files:
        path = root / entry.path
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            bad.extend(b.block_id for b in entry.blocks)
            continue
        try:
            if entry.header and os.pread(fd, len(entry.header), 0) != entry.header:
                bad.extend(b.block_id for b in entry.blocks[:1])
            for block in entry.blocks:
                place = Place(path, block.offset, block.length)
                if block.block_id not in bad and hash_place(place, fd) != block.block_id:
                    bad.append(block.block_id)
        finally:
            os.close(fd)
    return bad


def iter_partial_dirs(models_dir: Path) -> Iterator[tuple[str, Path]]:
    """``(model_id, dir)`` of every partial model dir under ``models_dir``."""
    if not models_dir.exists():
        return
    for entry in sorted(models_dir.iterdir()):
        if entry.name.startswith(PARTIAL_PREFIX) and entry.is_dir():
            yield entry.name.removeprefix(PARTIAL_PREFIX), entry
