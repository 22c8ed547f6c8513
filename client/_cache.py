"""The device-side cache: each model's files, written in place, are the only copy of its blocks.

On disk (``cache_dir``)::

    store/manifests/<model_id>.json       manifests of the models fetched on this device
    models/<model_id>/                    the model's byte-identical HF files (complete)
    models/<model_id>/.trimcache.json     {"manifest_id": ...}: which manifest the dir holds
    models/.partial-<model_id>/           a fetch in progress: preallocated files + .verified
    locks/<model_id>.lock                 one fetch of a model at a time (across processes)

Invariants: blocks are written at their manifest offsets into ``models/.partial-<model_id>/``
and journaled only once their bytes hashed to their id (:mod:`client._files`), so an
interrupted fetch resumes from its verified blocks. The dir is renamed to its final name only
when every block is verified, so nothing half-written is ever under a final name. A sibling model
copies the blocks it shares from the complete files of cached models (``copy_file_range``), so
every file is on disk once and disk use is the bytes of the files asked for.
:meth:`DeviceCache.disk_usage` counts what the filesystem allocated (``st_blocks * 512``) of
every regular file, a hard-linked inode once. :meth:`DeviceCache.verify` re-hashes on demand.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock

from core.digest import BlockId
from core.errors import StoreFullError
from core.manifest import ModelManifest, check_model_id
from core.store import BlockStore

from ._errors import DiskFullError, ModelNotFoundError
from ._files import (
    JOURNAL,
    PARTIAL_PREFIX,
    ModelWriter,
    Place,
    block_index,
    read_journal,
    rehash_files,
)

MARKER = ".trimcache.json"


@dataclass(frozen=True, slots=True)
class CachedModel:
    """One model known to the device cache (``trimcache cache ls`` prints these)."""

    model_id: str
    repo_id: str
    revision: str
    total_bytes: int
    present_bytes: int
    unique_bytes: int
    assembled: bool
    path: Path

    @property
    def complete(self) -> bool:
        return self.present_bytes == self.unique_bytes


@dataclass(frozen=True, slots=True)
class ModelDiskUsage:
    """What one cached model takes on disk (allocated bytes).

    ``files_bytes``: its complete files and a fetch in progress. The files are the only copy
    of the blocks, so ``blocks_bytes`` and ``own_blocks_bytes`` (separate block copies, from
    the layout before files became the store) are 0.
    """

    files_bytes: int
    blocks_bytes: int
    own_blocks_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.files_bytes + self.blocks_bytes


@dataclass(frozen=True, slots=True)
class DiskUsage:
    """The device cache's real disk use: ``total_bytes`` = store + models + other.

    ``store_bytes``: manifests under ``store/``; ``models_bytes``: the model files under
    ``models/`` (complete and partial); ``other_bytes``: locks and anything else.
    """

    store_bytes: int
    models_bytes: int
    other_bytes: int
    by_model: Mapping[str, ModelDiskUsage] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return self.store_bytes + self.models_bytes + self.other_bytes


def _allocated(st: os.stat_result) -> int:
    """Bytes the filesystem allocated for a file (``st_size`` where ``st_blocks`` is unknown)."""
    blocks = getattr(st, "st_blocks", None)
    return st.st_size if blocks is None else blocks * 512


def _tree_bytes(root: Path, seen: set[tuple[int, int]]) -> int:
    """Allocated bytes of the regular files under ``root`` not in ``seen`` (inodes are added)."""
    total = 0
    for dirpath, _, filenames in os.walk(root):
        total += _files_bytes((Path(dirpath) / name for name in filenames), seen)
    return total


def _files_bytes(paths: Iterable[Path], seen: set[tuple[int, int]]) -> int:
    total = 0
    for path in paths:
        try:
            st = path.lstat()
        except FileNotFoundError:  # removed meanwhile (a concurrent fetch or rm)
            continue
        key = (st.st_dev, st.st_ino)
        if not stat.S_ISREG(st.st_mode) or key in seen:
            continue
        seen.add(key)
        total += _allocated(st)
    return total


class DeviceCache:
    """Manifests and model files (the device store) under one directory.

    Args:
        root: the cache directory (created if missing).
        durable: fsync each file once when its model is complete, and each manifest.
    """

    def __init__(self, root: str | Path, *, durable: bool = False) -> None:
        self.root = Path(root).expanduser()
        self.durable = durable
        self.store = BlockStore(self.root / "store", durable=durable)  # manifests only
        self.models_dir = self.root / "models"
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self._locks_dir = self.root / "locks"
        self._locks_dir.mkdir(parents=True, exist_ok=True)

    def model_dir(self, model_id: str) -> Path:
        return self.models_dir / check_model_id(model_id)

    def partial_dir(self, model_id: str) -> Path:
        return self.models_dir / f"{PARTIAL_PREFIX}{check_model_id(model_id)}"

    @contextmanager
    def lock(self, model_id: str) -> Iterator[None]:
        """Hold the per-model lock (one fetch of a model at a time, across processes)."""
        with FileLock(str(self._locks_dir / f"{check_model_id(model_id)}.lock")):
            yield

    def is_assembled(self, manifest: ModelManifest) -> bool:
        """True when ``models/<model_id>/`` holds the complete files of this manifest."""
        marker = self.model_dir(manifest.model_id) / MARKER
        try:
            data = json.loads(marker.read_text())
        except (OSError, ValueError):
            return False
        return isinstance(data, dict) and data.get("manifest_id") == manifest.manifest_id

    def complete_models(self) -> list[tuple[ModelManifest, Path]]:
        """``(manifest, dir)`` of every model whose complete files are in the cache."""
        return [
            (m, self.model_dir(m.model_id)) for m in self.store.manifests() if self.is_assembled(m)
        ]

    def block_index(self) -> dict[BlockId, Place]:
        """The device-side block index: block id -> a place in a complete model's file."""
        return block_index(self.complete_models())

    def writer(self, manifest: ModelManifest) -> ModelWriter:
        """Open (or resume) the partial dir of ``manifest``: preallocated files, its journal.

        Raises:
            DiskFullError: no space for the files.
        """
        return ModelWriter(manifest, self.partial_dir(manifest.model_id), durable=self.durable)

    def publish(self, writer: ModelWriter) -> Path:
        """Finish a writer whose blocks are all verified and rename its dir into place.

        Raises:
            DiskFullError: no space left (nothing half-written stays under the final name).
        """
        manifest = writer.manifest
        assert not writer.missing(), "publish() needs every block verified"
        writer.finish()
        (writer.directory / MARKER).write_text(json.dumps({"manifest_id": manifest.manifest_id}))
        final = self.model_dir(manifest.model_id)
        self._swap_into_place(writer.directory, final)
        return final

    def index_into(
        self, build: Callable[[Path], tuple[ModelManifest, int]]
    ) -> tuple[ModelManifest, int]:
        """Let ``build`` write a model's complete files into a new dir, then publish that dir.

        ``build(dest)`` returns ``(manifest, bytes moved)``; the manifest must describe the
        files it wrote (:func:`client._origin.index_from_origin`).

        Raises:
            DiskFullError: no space left (the dir is removed).
        """
        scratch = Path(tempfile.mkdtemp(prefix=".tmp-index-", dir=self.models_dir))
        try:
            dest = scratch / "files"
            manifest, moved = build(dest)
            if self.durable:
                for path in dest.rglob("*"):
                    if path.is_file():
                        with open(path, "rb") as fh:
                            os.fsync(fh.fileno())
            (dest / MARKER).write_text(json.dumps({"manifest_id": manifest.manifest_id}))
            self._swap_into_place(dest, self.model_dir(manifest.model_id))
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DiskFullError(f"no space left for the device cache: {exc}") from exc
            raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return manifest, moved

    def _swap_into_place(self, tmp: Path, final: Path) -> None:
        trash: Path | None = None
        if final.exists():
            trash = Path(tempfile.mkdtemp(prefix=".tmp-old-", dir=self.models_dir))
            os.replace(final, trash / "old")
        os.replace(tmp, final)
        if self.durable:
            fd = os.open(self.models_dir, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)

    def put_manifest(self, manifest: ModelManifest) -> None:
        try:
            self.store.put_manifest(manifest)
        except StoreFullError as exc:
            raise DiskFullError(str(exc)) from exc
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DiskFullError(f"no space left for manifest: {exc}") from exc
            raise

    def verify(self, model_id: str | None = None) -> dict[str, list[BlockId]]:
        """Re-hash every block of the complete models (or of one): the bad block ids per model.

        A model with bad blocks is moved back to its partial dir with the good blocks
        journaled, so the next fetch re-fetches only the bad ones.

        Raises:
            ModelNotFoundError: ``model_id`` is not in the device cache.
        """
        models = self.complete_models()
        if model_id is not None:
            models = [(m, d) for m, d in models if m.model_id == model_id]
            if not models and not self.store.has_manifest(model_id):
                raise ModelNotFoundError(f"model {model_id} is not in the device cache")
        out: dict[str, list[BlockId]] = {}
        for manifest, directory in models:
            with self.lock(manifest.model_id):
                bad = rehash_files(manifest, directory)
                out[manifest.model_id] = bad
                if bad:
                    self._reopen(manifest, directory, set(bad))
        return out

    def _reopen(self, manifest: ModelManifest, directory: Path, bad: set[BlockId]) -> None:
        good = [b for b in manifest.block_sizes() if b not in bad]
        (directory / MARKER).unlink(missing_ok=True)
        (directory / JOURNAL).write_text("\n".join([manifest.manifest_id, *good]) + "\n")
        partial = self.partial_dir(manifest.model_id)
        shutil.rmtree(partial, ignore_errors=True)
        os.replace(directory, partial)

    def _verified_blocks(self, manifest: ModelManifest) -> set[BlockId]:
        if self.is_assembled(manifest):
            return set(manifest.block_sizes())
        return read_journal(self.partial_dir(manifest.model_id), manifest.manifest_id)

    def list_models(self) -> list[CachedModel]:
        """Every model with a manifest in the cache, sorted by model id."""
        out: list[CachedModel] = []
        for manifest in self.store.manifests():
            sizes = manifest.block_sizes()
            verified = self._verified_blocks(manifest)
            out.append(
                CachedModel(
                    model_id=manifest.model_id,
                    repo_id=manifest.repo_id,
                    revision=manifest.revision,
                    total_bytes=manifest.total_bytes,
                    present_bytes=sum(n for b, n in sizes.items() if b in verified),
                    unique_bytes=sum(sizes.values()),
                    assembled=self.is_assembled(manifest),
                    path=self.model_dir(manifest.model_id),
                )
            )
        return out

    def remove(self, model_id: str) -> int:
        """Drop a model: its files (complete or partial) and its manifest.

        Returns:
            The bytes of its files freed (the file sizes).

        Raises:
            ModelNotFoundError: the model is not in the device cache.
        """
        try:
            manifest = self.store.get_manifest(model_id)
        except KeyError:
            raise ModelNotFoundError(f"model {model_id} is not in the device cache") from None
        with self.lock(model_id):
            present = self.model_dir(model_id).exists() or self.partial_dir(model_id).exists()
            self.store.delete_manifest(model_id)
            shutil.rmtree(self.model_dir(model_id), ignore_errors=True)
            shutil.rmtree(self.partial_dir(model_id), ignore_errors=True)
        return manifest.total_bytes if present else 0

    def stats(self) -> dict[str, int]:
        """Distinct verified blocks of the cached models and their logical size."""
        sizes: dict[BlockId, int] = {}
        for manifest in self.store.manifests():
            verified = self._verified_blocks(manifest)
            sizes.update((b, n) for b, n in manifest.block_sizes().items() if b in verified)
        return {"blocks": len(sizes), "physical_bytes": sum(sizes.values())}

    def disk_usage(self) -> DiskUsage:
        """What the cache really takes on disk: the model files (the only copy), per model too.

        The totals walk the whole cache dir once; a hard-linked inode counts once (first seen
        under ``store/``, then ``models/``, then the rest). Per model: its complete dir plus
        its partial dir.
        """
        seen: set[tuple[int, int]] = set()
        store_bytes = _tree_bytes(self.store.root, seen)
        models_bytes = _tree_bytes(self.models_dir, seen)
        other = 0
        for entry in self.root.iterdir():
            if entry in (self.store.root, self.models_dir):
                continue
            other += _tree_bytes(entry, seen) if entry.is_dir() else _files_bytes([entry], seen)
        by_model: dict[str, ModelDiskUsage] = {}
        for manifest in self.store.manifests():
            own: set[tuple[int, int]] = set()
            files = _tree_bytes(self.model_dir(manifest.model_id), own)
            files += _tree_bytes(self.partial_dir(manifest.model_id), own)
            by_model[manifest.model_id] = ModelDiskUsage(files, 0, 0)
        return DiskUsage(store_bytes, models_bytes, other, by_model)
