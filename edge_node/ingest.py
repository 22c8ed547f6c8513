"""Applying placement plans: fetch the missing blocks (peers first, then the origin), then evict.

A plan (docs/api.md "Edge node", ``PUT /v1/plan``) lists manifests; the node must end holding
every block of every listed manifest and nothing else.

Internal logic of :func:`apply_plan`:

0. Fencing: a plan whose version is below the last applied one is refused with
   :class:`StalePlanError` (409) and nothing is touched (the same version again is a re-apply).
1. needed = union of the blocks of the planned manifests. If its size exceeds the capacity the
   plan is refused with :class:`StoreFullError` (507) and nothing is touched.
2. Manifests are recorded; missing = needed - stored. If the missing bytes do not fit next to what
   is stored, unplanned blocks are evicted first (never a planned one) until they do.
3. Missing blocks are fetched in parallel (``fetch_workers`` threads):
   - from peers, rank by rank: blocks whose first listed peer is P go to P in
     ``POST /v1/blocks:batch`` requests; what P fails to deliver moves to the next peer listed;
   - the rest from the origin: ``Range`` reads of each file at the exact block offsets, adjacent
     blocks of one file coalesced into one request, a few attempts each.
   Every block is streamed into ``BlockStore.put_stream(block_id=...)``: its bytes are hashed as
   they arrive and a block that does not match, or whose transfer dies, leaves nothing behind.
   A durable node syncs once per plan (``BlockStore.one_sync``: one ``syncfs`` after the
   fetches), not once per block.
4. On success, blocks of no planned manifest are evicted and manifests of unplanned models
   dropped. If some block could not be fetched from anywhere, :class:`UpstreamUnavailableError`
   (502) is raised and nothing more is evicted; applying the plan again resumes.

Applying the same plan twice fetches nothing. Progress is kept in :class:`PlanProgress`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
from huggingface_hub import hf_hub_url

from core.digest import BlockId
from core.errors import DigestMismatchError, StoreFullError
from core.manifest import ModelManifest
from core.store import BlockStore
from edge_node.errors import StalePlanError, UpstreamUnavailableError
from edge_node.node import EdgeNode, PlanRecord

logger = logging.getLogger(__name__)

PLAN_SCHEMA = "trimcache.edge-plan/v1"
#: Upper bound of one peer batch or one coalesced origin Range request.
MAX_REQUEST_BYTES = 64 << 20
MAX_BATCH_BLOCKS = 512
ORIGIN_ATTEMPTS = 3
_READ_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class Plan:
    """A validated plan (built from the request body by the API layer)."""

    version: int
    manifests: tuple[ModelManifest, ...]
    peers: Mapping[BlockId, tuple[str, ...]]
    origin_url: str | None


@dataclass
class PlanProgress:
    """What ``GET /v1/plan`` reports; mutated under ``lock`` by the applying thread."""

    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    status: str = "idle"  # idle | applying | applied | failed
    version: int | None = None  # last version applied successfully
    applying_version: int | None = None
    blocks_total: int = 0
    blocks_done: int = 0
    bytes_total: int = 0
    bytes_done: int = 0
    fetched_bytes_by_source: dict[str, int] = field(default_factory=dict)
    evicted_bytes: int = 0
    error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None

    def add_fetched(self, source: str, nbytes: int) -> None:
        with self.lock:
            self.blocks_done += 1
            self.bytes_done += nbytes
            self.fetched_bytes_by_source[source] = (
                self.fetched_bytes_by_source.get(source, 0) + nbytes
            )

    def to_json(self) -> dict[str, Any]:
        with self.lock:
            return {
                "version": self.version,
                "status": self.status,
                "applying_version": self.applying_version,
                "progress": {
                    "blocks_total": self.blocks_total,
                    "blocks_done": self.blocks_done,
                    "bytes_total": self.bytes_total,
                    "bytes_done": self.bytes_done,
                },
                "fetched_bytes_by_source": dict(self.fetched_bytes_by_source),
                "evicted_bytes": self.evicted_bytes,
                "error": self.error,
                "started_at": self.started_at,
                "finished_at": self.finished_at,
            }


class _ShortBodyError(Exception):
    """The response ended before the expected bytes."""


class _Body:
    """Cuts a streamed response body into consecutive pieces of known lengths."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = memoryview(b"")

    def take(self, nbytes: int) -> Iterator[memoryview]:
        while nbytes > 0:
            if not self._buf:
                try:
                    self._buf = memoryview(next(self._chunks))
                except StopIteration:
                    raise _ShortBodyError(f"body ended {nbytes} bytes early") from None
                continue
            piece = self._buf[:nbytes]
            self._buf = self._buf[len(piece) :]
            nbytes -= len(piece)
            yield piece


@dataclass(frozen=True, slots=True)
class Located:
    """Where the origin has a block: bytes ``[offset, offset + size)`` of one repo file."""

    block_id: BlockId
    size: int
    repo_id: str
    revision: str
    path: str
    offset: int


class Fetcher:
    """Moves blocks from peers or the origin into a store, verifying each one.

    The store is the node's own (plans, repairs: stored blocks become trusted and count as
    ingested) unless ``store`` names another one (the pull-through buffer, edge_node.pull).
    """

    def __init__(
        self,
        node: EdgeNode,
        client: httpx.Client,
        *,
        store: BlockStore | None = None,
        on_stored: Callable[[str, BlockId, int], None] | None = None,
    ) -> None:
        self.node = node
        self.client = client
        self.store = node.store if store is None else store
        self._on_stored = on_stored

    @property
    def into_node(self) -> bool:
        return self.store is self.node.store

    def _stored(self, source: str, block_id: BlockId, size: int) -> None:
        if self.into_node:
            self.node.mark_trusted(block_id)
            self.node.counters.add_ingested(source, size)
        if self._on_stored is not None:
            self._on_stored(source, block_id, size)

    def _store_from(self, body: _Body, block_id: BlockId, size: int) -> bool:
        """Store one block from ``body``; False (and the body still aligned) on a bad digest."""
        if self.store.has(block_id):
            for _ in body.take(size):
                pass
            return False
        try:
            self.store.put_stream(body.take(size), block_id=block_id, size=size)
        except DigestMismatchError as exc:
            logger.warning("rejected block_id=%s: %s", block_id, exc)
            return False
        return True

    def from_peer(self, peer_url: str, blocks: Sequence[tuple[BlockId, int]]) -> set[BlockId]:
        """Fetch ``blocks`` from a peer's batch endpoint; return the ids stored."""
        stored: set[BlockId] = set()
        ids = [b for b, _ in blocks]
        try:
            with self.client.stream(
                "POST",
                f"{peer_url}/v1/blocks:batch",
                json={"block_ids": ids},
                headers={"Accept-Encoding": "identity"},
            ) as response:
                if response.status_code != 200:
                    response.read()
                    logger.warning(
                        "peer %s answered %s to a batch of %d blocks",
                        peer_url,
                        response.status_code,
                        len(ids),
                    )
                    return stored
                body = _Body(response.iter_raw(_READ_CHUNK_BYTES))
                for block_id, size in blocks:
                    if self._store_from(body, block_id, size):
                        stored.add(block_id)
                        self._stored(peer_url, block_id, size)
        except (httpx.HTTPError, _ShortBodyError) as exc:
            logger.warning("peer %s failed mid-transfer: %s", peer_url, exc)
        return stored

    def from_origin(self, origin_url: str, run: Sequence[Located]) -> set[BlockId]:
        """Fetch a run of adjacent blocks of one file with one Range read."""
        stored: set[BlockId] = set()
        first, last = run[0], run[-1]
        start, end = first.offset, last.offset + last.size  # end exclusive
        url = hf_hub_url(first.repo_id, first.path, revision=first.revision, endpoint=origin_url)
        headers = {"Accept-Encoding": "identity"}
        if end > start:
            headers["Range"] = f"bytes={start}-{end - 1}"
        try:
            with self.client.stream("GET", url, headers=headers) as response:
                if response.status_code == 200 and start != 0:
                    raise _ShortBodyError("origin ignored the Range header")
                if response.status_code not in (200, 206):
                    response.read()
                    logger.warning("origin %s answered %s for %s", url, response.status_code, url)
                    return stored
                body = _Body(response.iter_raw(_READ_CHUNK_BYTES))
                for loc in run:
                    if self._store_from(body, loc.block_id, loc.size):
                        stored.add(loc.block_id)
                        self._stored(origin_url, loc.block_id, loc.size)
        except (httpx.HTTPError, _ShortBodyError) as exc:
            logger.warning("origin %s failed mid-transfer: %s", origin_url, exc)
        return stored


def locate_blocks(manifests: Sequence[ModelManifest]) -> dict[BlockId, Located]:
    """Every block of ``manifests`` with its first place in their files."""
    where: dict[BlockId, Located] = {}
    for manifest in manifests:
        for block_id, (path, offset, length) in manifest.locate().items():
            where.setdefault(
                block_id,
                Located(block_id, length, manifest.repo_id, manifest.revision, path, offset),
            )
    return where


def _peer_batches(
    blocks: Sequence[tuple[BlockId, int]],
) -> Iterator[list[tuple[BlockId, int]]]:
    batch: list[tuple[BlockId, int]] = []
    nbytes = 0
    for block_id, size in blocks:
        if batch and (nbytes + size > MAX_REQUEST_BYTES or len(batch) >= MAX_BATCH_BLOCKS):
            yield batch
            batch, nbytes = [], 0
        batch.append((block_id, size))
        nbytes += size
    if batch:
        yield batch


def _origin_runs(located: Sequence[Located]) -> list[list[Located]]:
    """Group blocks by file and coalesce adjacent ones (bounded by MAX_REQUEST_BYTES)."""
    by_file: dict[tuple[str, str, str], list[Located]] = {}
    for loc in located:
        by_file.setdefault((loc.repo_id, loc.revision, loc.path), []).append(loc)
    runs: list[list[Located]] = []
    for locs in by_file.values():
        locs.sort(key=lambda x: x.offset)
        run: list[Located] = []
        run_bytes = 0
        for loc in locs:
            adjacent = run and run[-1].offset + run[-1].size == loc.offset
            if run and (not adjacent or run_bytes + loc.size > MAX_REQUEST_BYTES):
                runs.append(run)
                run, run_bytes = [], 0
            run.append(loc)
            run_bytes += loc.size
        if run:
            runs.append(run)
    # Largest first keeps the workers busy evenly.
    runs.sort(key=lambda r: -sum(x.size for x in r))
    return runs


def fetch_blocks(
    fetcher: Fetcher,
    missing: Mapping[BlockId, int],
    *,
    located: Mapping[BlockId, Located],
    peers: Mapping[BlockId, Sequence[str]],
    origin_url: str | None,
    workers: int,
) -> set[BlockId]:
    """Fetch ``missing`` (peers rank by rank, then the origin); return the ids still missing."""
    remaining = dict(missing)
    for block_id in [b for b, size in remaining.items() if size == 0]:
        fetcher.store.put(b"", block_id)  # an empty tensor needs no transfer
        if fetcher.into_node:
            fetcher.node.mark_trusted(block_id)
        del remaining[block_id]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="edge-fetch") as pool:
        rank = 0
        while True:
            by_peer: dict[str, list[tuple[BlockId, int]]] = {}
            for block_id, size in remaining.items():
                candidates = peers.get(block_id, ())
                if rank < len(candidates):
                    by_peer.setdefault(candidates[rank].rstrip("/"), []).append((block_id, size))
            if not by_peer:
                break
            jobs = [
                pool.submit(fetcher.from_peer, peer, batch)
                for peer, blocks in by_peer.items()
                for batch in _peer_batches(blocks)
            ]
            for job in jobs:
                for block_id in job.result():
                    remaining.pop(block_id, None)
            rank += 1
        for attempt in range(ORIGIN_ATTEMPTS):
            if not remaining or origin_url is None:
                break
            todo = [located[b] for b in remaining if b in located]
            if attempt:
                time.sleep(0.2 * attempt)
            jobs = [pool.submit(fetcher.from_origin, origin_url, run) for run in _origin_runs(todo)]
            for job in jobs:
                for block_id in job.result():
                    remaining.pop(block_id, None)
    # Blocks that arrived through another path meanwhile (e.g. a repair) count as present.
    return {b for b in remaining if not fetcher.store.has(b)}


def apply_plan(
    node: EdgeNode, plan: Plan, *, client: httpx.Client, progress: PlanProgress
) -> dict[str, Any]:
    """Make the node hold exactly the plan's blocks (see the module docstring)."""
    with node.plan_lock:
        try:
            return _apply_locked(node, plan, client=client, progress=progress)
        except BaseException as exc:
            with progress.lock:
                if progress.applying_version == plan.version and progress.status == "applying":
                    progress.status = "failed"
                    progress.error = f"{type(exc).__name__}: {exc}"
                    progress.finished_at = time.time()
            raise


def _apply_locked(
    node: EdgeNode, plan: Plan, *, client: httpx.Client, progress: PlanProgress
) -> dict[str, Any]:
    applied = node.plan_record.version
    if applied is not None and plan.version < applied:
        raise StalePlanError(
            f"plan version {plan.version} is older than the applied version {applied}"
        )
    store = node.store
    needed: dict[BlockId, int] = {}
    for manifest in plan.manifests:
        needed.update(manifest.block_sizes())
    needed_bytes = sum(needed.values())
    capacity = node.settings.capacity_bytes
    if capacity is not None and needed_bytes > capacity:
        raise StoreFullError(needed_bytes, capacity)

    origin_url = (plan.origin_url or node.settings.origin_url or "").rstrip("/") or None
    missing = {b: n for b, n in needed.items() if not store.has(b)}
    with progress.lock:
        progress.status = "applying"
        progress.applying_version = plan.version
        progress.blocks_total = len(missing)
        progress.bytes_total = sum(missing.values())
        progress.blocks_done = 0
        progress.bytes_done = 0
        progress.fetched_bytes_by_source = {}
        progress.evicted_bytes = 0
        progress.error = None
        progress.started_at = time.time()
        progress.finished_at = None
    logger.info(
        "applying plan node_id=%s version=%s models=%d missing_blocks=%d missing_bytes=%d",
        node.node_id,
        plan.version,
        len(plan.manifests),
        len(missing),
        progress.bytes_total,
    )
    for manifest in plan.manifests:
        node.put_manifest(manifest)
    node.save_plan_record(
        PlanRecord(
            version=node.plan_record.version,
            peers={b: list(p) for b, p in plan.peers.items()},
            origin_url=origin_url,
        )
    )
    evicted = 0
    missing_bytes = sum(missing.values())
    if capacity is not None and store.used_bytes + missing_bytes > capacity:
        evicted += _make_room(node, keep=set(needed), nbytes=missing_bytes)

    fetcher = Fetcher(node, client, on_stored=lambda src, _b, n: progress.add_fetched(src, n))
    with store.one_sync():  # one syncfs for the whole plan, not an fsync per block
        still_missing = fetch_blocks(
            fetcher,
            missing,
            located=locate_blocks(plan.manifests),
            peers=plan.peers,
            origin_url=origin_url,
            workers=node.settings.fetch_workers,
        )
    if still_missing:
        message = (
            f"{len(still_missing)} blocks could not be fetched from any peer or the origin "
            f"(e.g. {sorted(still_missing)[0]})"
        )
        with progress.lock:
            progress.status = "failed"
            progress.error = message
            progress.finished_at = time.time()
        raise UpstreamUnavailableError(message)

    planned = {m.model_id for m in plan.manifests}
    for manifest in node.manifests():
        if manifest.model_id not in planned:
            node.drop_manifest(manifest.model_id)
    evicted += node.evict_except(set(needed))
    node.save_plan_record(
        PlanRecord(version=plan.version, peers=node.plan_record.peers, origin_url=origin_url)
    )
    with progress.lock:
        progress.status = "applied"
        progress.version = plan.version
        progress.evicted_bytes = evicted
        progress.finished_at = time.time()
        fetched = dict(progress.fetched_bytes_by_source)
    logger.info(
        "applied plan node_id=%s version=%s fetched=%s evicted_bytes=%d",
        node.node_id,
        plan.version,
        fetched,
        evicted,
    )
    return {
        "version": plan.version,
        "status": "applied",
        "fetched_bytes_by_source": fetched,
        "evicted_bytes": evicted,
        "held_models": [m.model_id for m in node.complete_models()],
    }


def _make_room(node: EdgeNode, *, keep: set[BlockId], nbytes: int) -> int:
    """Evict unplanned blocks (largest first) until ``nbytes`` more fit; return bytes freed."""
    store = node.store
    capacity = store.capacity_bytes
    assert capacity is not None
    freed = 0
    victims = sorted(
        (b for b in store.ids() if b not in keep and store.has(b)),
        key=lambda b: -store.size(b),
    )
    for block_id in victims:
        if store.used_bytes + nbytes <= capacity:
            break
        size = store.size(block_id)
        if store.delete(block_id):
            freed += size
    return freed


def repair_fetcher(node: EdgeNode, client: httpx.Client) -> Callable[[BlockId], bool]:
    """A function ``block_id -> bool`` that refetches one block (peers of the last plan, origin)."""

    def fetch(block_id: BlockId) -> bool:
        manifests = node.manifests()
        located = locate_blocks(manifests)
        if block_id not in located:
            return False
        record = node.plan_record
        peers = {block_id: tuple(p for p in record.peers.get(block_id, ()))}
        origin_url = record.origin_url or node.settings.origin_url
        fetcher = Fetcher(node, client)
        left = fetch_blocks(
            fetcher,
            {block_id: located[block_id].size},
            located=located,
            peers=peers,
            origin_url=origin_url,
            workers=1,
        )
        return not left

    return fetch
