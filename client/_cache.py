"""The device-side cache: verified blocks shared by every model, plus assembled model dirs.

On disk (``cache_dir``)::

    store/blocks/sha256/<ab>/<block_id>   content-addressed blocks (core BlockStore)
    store/manifests/<model_id>.json       manifests of the models fetched on this device
    models/<model_id>/                    byte-identical HF files, rebuilt from the blocks
    models/<model_id>/.trimcache.json     {"manifest_id": ...}: which manifest the dir holds
    locks/<model_id>.lock                 one fetch of a model at a time (across processes)

Invariants: a block file exists only if its bytes hash to its name (``put_stream`` verifies
before the atomic rename), so an interrupted fetch leaves only good blocks and the next fetch
resumes. A model dir appears under its final name only when complete: it is assembled in a
temporary sibling and renamed into place. Blocks are shared between models by content, so a second
model that shares tensors with a cached one only downloads its own blocks.

Disk use: a cached model takes its blocks under ``store/`` *and* its rebuilt files under
``models/`` (a second copy of the same bytes, until the data path serves files from the blocks).
:meth:`DeviceCache.disk_usage` counts both as the filesystem does: allocated bytes
(``st_blocks * 512``) of every regular file, a hard-linked inode once.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock

from core.blocks import assemble
from core.errors import StoreFullError
from core.manifest import ModelManifest, check_model_id
from core.store import BlockStore

from ._errors import DiskFullError, ModelNotFoundError

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

    ``blocks_bytes`` counts every block of the model present in ``store/``, also those it shares
    with other cached models; ``own_blocks_bytes`` only those no other cached model uses (what
    ``cache rm`` frees besides the files).
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

    ``store_bytes``: blocks, manifests and quarantine under ``store/``; ``models_bytes``: rebuilt
    files under ``models/``; ``other_bytes``: locks and anything else under the cache dir.
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
    """Blocks, manifests and assembled models under one directory.

    Args:
        root: the cache directory (created if missing).
        durable: fsync every block and file (off by default: renames are still atomic, and a
            block damaged by a power cut is caught by the file sha256 check at assembly).
    """

    def __init__(self, root: str | Path, *, durable: bool = False) -> None:
        self.root = Path(root).expanduser()
        self.durable = durable
        self.store = BlockStore(self.root / "store", durable=durable)
        self.models_dir = self.root / "models"
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self._locks_dir = self.root / "locks"
        self._locks_dir.mkdir(parents=True, exist_ok=True)

    def model_dir(self, model_id: str) -> Path:
        return self.models_dir / check_model_id(model_id)

    @contextmanager
    def lock(self, model_id: str) -> Iterator[None]:
        """Hold the per-model lock (one fetch of a model at a time, across processes)."""
        with FileLock(str(self._locks_dir / f"{check_model_id(model_id)}.lock")):
            yield

    def is_assembled(self, manifest: ModelManifest) -> bool:
        marker = self.model_dir(manifest.model_id) / MARKER
        try:
            data = json.loads(marker.read_text())
        except (OSError, ValueError):
            return False
        return isinstance(data, dict) and data.get("manifest_id") == manifest.manifest_id

    def assemble(self, manifest: ModelManifest) -> Path:
        """Rebuild the model's files into ``models/<model_id>/`` atomically; return the dir.

        Raises:
            BlockNotFoundError: a block is missing (core).
            DigestMismatchError: a rebuilt file is wrong; the bad block was quarantined.
            DiskFullError: no space left (nothing half-written stays under the final name).
        """
        final = self.model_dir(manifest.model_id)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{manifest.model_id}-", dir=self.models_dir))
        try:
            assemble(manifest, self.store, tmp, durable=self.durable)
            (tmp / MARKER).write_text(json.dumps({"manifest_id": manifest.manifest_id}))
            self._swap_into_place(tmp, final)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if exc.errno == errno.ENOSPC:
                message = f"no space left to assemble {manifest.model_id}: {exc}"
                raise DiskFullError(message) from exc
            raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def _swap_into_place(self, tmp: Path, final: Path) -> None:
        trash: Path | None = None
        if final.exists():
            trash = Path(tempfile.mkdtemp(prefix=".tmp-old-", dir=self.models_dir))
            os.replace(final, trash / "old")
        os.replace(tmp, final)
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

    def verify_present(self, manifest: ModelManifest) -> list[str]:
        """Re-hash the blocks of ``manifest`` already present; quarantine and return bad ones."""
        bad: list[str] = []
        for block_id in manifest.block_sizes():
            if self.store.has(block_id) and not self.store.verify(block_id):
                bad.append(block_id)
        return bad

    def list_models(self) -> list[CachedModel]:
        """Every model with a manifest in the cache, sorted by model id."""
        out: list[CachedModel] = []
        for manifest in self.store.manifests():
            sizes = manifest.block_sizes()
            present = sum(n for b, n in sizes.items() if self.store.has(b))
            out.append(
                CachedModel(
                    model_id=manifest.model_id,
                    repo_id=manifest.repo_id,
                    revision=manifest.revision,
                    total_bytes=manifest.total_bytes,
                    present_bytes=present,
                    unique_bytes=sum(sizes.values()),
                    assembled=self.is_assembled(manifest),
                    path=self.model_dir(manifest.model_id),
                )
            )
        return out

    def remove(self, model_id: str) -> int:
        """Drop a model: its dir, its manifest, and blocks no other cached model uses.

        Returns:
            The block bytes freed.

        Raises:
            ModelNotFoundError: the model is not in the device cache.
        """
        try:
            manifest = self.store.get_manifest(model_id)
        except KeyError:
            raise ModelNotFoundError(f"model {model_id} is not in the device cache") from None
        with self.lock(model_id):
            self.store.delete_manifest(model_id)
            shutil.rmtree(self.model_dir(model_id), ignore_errors=True)
            keep: set[str] = set()
            for other in self.store.manifests():
                keep.update(other.block_sizes())
            freed = 0
            for block_id, size in manifest.block_sizes().items():
                if block_id not in keep and self.store.delete(block_id):
                    freed += size
        return freed

    def stats(self) -> dict[str, int]:
        """Block count and their logical size (``physical_bytes``: sum of block sizes)."""
        return {"blocks": len(self.store), "physical_bytes": self.store.used_bytes}

    def disk_usage(self) -> DiskUsage:
        """What the cache really takes on disk: blocks and rebuilt files both, per model too.

        The totals walk the whole cache dir once; a hard-linked inode counts once (first seen
        under ``store/``, then ``models/``, then the rest). Per model, the files of its dir and
        each of its present blocks are stat'ed on their own, so blocks shared by several models
        count for each of them there.
        """
        seen: set[tuple[int, int]] = set()
        store_bytes = _tree_bytes(self.store.root, seen)
        models_bytes = _tree_bytes(self.models_dir, seen)
        other = 0
        for entry in self.root.iterdir():
            if entry in (self.store.root, self.models_dir):
                continue
            other += _tree_bytes(entry, seen) if entry.is_dir() else _files_bytes([entry], seen)
        manifests = self.store.manifests()
        users: dict[str, int] = {}
        for manifest in manifests:
            for block_id in manifest.block_sizes():
                users[block_id] = users.get(block_id, 0) + 1
        by_model: dict[str, ModelDiskUsage] = {}
        for manifest in manifests:
            own = shared = 0
            for block_id in manifest.block_sizes():
                if not self.store.has(block_id):
                    continue
                nbytes = _files_bytes([self.store.path(block_id)], set())
                if users[block_id] == 1:
                    own += nbytes
                else:
                    shared += nbytes
            files = _tree_bytes(self.model_dir(manifest.model_id), set())
            by_model[manifest.model_id] = ModelDiskUsage(files, own + shared, own)
        return DiskUsage(store_bytes, models_bytes, other, by_model)
