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
     blocks of one file coalesced into one request, retried under :data:`ORIGIN_RETRY`.
   Batching, coalescing, the cut of a body into blocks and the retry policy are the transfer
   layer the client uses too (:mod:`core.transfer`).
   Every block is streamed into ``BlockStore.put_stream(block_id=...)``: its bytes are hashed as
   they arrive and a block that does not match, or whose transfer dies, leaves nothing behind.
   A durable node syncs once per plan (``BlockStore.one_sync``: one ``syncfs`` after the
   fetches), not once per block.
4. On success, blocks of no planned manifest are evicted and manifests of unplanned models
   dropped. If some block could not be fetched from anywhere, :class:`UpstreamUnavailableError`
   (502) is raised and nothing more is evicted; applying the plan again resumes.

Applying the same plan twice fetches nothing. The caller (:mod:`edge_node.plans`, the node's
plan worker) runs it in the background, observes it through :class:`PlanObserver` (progress
counts, and a cancel flag set when a newer plan supersedes this one: the transfer stops at the
next chunk with :class:`~core.errors.PlanSupersededError`, before any eviction; blocks already
verified stay, a half-received one leaves nothing behind).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from huggingface_hub import hf_hub_url

from core.digest import BlockId
from core.errors import DigestMismatchError, StoreFullError
from core.manifest import ModelManifest
from core.store import BlockStore
from core.transfer import (
    RetryPolicy,
    ShortBodyError,
    Span,
    batches,
    byte_range,
    contiguous_runs,
    split_body,
    total_bytes,
)
from edge_node.errors import PlanSupersededError, StalePlanError, UpstreamUnavailableError
from edge_node.node import EdgeNode, PlanRecord
from edge_node.wired import WIRED_HEADER, LinkKind, Transfer, wired_links

logger = logging.getLogger(__name__)

#: Upper bound of one peer batch or one coalesced origin Range request.
MAX_REQUEST_BYTES = 64 << 20
MAX_BATCH_BLOCKS = 512
ORIGIN_ATTEMPTS = 3
#: Origin Range reads of blocks still missing: a few rounds, full-jitter backoff, bounded.
ORIGIN_RETRY = RetryPolicy(attempts=ORIGIN_ATTEMPTS, backoff_s=0.2, budget_s=60.0)
_READ_CHUNK_BYTES = 1 << 20
#: The header of a request-time migration's peer batch (value: the pulling node's id); the
#: peer counts what it serves under it as migrated out (edge_node.migrate).
MIGRATION_HEADER = "X-TrimCache-Migration"


def migration_headers(node_id: str) -> dict[str, str]:
    """The peer request headers of a migration pulled by ``node_id``."""
    return {MIGRATION_HEADER: node_id}


@dataclass(frozen=True, slots=True)
class Plan:
    """A validated plan (built from the request body by the API layer)."""

    version: int
    manifests: tuple[ModelManifest, ...]
    peers: Mapping[BlockId, tuple[str, ...]]
    origin_url: str | None


class PlanObserver(Protocol):
    """What :func:`apply_plan` reports while it runs (the plan worker's progress record)."""

    def started(self, blocks: int, nbytes: int) -> None:
        """The transfer starts: ``blocks`` missing blocks of ``nbytes`` in all."""

    def fetched(self, source: str, nbytes: int) -> None:
        """One block of ``nbytes`` arrived from ``source`` and was verified and stored."""


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
        cancel: threading.Event | None = None,
        peer_headers: Mapping[str, str] | None = None,
        transfers_since: float | None = None,
    ) -> None:
        self.node = node
        # Emulated wired links: every transfer counts from this instant (a pull), else from
        # its own request (edge_node.wired.WiredLinks.start).
        self._since = transfers_since
        # Extra headers of peer batch requests (a migration names itself: edge_node.migrate).
        self._peer_headers = dict(peer_headers or {})
        self.client = client
        self.store = node.store if store is None else store
        self._on_stored = on_stored
        self._cancel = cancel
        # The world's backhaul and edge links, emulated per transfer (edge_node.wired).
        self._wired = wired_links(node.settings.world_file)

    def _start(self, kind: LinkKind, spans: Sequence[Span]) -> Transfer | None:
        if self._wired is None:
            return None
        return self._wired.start(kind, [s.length for s in spans], since=self._since)

    def check_cancelled(self) -> None:
        """Raise :class:`PlanSupersededError` once the plan this fetch serves was replaced."""
        if self._cancel is not None and self._cancel.is_set():
            raise PlanSupersededError("a newer plan superseded this one")

    def _chunks(self, response: httpx.Response) -> Iterator[bytes]:
        for chunk in response.iter_raw(_READ_CHUNK_BYTES):
            self.check_cancelled()
            yield chunk

    @property
    def into_node(self) -> bool:
        return self.store is self.node.store

    def _stored(self, source: str, block_id: BlockId, size: int) -> None:
        if self.into_node:
            self.node.mark_trusted(block_id)
            self.node.counters.add_ingested(source, size)
        if self._on_stored is not None:
            self._on_stored(source, block_id, size)

    def _store_from(self, pieces: Iterator[memoryview], block_id: BlockId, size: int) -> bool:
        """Store one block from its ``pieces``; False on a bad digest (the rest of the body is
        still aligned: :func:`core.transfer.split_body` skips what is left unread)."""
        if self.store.has(block_id):
            return False
        try:
            self.store.put_stream(pieces, block_id=block_id, size=size)
        except DigestMismatchError as exc:
            logger.warning("rejected block_id=%s: %s", block_id, exc)
            return False
        return True

    def _store_body(
        self,
        response: httpx.Response,
        spans: Sequence[Span],
        source: str,
        stored: set[BlockId],
        transfer: Transfer | None = None,
    ) -> None:
        """Cut the body at the spans' lengths and store each block; ``stored`` gets the ids kept
        (filled as they land, so a transfer that dies midway keeps what it verified). On an
        emulated wired link a block counts as arrived after its line time (``transfer``)."""
        body = split_body(self._chunks(response), [s.length for s in spans])
        for index, (span, pieces) in enumerate(zip(spans, body, strict=True)):
            if self._store_from(pieces, span.block_id, span.length):
                if transfer is not None:
                    transfer.hold(index)
                stored.add(span.block_id)
                self._stored(source, span.block_id, span.length)

    def from_peer(self, peer_url: str, blocks: Sequence[Span]) -> set[BlockId]:
        """Fetch ``blocks`` from a peer's batch endpoint; return the ids stored."""
        self.check_cancelled()
        stored: set[BlockId] = set()
        ids = [b.block_id for b in blocks]
        transfer = self._start("edge", blocks)
        try:
            with self.client.stream(
                "POST",
                f"{peer_url}/v1/blocks:batch",
                json={"block_ids": ids},
                headers={"Accept-Encoding": "identity", **self._peer_headers},
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
                self._store_body(response, blocks, peer_url, stored, transfer)
        except (httpx.HTTPError, ShortBodyError) as exc:
            logger.warning("peer %s failed mid-transfer: %s", peer_url, exc)
        return stored

    def from_origin(self, origin_url: str, run: Sequence[Span]) -> set[BlockId]:
        """Fetch a run of adjacent blocks of one file with one Range read."""
        self.check_cancelled()
        stored: set[BlockId] = set()
        first = run[0]
        url = hf_hub_url(first.repo_id, first.path, revision=first.revision, endpoint=origin_url)
        headers = {"Accept-Encoding": "identity", **byte_range(run)}
        transfer = self._start("backhaul", run)
        if transfer is not None:
            headers[WIRED_HEADER] = "emulated"  # the origin does not shape it a second time
        try:
            with self.client.stream("GET", url, headers=headers) as response:
                if response.status_code == 200 and first.offset != 0:
                    raise ShortBodyError("origin ignored the Range header")
                if response.status_code not in (200, 206):
                    response.read()
                    logger.warning("origin %s answered %s for %s", url, response.status_code, url)
                    return stored
                self._store_body(response, run, origin_url, stored, transfer)
        except (httpx.HTTPError, ShortBodyError) as exc:
            logger.warning("origin %s failed mid-transfer: %s", origin_url, exc)
        return stored


def locate_blocks(manifests: Sequence[ModelManifest]) -> dict[BlockId, Span]:
    """Every block of ``manifests`` with its first place in their files."""
    where: dict[BlockId, Span] = {}
    for manifest in manifests:
        for block_id, (path, offset, length) in manifest.locate().items():
            where.setdefault(
                block_id,
                Span(block_id, length, path, offset, manifest.repo_id, manifest.revision),
            )
    return where


def _peer_batches(blocks: Sequence[Span]) -> Iterator[list[Span]]:
    return batches(blocks, max_bytes=MAX_REQUEST_BYTES, max_count=MAX_BATCH_BLOCKS)


def _origin_runs(located: Sequence[Span]) -> list[list[Span]]:
    """Adjacent blocks of one file coalesced (up to MAX_REQUEST_BYTES), largest run first."""
    runs = contiguous_runs(located, max_bytes=MAX_REQUEST_BYTES)
    runs.sort(key=lambda r: -total_bytes(r))  # keeps the workers busy evenly
    return runs


def fetch_blocks(
    fetcher: Fetcher,
    missing: Mapping[BlockId, int],
    *,
    located: Mapping[BlockId, Span],
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
            by_peer: dict[str, list[Span]] = {}
            for block_id, size in remaining.items():
                candidates = peers.get(block_id, ())
                if rank < len(candidates):
                    span = located.get(block_id) or Span(block_id, size, "", 0)
                    by_peer.setdefault(candidates[rank].rstrip("/"), []).append(span)
            if not by_peer:
                break
            fetcher.check_cancelled()
            jobs = [
                pool.submit(fetcher.from_peer, peer, batch)
                for peer, blocks in by_peer.items()
                for batch in _peer_batches(blocks)
            ]
            for job in jobs:
                for block_id in job.result():
                    remaining.pop(block_id, None)
            rank += 1
        for _attempt in ORIGIN_RETRY.attempts():
            if not remaining or origin_url is None:
                break
            fetcher.check_cancelled()
            todo = [located[b] for b in remaining if b in located]
            jobs = [pool.submit(fetcher.from_origin, origin_url, run) for run in _origin_runs(todo)]
            for job in jobs:
                for block_id in job.result():
                    remaining.pop(block_id, None)
    # Blocks that arrived through another path meanwhile (e.g. a repair) count as present.
    return {b for b in remaining if not fetcher.store.has(b)}


def apply_plan(
    node: EdgeNode,
    plan: Plan,
    *,
    client: httpx.Client,
    observer: PlanObserver,
    cancel: threading.Event | None = None,
) -> dict[str, Any]:
    """Make the node hold exactly the plan's blocks (see the module docstring); returns what
    it fetched and evicted and the models it holds afterwards."""
    with node.plan_lock:
        return _apply_locked(node, plan, client=client, observer=observer, cancel=cancel)


def check_fits(node: EdgeNode, plan: Plan) -> None:
    """Fencing, capacity and block lengths, checked before a plan is accepted and again when
    it runs (StalePlanError 409, StoreFullError 507, BlockLengthConflictError 409)."""
    for manifest in plan.manifests:
        node.store.check_manifest(manifest)
    applied = node.plan_record.version
    if applied is not None and plan.version < applied:
        raise StalePlanError(
            f"plan version {plan.version} is older than the applied version {applied}"
        )
    needed: dict[BlockId, int] = {}
    for manifest in plan.manifests:
        needed.update(manifest.block_sizes())
    needed_bytes = sum(needed.values())
    capacity = node.settings.capacity_bytes
    if capacity is not None and needed_bytes > capacity:
        raise StoreFullError(needed_bytes, capacity)


def _apply_locked(
    node: EdgeNode,
    plan: Plan,
    *,
    client: httpx.Client,
    observer: PlanObserver,
    cancel: threading.Event | None,
) -> dict[str, Any]:
    check_fits(node, plan)
    store = node.store
    needed: dict[BlockId, int] = {}
    for manifest in plan.manifests:
        needed.update(manifest.block_sizes())
    capacity = node.settings.capacity_bytes
    origin_url = (plan.origin_url or node.settings.origin_url or "").rstrip("/") or None
    missing = {b: n for b, n in needed.items() if not store.has(b)}
    missing_bytes = sum(missing.values())
    observer.started(len(missing), missing_bytes)
    logger.info(
        "applying plan node_id=%s version=%s models=%d missing_blocks=%d missing_bytes=%d",
        node.node_id,
        plan.version,
        len(plan.manifests),
        len(missing),
        missing_bytes,
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
    if capacity is not None and store.used_bytes + missing_bytes > capacity:
        evicted += _make_room(node, keep=set(needed), nbytes=missing_bytes)

    fetched: dict[str, int] = {}
    fetched_lock = threading.Lock()

    def on_stored(source: str, _block_id: BlockId, nbytes: int) -> None:
        with fetched_lock:
            fetched[source] = fetched.get(source, 0) + nbytes
        observer.fetched(source, nbytes)

    fetcher = Fetcher(node, client, on_stored=on_stored, cancel=cancel)
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
        raise UpstreamUnavailableError(message)
    fetcher.check_cancelled()  # the last moment a newer plan can still stop the evictions

    planned = {m.model_id for m in plan.manifests}
    for manifest in node.manifests():
        if manifest.model_id not in planned:
            node.drop_manifest(manifest.model_id)
    evicted += node.evict_except(set(needed))
    node.save_plan_record(
        PlanRecord(version=plan.version, peers=node.plan_record.peers, origin_url=origin_url)
    )
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
        "fetched_bytes_by_source": dict(fetched),
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
            {block_id: located[block_id].length},
            located=located,
            peers=peers,
            origin_url=origin_url,
            workers=1,
        )
        return not left

    return fetch
