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
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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
        return {"blocks": len(self.store), "physical_bytes": self.store.used_bytes}
