"""The edge node's state: its block store, the manifests it holds, block integrity and repair.

On-disk tree under ``settings.data_dir`` (the :class:`core.store.BlockStore` layout plus one file)::

    blocks/sha256/ab/abcdef...   content-addressed blocks (atomic writes, capacity enforced)
    manifests/<model_id>.json    manifests of the models the last plan placed here
    quarantine/<block_id>.<n>    blocks caught with bytes that no longer match their id
    tmp/                         in-flight writes (swept on open)
    plan.json                    last applied plan: version, peers, origin_url (for repairs)
    tainted.json                 blocks caught changed mid-response (edge_node.tainted)

Integrity (a flipped byte on disk is never served, and the block comes back):

- A block is *trusted* while its file's ``(inode, size, mtime_ns, ctime_ns)`` equals the signature
  recorded when the node last hashed it (on write, by the scrub, or on a read). A write to the
  file changes that signature (up to the filesystem's timestamp granularity, a few ms).
- Before a response starts, every block it covers that is not trusted is re-hashed; a mismatch
  quarantines it and the request gets 404 ``block_not_found`` before any byte is sent.
- Blocks of at most ``EDGE_VERIFY_ON_READ_MAX_BYTES`` (64 KiB) are hashed on every read before
  their bytes leave. Larger trusted blocks go out with ``sendfile`` unhashed (hashing on the
  serving path costs more CPU than the transfer; see :mod:`edge_node.zerocopy`), so silent rot
  (bytes changed, signature not) in them is left to the scrub (at startup and every
  ``EDGE_SCRUB_INTERVAL_S``) unless ``EDGE_STREAM_VERIFY`` is on: then whole blocks stream
  hashed with the last chunk held back until the digest matches, so a complete wrong block is
  never delivered (the response is cut short instead).
- A corrupt block is quarantined and queued for repair: refetched from the peers of the last plan
  or from the origin (where the held manifests say it lives).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.blocks import iter_file_range
from core.digest import CHUNK_BYTES, BlockId, check_block_id
from core.errors import BlockNotFoundError, InvalidBlockIdError, ManifestError
from core.fsutil import atomic_write_bytes
from core.manifest import FileEntry, ModelManifest, check_model_id
from core.store import BlockStore
from edge_node.errors import ModelNotFoundError
from edge_node.metrics import Counters
from edge_node.settings import Settings
from edge_node.tainted import TAINTED_FILE, TaintLog
from edge_node.zerocopy import FileSlice, Piece

logger = logging.getLogger(__name__)

#: Read size when serving: 1 MiB reads reach ~1.5 GB/s on loopback (64 KiB: ~0.3 GB/s).
SERVE_CHUNK_BYTES = CHUNK_BYTES
_PLAN_FILE = "plan.json"

_Signature = tuple[int, int, int, int]


class BlockCorruptError(BlockNotFoundError):
    """A block failed verification while being served (it is now quarantined)."""

    def __init__(self, block_id: str) -> None:
        super().__init__(block_id, "store (corrupt copy quarantined)")


@dataclass
class PlanRecord:
    """What repairs need from the last plan: who else holds which block, and the origin."""

    version: int | None = None
    peers: dict[str, list[str]] = field(default_factory=dict)
    origin_url: str | None = None

    def to_json(self) -> str:
        return json.dumps(
            {"version": self.version, "peers": self.peers, "origin_url": self.origin_url},
            sort_keys=True,
        )


class EdgeNode:
    """Block store + held manifests + integrity checks of one edge node (thread-safe)."""

    def __init__(self, settings: Settings, *, counters: Counters | None = None) -> None:
        self.settings = settings
        self.node_id = settings.node_id
        self.counters = counters or Counters()
        self.store = BlockStore(
            settings.data_dir,
            capacity_bytes=settings.capacity_bytes,
            durable=settings.durable,
        )
        self._lock = threading.Lock()
        self._trusted: dict[BlockId, _Signature] = {}
        self._manifests: dict[str, ModelManifest] = {}
        self._manifests_version = 0
        # complete_models() of (store generation, manifests version): every Hub request asks.
        self._complete: tuple[tuple[int, int], list[ModelManifest]] | None = None
        for path in sorted((settings.data_dir / "manifests").glob("*.json")):
            try:
                manifest = ModelManifest.from_json(path.read_bytes())
            except ManifestError as exc:
                logger.warning("ignoring unreadable manifest path=%s: %s", path, exc)
                continue
            self._manifests[manifest.model_id] = manifest
        self.plan_record = self._load_plan_record()
        #: Blocks caught changed or corrupt: Range resumes over them get the whole file.
        self.tainted = TaintLog(settings.data_dir / TAINTED_FILE, durable=settings.durable)
        #: Serialises plan applies, model deletes and repairs (so evictions never race them).
        self.plan_lock = threading.Lock()
        self._repairs: queue.Queue[BlockId | None] = queue.Queue()
        self._repairing: set[BlockId] = set()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        #: Set by the app: fetches one block from peers/origin (see edge_node.ingest).
        self.repair_fetch: Callable[[BlockId], bool] | None = None
        #: Set by the app: more sections of :meth:`stats` (e.g. ``radio``), name -> snapshot.
        self.extra_stats: dict[str, Callable[[], dict[str, Any]]] = {}
        #: Set by the app (a radio with a broadcast window): the heartbeat's ``broadcast``.
        self.broadcast_report: Callable[[], list[dict[str, Any]]] | None = None

    # -- background work -----------------------------------------------------------------
    def start(self) -> None:
        """Start the repair worker and (if configured) the startup scrub."""
        self._spawn("repair", self._repair_loop)
        if self.settings.scrub_on_start or self.settings.scrub_interval_s:
            self._spawn("scrub", self._scrub_loop)

    def _scrub_loop(self) -> None:
        if self.settings.scrub_on_start:
            self.scrub()
        interval = self.settings.scrub_interval_s
        while interval and not self._stop.wait(interval):
            self.scrub(full=True)

    def stop(self) -> None:
        self._stop.set()
        self._repairs.put(None)
        for thread in self._threads:
            thread.join(timeout=5)

    def _spawn(self, name: str, target: Callable[[], object]) -> None:
        thread = threading.Thread(target=target, name=f"edge-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def scrub(self, *, full: bool = False) -> list[BlockId]:
        """Hash every block not yet trusted (``full``: every block); bad ones are quarantined
        and queued for repair. Returns the bad ids."""
        bad: list[BlockId] = []
        for block_id in self.store.ids():
            if self._stop.is_set():
                break
            if not full and self.is_trusted(block_id):
                continue
            try:
                self.verify(block_id)
            except BlockNotFoundError:
                bad.append(block_id)
        if bad:
            logger.warning("scrub node_id=%s corrupt=%d", self.node_id, len(bad))
        return bad

    # -- manifests -----------------------------------------------------------------------
    def manifests(self) -> list[ModelManifest]:
        with self._lock:
            return [self._manifests[k] for k in sorted(self._manifests)]

    def manifest(self, model_id: str) -> ModelManifest:
        check_model_id(model_id)
        with self._lock:
            found = self._manifests.get(model_id)
        if found is None:
            raise ModelNotFoundError(model_id, "is not held by this node")
        return found

    def put_manifest(self, manifest: ModelManifest) -> None:
        self.store.put_manifest(manifest)
        with self._lock:
            self._manifests[manifest.model_id] = manifest
            self._manifests_version += 1

    def drop_manifest(self, model_id: str) -> None:
        self.store.delete_manifest(model_id)
        with self._lock:
            self._manifests.pop(model_id, None)
            self._manifests_version += 1

    def complete_models(self) -> list[ModelManifest]:
        """Held models all of whose blocks are in the store (cached until either changes)."""
        with self._lock:
            key = (self.store.generation, self._manifests_version)
            cached = self._complete
        if cached is not None and cached[0] == key:
            return list(cached[1])
        complete = [m for m in self.manifests() if self.store.is_complete(m)]
        with self._lock:
            self._complete = (key, complete)
        return list(complete)

    def referenced_blocks(self, manifests: Iterable[ModelManifest] | None = None) -> set[BlockId]:
        held = self.manifests() if manifests is None else manifests
        return {b for m in held for b in m.block_sizes()}

    def save_plan_record(self, record: PlanRecord) -> None:
        atomic_write_bytes(
            self.settings.data_dir / _PLAN_FILE,
            record.to_json().encode(),
            durable=self.settings.durable,
        )
        self.plan_record = record

    def _load_plan_record(self) -> PlanRecord:
        path = self.settings.data_dir / _PLAN_FILE
        try:
            data = json.loads(path.read_bytes())
            return PlanRecord(
                version=data.get("version"),
                peers={k: list(v) for k, v in data.get("peers", {}).items()},
                origin_url=data.get("origin_url"),
            )
        except FileNotFoundError:
            return PlanRecord()
        except (ValueError, TypeError, AttributeError) as exc:
            logger.warning("ignoring unreadable %s: %s", path, exc)
            return PlanRecord()

    def delete_model(self, model_id: str) -> int:
        """Drop a model and the blocks no other held model uses; return bytes evicted."""
        with self.plan_lock:
            self.manifest(model_id)
            self.drop_manifest(model_id)
            keep = self.referenced_blocks()
            return self.evict_except(keep)

    def evict_except(self, keep: set[BlockId]) -> int:
        """Delete every stored block not in ``keep``; return the bytes freed."""
        freed = 0
        for block_id in self.store.ids():
            if block_id in keep:
                continue
            size = self.store.size(block_id) if self.store.has(block_id) else 0
            if self.store.delete(block_id):
                freed += size
                with self._lock:
                    self._trusted.pop(block_id, None)
        if freed:
            logger.info("evicted node_id=%s bytes=%d", self.node_id, freed)
        return freed

    # -- integrity -----------------------------------------------------------------------
    def _signature(self, block_id: BlockId) -> _Signature | None:
        try:
            st = os.stat(self.store.fspath(block_id))
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def _open_trusted(self, block_id: BlockId, lo: int, hi: int) -> FileSlice | None:
        """``[lo, hi)`` of the block as a slice if its open file still has the signature it
        had when last hashed (one open and one fstat), else None."""
        fh = self.store.open(block_id)
        st = os.fstat(fh.fileno())
        sig = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        with self._lock:
            trusted = self._trusted.get(block_id) == sig
        if not trusted:
            fh.close()
            return None
        return FileSlice(fh, lo, hi - lo, signature=sig)

    def is_trusted(self, block_id: BlockId) -> bool:
        with self._lock:
            recorded = self._trusted.get(block_id)
        return recorded is not None and recorded == self._signature(block_id)

    def mark_trusted(self, block_id: BlockId, signature: _Signature | None = None) -> None:
        """Record that ``block_id``'s file was hashed and matched (called after verified writes)."""
        sig = signature or self._signature(block_id)
        if sig is not None:
            with self._lock:
                self._trusted[block_id] = sig

    def verify(self, block_id: str) -> None:
        """Hash the stored block now; on a mismatch quarantine it and raise BlockNotFoundError."""
        bid = check_block_id(block_id)
        before = self._signature(bid)
        if before is None:
            if self.store.delete(bid):  # indexed but its file vanished: drop it, fetch it again
                logger.error("block file vanished node_id=%s block_id=%s", self.node_id, bid)
                self.schedule_repair(bid)
            raise BlockNotFoundError(bid, f"node {self.node_id}")
        if not self.store.has(bid):
            raise BlockNotFoundError(bid, f"node {self.node_id}")
        digest = hashlib.sha256()
        for chunk in self.store.iter_range(bid):
            digest.update(chunk)
        if digest.hexdigest() != bid:
            self.on_corrupt(bid)
            raise BlockCorruptError(bid)
        self.mark_trusted(bid, before)

    def ensure_servable(self, block_ids: Sequence[str]) -> list[tuple[BlockId, int]]:
        """Validate ids, check presence, re-hash untrusted blocks; return ``(id, size)`` pairs.

        Raises InvalidBlockIdError (400) for any bad id first, then BlockNotFoundError (404), all
        before any byte of a response is sent.
        """
        ids = [check_block_id(b) for b in block_ids]
        out: list[tuple[BlockId, int]] = []
        for bid in ids:
            try:
                size = self.store.size(bid)
            except BlockNotFoundError:
                raise BlockNotFoundError(bid, f"node {self.node_id}") from None
            if not self.is_trusted(bid):
                self.verify(bid)
            out.append((bid, size))
        return out

    def trusted_blocks(self, block_ids: Sequence[object]) -> list[tuple[BlockId, int]] | None:
        """``(id, size)`` of each block if every one is stored and trusted (one ``stat`` each,
        no hashing, no error raised), else None: then :meth:`ensure_servable` decides."""
        store = self.store
        try:
            if not all(isinstance(b, str) and store.has(b) for b in block_ids):
                return None
        except InvalidBlockIdError:
            return None
        ids = [BlockId(str(b)) for b in block_ids]
        with self._lock:
            recorded = [self._trusted.get(b) for b in ids]
        out: list[tuple[BlockId, int]] = []
        for bid, sig in zip(ids, recorded, strict=True):
            if sig is None or sig != self._signature(bid):
                return None
            out.append((bid, sig[1]))  # the size the block had when it was hashed
        return out

    def on_corrupt(self, block_id: BlockId) -> None:
        logger.error("corrupt block node_id=%s block_id=%s: quarantined", self.node_id, block_id)
        with self._lock:
            self._trusted.pop(block_id, None)
        self.store.quarantine(block_id)
        self.counters.add_corrupt()
        self.schedule_repair(block_id)

    # -- reading -------------------------------------------------------------------------
    def iter_whole_block(self, block_id: BlockId, size: int) -> Iterator[bytes]:
        """A whole block in chunks, hashed as read; the last chunk waits for the digest.

        The chunks before it may already have left when the digest fails: the block is then
        tainted (:mod:`edge_node.tainted`) before the response is cut, as well as quarantined.
        """
        digest = hashlib.sha256()
        held: bytes | None = None
        remaining = size
        with self.store.open(block_id) as fh:
            while remaining > 0:
                chunk = fh.read(min(SERVE_CHUNK_BYTES, remaining))
                if not chunk:
                    self.tainted.add(block_id)
                    self.on_corrupt(block_id)
                    raise BlockCorruptError(block_id)
                digest.update(chunk)
                remaining -= len(chunk)
                if held is not None:
                    yield held
                held = chunk
        if digest.hexdigest() != block_id:
            self.tainted.add(block_id)
            self.on_corrupt(block_id)
            raise BlockCorruptError(block_id)
        if held is not None:
            yield held

    def read_verified(self, block_id: BlockId) -> bytes:
        """A small block's bytes, hashed before they are returned (corrupt: 404 + repair)."""
        data = self.store.read(block_id, verify=False)
        if hashlib.sha256(data).hexdigest() != block_id:
            self.on_corrupt(block_id)
            raise BlockCorruptError(block_id)
        return data

    def block_pieces(
        self, block_id: BlockId, lo: int, hi: int, *, size: int | None = None
    ) -> Iterator[Piece]:
        """Bytes ``[lo, hi)`` of a block as response pieces.

        Small blocks (``verify_on_read_max_bytes``) are read whole and hashed first; large
        trusted blocks (unless ``stream_verify``) become one :class:`FileSlice` for
        ``sendfile``; whole blocks otherwise are hashed as read (:meth:`iter_whole_block`);
        parts of untrusted blocks are verified in full first.
        """
        if size is None:
            size = self.store.size(block_id)
        if size <= self.settings.verify_on_read_max_bytes:
            # Small: read whole and hashed before any of it leaves (one read, no generator).
            yield self.read_verified(block_id)[lo:hi]
            return
        if not self.settings.stream_verify:
            piece = self._open_trusted(block_id, lo, hi)
            if piece is not None:
                yield piece
                return
        if lo == 0 and hi == size:
            yield from self.iter_whole_block(block_id, size)
            return
        if not self.is_trusted(block_id):
            self.verify(block_id)
        yield from self.store.iter_range(block_id, lo, hi, chunk_bytes=SERVE_CHUNK_BYTES)

    def blocks_pieces(self, blocks: Sequence[tuple[BlockId, int]]) -> Iterator[Piece]:
        """Whole blocks, concatenated in order."""
        for block_id, size in blocks:
            yield from self.block_pieces(block_id, 0, size, size=size)
            self.counters.add_blocks_served(1)

    def file_pieces(self, entry: FileEntry, start: int, end: int) -> Iterator[Piece]:
        """Bytes ``[start, end)`` of a model file rebuilt from its header and blocks."""
        return iter_file_range(entry, start, end, self.block_pieces)

    # -- repair --------------------------------------------------------------------------
    def schedule_repair(self, block_id: BlockId) -> None:
        with self._lock:
            if block_id in self._repairing:
                return
            self._repairing.add(block_id)
        self._repairs.put(block_id)

    def _repair_loop(self) -> None:
        while (block_id := self._repairs.get()) is not None:
            try:
                # Under the plan lock: a plan being applied decides what stays, so a repair
                # never re-adds a block that plan is evicting (it may fetch it itself).
                with self.plan_lock:
                    wanted = block_id in self.referenced_blocks()
                    if wanted and not self.store.has(block_id):
                        fetch = self.repair_fetch
                        if fetch is None:
                            logger.warning("no repair fetcher; block_id=%s stays missing", block_id)
                        elif fetch(block_id):
                            self.counters.add_repaired()
                            logger.info("repaired node_id=%s block_id=%s", self.node_id, block_id)
            except Exception:  # a background worker: log and keep serving
                logger.exception("repair failed node_id=%s block_id=%s", self.node_id, block_id)
            finally:
                with self._lock:
                    self._repairing.discard(block_id)

    def repairs_pending(self) -> int:
        with self._lock:
            return len(self._repairing)

    # -- stats ---------------------------------------------------------------------------
    def blocks_digest(self) -> str:
        """sha256 of the sorted block ids held (cheap equality check for the controller)."""
        return hashlib.sha256("\n".join(sorted(self.store.ids())).encode()).hexdigest()

    def stats(self) -> dict[str, Any]:
        complete = self.complete_models()
        physical = self.store.used_bytes
        logical = sum(m.total_bytes for m in complete)
        out: dict[str, Any] = {
            "node_id": self.node_id,
            "capacity_bytes": self.settings.capacity_bytes,
            "physical_bytes": physical,
            "logical_bytes": logical,
            "dedup_ratio": (logical / physical) if physical else 0.0,
            "savings": (1 - physical / logical) if logical else 0.0,
            "blocks": len(self.store),
            "models": [m.model_id for m in complete],
            "plan_version": self.plan_record.version,
            "repairs_pending": self.repairs_pending(),
            "cache_policy": self.settings.cache_policy,
        }
        out.update(self.counters.snapshot())
        out["hits"] = out["blocks_served"]
        out["misses"] = out["errors_by_code"].get("block_not_found", 0)
        for name, section in self.extra_stats.items():
            out[name] = section()
        return out
