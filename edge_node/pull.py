"""Pull-through: Hub requests for any catalogued model, whatever this node holds.

Placement decides what a node keeps; a client pointed at the node (``HF_ENDPOINT``) may still
ask for any model. :class:`PullThrough` answers with the same bytes and headers as for a held
model, fetching what is missing through the plan fetcher (:mod:`edge_node.ingest`: peer edges
first, then the origin; every block hashed against its id as it arrives, a bad one refetched
from the next source and never delivered).

Internal logic of :meth:`PullThrough.file_pieces` for bytes ``[start, end)`` of a file:

1. The header bytes and blocks the range covers are cut, in file order, into *windows* of at
   most ``EDGE_PULL_WINDOW_BYTES`` of missing bytes (a single larger block is a window alone).
   A held block that fails verification counts as missing.
2. A window's missing blocks are reserved in the :class:`PullBuffer`, fetched into it (sources:
   the controller's route for the model, else the last plan's peers; then the origin) and, if a
   held manifest places them here, copied into the node's store (never above capacity, never
   while a plan is being applied: the plan fetches them itself).
3. The first window is fetched before the response starts, so a block that comes from nowhere
   is a 502 ``upstream_unavailable`` with no body. Later windows are fetched while earlier ones
   are sent (``PREFETCH_WINDOWS`` ahead); if one fails, the response is cut short (the client
   sees a short body and retries), never completed with wrong bytes.

Buffer policy: pulled blocks that the placement does not put here live in ``pull-buffer/``
under the data dir, outside ``capacity_bytes``, only while a response uses them (reference
counted; deleted when the last one is done; wiped at startup). Their total is bounded by
``EDGE_PULL_BUFFER_BYTES``; a window waits up to ``EDGE_FETCH_TIMEOUT_S`` for room, then 503
``pull_buffer_busy``. Upstream requests use the node's HTTP client (``EDGE_FETCH_TIMEOUT_S``
per read, 5 s to connect); controller lookups ``EDGE_CONTROLLER_TIMEOUT_S``.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from core.digest import BlockId
from core.errors import BlockNotFoundError, DigestMismatchError, StoreFullError, TrimCacheError
from core.manifest import BlockRef, FileEntry, ModelManifest
from core.store import BlockStore
from edge_node import hub
from edge_node.catalogue import Catalogue, Sources
from edge_node.errors import (
    ModelNotFoundError,
    PullBufferBusyError,
    RepoNotFoundError,
    RevisionNotFoundError,
    UpstreamUnavailableError,
)
from edge_node.ingest import Fetcher, fetch_blocks, locate_blocks, migration_headers
from edge_node.node import EdgeNode
from edge_node.zerocopy import FileSlice, Piece, ResponseCutShortError, pieces_to_bytes

logger = logging.getLogger(__name__)

BUFFER_DIR = "pull-buffer"
#: Windows of one response fetched ahead of the one being sent.
PREFETCH_WINDOWS = 2


class PullBuffer:
    """Pulled blocks in use by responses: reference counted, bounded, deleted when unused."""

    def __init__(self, root: Path, *, capacity_bytes: int) -> None:
        shutil.rmtree(root, ignore_errors=True)  # nothing in it outlives a process
        self.store = BlockStore(root, durable=False)
        self.capacity_bytes = capacity_bytes
        self._cond = threading.Condition()
        self._refs: dict[BlockId, int] = {}
        self._sizes: dict[BlockId, int] = {}
        self._reserved = 0
        self._pulling: dict[BlockId, threading.Event] = {}  # blocks being pulled (claim)

    @property
    def reserved_bytes(self) -> int:
        with self._cond:
            return self._reserved

    def acquire(self, sizes: Mapping[BlockId, int], *, timeout_s: float) -> None:
        """Take one reference on each block, reserving room for those not yet referenced.

        All or nothing: waits (up to ``timeout_s``) until the new bytes fit, or until nothing
        else is reserved (so a window larger than the buffer still runs, alone).
        """
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                new = sum(n for b, n in sizes.items() if b not in self._refs)
                if not self._reserved or self._reserved + new <= self.capacity_bytes:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PullBufferBusyError(
                        f"pull-through buffer full ({self._reserved} of "
                        f"{self.capacity_bytes} bytes in use); retry later"
                    )
                self._cond.wait(left)
            for block_id, size in sizes.items():
                if block_id not in self._refs:
                    self._refs[block_id] = 0
                    self._sizes[block_id] = size
                    self._reserved += size
                self._refs[block_id] += 1

    def claim(
        self, blocks: Mapping[BlockId, int]
    ) -> tuple[dict[BlockId, int], dict[BlockId, threading.Event]]:
        """Split ``blocks`` (referenced by the caller) into those the caller pulls now and
        those another caller is pulling (with the event set when that pull ends)."""
        mine: dict[BlockId, int] = {}
        others: dict[BlockId, threading.Event] = {}
        with self._cond:
            for block_id, size in blocks.items():
                event = self._pulling.get(block_id)
                if event is None:
                    self._pulling[block_id] = threading.Event()
                    mine[block_id] = size
                else:
                    others[block_id] = event
        return mine, others

    def settle(self, blocks: Iterable[BlockId]) -> None:
        """The caller's pull of ``blocks`` (from :meth:`claim`) ended, stored or not."""
        with self._cond:
            for block_id in blocks:
                event = self._pulling.pop(block_id, None)
                if event is not None:
                    event.set()

    def release(self, block_ids: Iterable[BlockId]) -> None:
        """Drop one reference on each block; a block nobody uses any more is deleted."""
        unused: list[BlockId] = []
        with self._cond:
            for block_id in block_ids:
                self._refs[block_id] -= 1
                if self._refs[block_id] == 0:
                    del self._refs[block_id]
                    self._reserved -= self._sizes.pop(block_id)
                    unused.append(block_id)
            # Deleted under the lock: a new reference cannot find a half-deleted block.
            for block_id in unused:
                self.store.delete(block_id)
            if unused:
                self._cond.notify_all()


@dataclass(frozen=True, slots=True)
class ServedRepo:
    """A repo being answered: its manifest, and its block sources when the controller's route
    already gave them (a held manifest asks for them only when a block is missing)."""

    manifest: ModelManifest
    sources: Sources | None = None
    #: A request-time migration (edge_node.migrate): missing blocks come from peer edges
    #: (the origin only when ``sources`` names it: blocks delivered via the origin), peers are
    #: told so, and the node counts what peers sent as migrated.
    migration: bool = False


# One piece of a file range: header bytes, or bytes [lo, hi) of a block.
_Segment = tuple[bytes | BlockRef, int, int]


@dataclass
class Window:
    """A stretch of a response: its pieces, the blocks it lacks here (id -> size) and the
    references it holds in the pull buffer once prepared."""

    segments: list[_Segment]
    missing: dict[BlockId, int] = field(default_factory=dict)
    pulled: dict[BlockId, int] = field(default_factory=dict)  # references held in the buffer


class PullThrough:
    """Finds repos (held, else catalogued) and serves file ranges, pulling missing blocks."""

    def __init__(self, node: EdgeNode, client: httpx.Client, catalogue: Catalogue) -> None:
        self.node = node
        self.client = client
        self.catalogue = catalogue
        settings = node.settings
        self.buffer = PullBuffer(
            settings.data_dir / BUFFER_DIR, capacity_bytes=settings.pull_buffer_bytes
        )
        self._keep_lock = threading.Lock()
        self._prefetch = ThreadPoolExecutor(
            max_workers=settings.fetch_workers, thread_name_prefix="edge-pull"
        )

    def close(self) -> None:
        self._prefetch.shutdown(wait=True, cancel_futures=True)

    # -- repos ---------------------------------------------------------------------------
    def find_repo(self, repo_id: str, revision: str = hub.DEFAULT_BRANCH) -> ServedRepo:
        """Complete held models first, then held incomplete ones, then the catalogue."""
        where = f"node {self.node.node_id}"
        local_error: RepoNotFoundError | RevisionNotFoundError | None = None
        for manifests in (self.node.complete_models(), self.node.manifests()):
            try:
                return ServedRepo(hub.find_repo(manifests, repo_id, revision, where=where))
            except (RepoNotFoundError, RevisionNotFoundError) as exc:
                local_error = exc
        if not self.catalogue.enabled:
            assert local_error is not None
            raise local_error
        model = self.catalogue.find(repo_id, revision)
        return ServedRepo(model.manifest, model.sources)

    def find_model(self, model_id: str) -> ServedRepo:
        """A model by TrimCache id: held (complete or not), else the catalogue's route."""
        try:
            return ServedRepo(self.node.manifest(model_id))
        except ModelNotFoundError:
            if not self.catalogue.enabled:
                raise
        model = self.catalogue.route(model_id)
        return ServedRepo(model.manifest, model.sources)

    def repo_ids(self) -> list[str]:
        held = {m.repo_id for m in self.node.complete_models()}
        listed = self.catalogue.repo_ids() if self.catalogue.enabled else []
        return sorted(held.union(listed))

    def sources(self, repo: ServedRepo) -> Sources:
        """Where ``repo``'s missing blocks come from: the route it came with, else the
        controller's route, else the last plan's peers (then the origin)."""
        if repo.sources is not None:
            return repo.sources
        if self.catalogue.enabled:
            try:
                return self.catalogue.route(repo.manifest.model_id).sources
            except (RepoNotFoundError, UpstreamUnavailableError) as exc:
                logger.warning(
                    "no route for model_id=%s (%s); using the last plan's sources",
                    repo.manifest.model_id,
                    exc,
                )
        record = self.node.plan_record
        peers = {BlockId(b): tuple(p) for b, p in record.peers.items()}
        return Sources(peers, record.origin_url)

    # -- reading -------------------------------------------------------------------------
    def read_file(self, repo: ServedRepo, entry: FileEntry) -> bytes:
        """A whole file's bytes (small files: tree and model info need their git oid)."""
        return b"".join(pieces_to_bytes(self.file_pieces(repo, entry, 0, entry.size)))

    def file_pieces(
        self, repo: ServedRepo, entry: FileEntry, start: int, end: int
    ) -> Iterator[Piece]:
        """Bytes ``[start, end)`` of a file; the first window is fetched before this returns
        (raises UpstreamUnavailableError / PullBufferBusyError before any byte)."""
        windows = self.file_windows(entry, start, end)
        if not any(w.missing for w in windows):
            return self.node.file_pieces(entry, start, end)
        return self.serve(repo, windows)

    def serve(self, repo: ServedRepo, windows: list[Window]) -> Iterator[Piece]:
        """The pieces of ``windows`` (from :meth:`file_windows` / :meth:`block_windows`),
        pulling what is missing; the first window is fetched before this returns."""
        if not any(w.missing for w in windows):
            return self._held_pieces(windows)
        first = self._prepare(repo, windows[0])
        return self._stream(repo, windows, first)

    def _held_pieces(self, windows: list[Window]) -> Iterator[Piece]:
        for window in windows:
            yield from self._window_pieces(window)

    @staticmethod
    def missing_bytes(windows: list[Window]) -> int:
        """Bytes of blocks the windows lack here (what serving them pulls from upstream)."""
        return sum(n for w in windows for n in w.missing.values())

    def file_windows(self, entry: FileEntry, start: int, end: int) -> list[Window]:
        """Bytes ``[start, end)`` of a file cut into pull windows."""
        pieces: list[_Segment] = []
        for seg_start, seg_end, source in entry.segments():
            if seg_end <= start or seg_start >= end or seg_start == seg_end:
                continue
            lo, hi = max(start, seg_start) - seg_start, min(end, seg_end) - seg_start
            pieces.append((source, lo, hi))
        return self._windows(pieces)

    def block_windows(
        self, blocks: Iterable[tuple[BlockId, int]], *, window_bytes: int | None = None
    ) -> list[Window]:
        """Whole blocks ``(id, size)``, concatenated in order, cut into pull windows (of
        ``window_bytes`` missing bytes; default ``EDGE_PULL_WINDOW_BYTES``)."""
        return self._windows([(BlockRef(b, 0, n), 0, n) for b, n in blocks], window_bytes)

    def _windows(self, pieces: Iterable[_Segment], window_bytes: int | None = None) -> list[Window]:
        limit = window_bytes or self.node.settings.pull_window_bytes
        segments = list(pieces)
        # The common case, a held model all of whose blocks are trusted: one check for all.
        refs = [source.block_id for source, _, _ in segments if isinstance(source, BlockRef)]
        all_servable = self.node.trusted_blocks(refs) is not None
        windows = [Window([])]
        for source, lo, hi in segments:
            window = windows[-1]
            if (
                isinstance(source, BlockRef)
                and not all_servable
                and not self._servable(source.block_id)
            ):
                missing_bytes = sum(window.missing.values())
                if window.missing and missing_bytes + source.length > limit:
                    window = Window([])
                    windows.append(window)
                window.missing[source.block_id] = source.length
            window.segments.append((source, lo, hi))
        return windows

    def _servable(self, block_id: BlockId) -> bool:
        if not self.node.store.has(block_id):
            return False
        try:
            self.node.ensure_servable([block_id])  # re-hashes an untrusted block
        except BlockNotFoundError:
            return False  # corrupt: quarantined (and queued for repair); pull it meanwhile
        return True

    def _prepare(self, repo: ServedRepo, window: Window) -> Window:
        """Reserve, fetch and verify a window's missing blocks into the buffer."""
        if not window.missing:
            return window
        settings = self.node.settings
        self.buffer.acquire(window.missing, timeout_s=settings.fetch_timeout_s)
        window.pulled = dict(window.missing)
        try:
            need = {b: n for b, n in window.missing.items() if not self.buffer.store.has(b)}
            # One pull per block: blocks another response is pulling right now are waited
            # for, not fetched twice (then fetched here only if that pull failed).
            mine, others = self.buffer.claim(need)
            try:
                self._fetch(repo, mine)
            finally:
                self.buffer.settle(mine)
            for event in others.values():
                event.wait(settings.fetch_timeout_s)
            self._fetch(repo, {b: need[b] for b in others if not self.buffer.store.has(b)})
            self._keep_placed(window.missing)
        except BaseException:
            self.buffer.release(window.pulled)
            window.pulled = {}
            raise
        return window

    def _fetch(self, repo: ServedRepo, need: Mapping[BlockId, int]) -> None:
        """Fetch ``need`` into the buffer (UpstreamUnavailableError: some came from nowhere)."""
        settings = self.node.settings
        if need:
            sources = self.sources(repo)
            # A migration reads the origin only for blocks it delivers via the origin
            # (edge_node.migrate.prefer leaves the origin in its sources then).
            fallback = None if repo.migration else settings.origin_url
            origin_url = sources.origin_url or fallback
            fetcher = Fetcher(
                self.node,
                self.client,
                store=self.buffer.store,
                on_stored=self._counter(repo, origin_url),
                peer_headers=migration_headers(self.node.node_id) if repo.migration else None,
                transfers_since=time.monotonic(),  # the pull's transfers start together
            )
            left = fetch_blocks(
                fetcher,
                need,
                located=locate_blocks([repo.manifest]),
                peers=sources.peers,
                origin_url=origin_url,
                workers=settings.fetch_workers,
            )
            if left:
                raise UpstreamUnavailableError(
                    f"{len(left)} blocks of {repo.manifest.repo_id!r} came from no peer "
                    f"nor the origin (e.g. {sorted(left)[0]})"
                )

    def _counter(
        self, repo: ServedRepo, origin_url: str | None
    ) -> Callable[[str, BlockId, int], None]:
        counters = self.node.counters

        def stored(source: str, _block_id: BlockId, nbytes: int) -> None:
            counters.add_pulled(source, nbytes)
            if repo.migration and source != origin_url:  # from a peer edge
                counters.add_migrated_in(nbytes)

        return stored

    def _keep_placed(self, blocks: Mapping[BlockId, int]) -> None:
        """Copy pulled blocks that a held manifest places here into the node's store."""
        node = self.node
        if not any(b in node.referenced_blocks() for b in blocks):
            return
        with self._keep_lock:  # pulls copy one at a time, so they never skip for each other
            # An on-demand node runs no plans: its lock holders (admissions, repairs) are brief,
            # so wait for them rather than leave a cached model incomplete.
            waits = node.settings.cache_policy is not None
            timeout = node.settings.fetch_timeout_s if waits else -1
            if not node.plan_lock.acquire(blocking=waits, timeout=timeout):
                return  # a plan (or repair) is running: it decides, and fetches what it keeps
            try:
                self._copy_placed(blocks)
            finally:
                node.plan_lock.release()

    def _copy_placed(self, blocks: Mapping[BlockId, int]) -> None:
        node = self.node
        placed = node.referenced_blocks()  # read again under the plan lock
        for block_id, size in blocks.items():
            if block_id not in placed or node.store.has(block_id):
                continue
            try:
                chunks = self.buffer.store.iter_range(block_id)
                node.store.put_stream(chunks, block_id=block_id, size=size)
            except (StoreFullError, DigestMismatchError, BlockNotFoundError) as exc:
                logger.info("not keeping pulled block_id=%s: %s", block_id, exc)
                continue
            node.mark_trusted(block_id)
            node.counters.add_pulled_kept(size)

    def _stream(self, repo: ServedRepo, windows: list[Window], first: Window) -> Iterator[Piece]:
        queued = iter(windows[1:])
        pending: deque[Future[Window]] = deque()
        current: Window | None = first
        try:
            while current is not None:
                while len(pending) < PREFETCH_WINDOWS:
                    upcoming = next(queued, None)
                    if upcoming is None:
                        break
                    pending.append(self._prefetch.submit(self._prepare, repo, upcoming))
                yield from self._window_pieces(current)
                self.buffer.release(current.pulled)
                current = None
                if pending:
                    current = pending.popleft().result()
        except TrimCacheError as exc:  # the status line is out: end the body early
            raise ResponseCutShortError(
                f"pull-through of {repo.manifest.repo_id!r} failed mid-response: {exc}"
            ) from exc
        finally:
            if current is not None:
                self.buffer.release(current.pulled)
            for future in pending:
                future.add_done_callback(self._release_done)

    def _release_done(self, future: Future[Window]) -> None:
        if not future.cancelled() and future.exception() is None:
            self.buffer.release(future.result().pulled)

    def _window_pieces(self, window: Window) -> Iterator[Piece]:
        for source, lo, hi in window.segments:
            if isinstance(source, bytes):
                yield source[lo:hi]
            elif source.block_id in window.pulled:
                yield from self._buffer_pieces(source.block_id, lo, hi)
            else:
                yield from self.node.block_pieces(source.block_id, lo, hi)

    def _buffer_pieces(self, block_id: BlockId, lo: int, hi: int) -> Iterator[Piece]:
        store = self.buffer.store
        if store.size(block_id) <= self.node.settings.verify_on_read_max_bytes:
            yield store.read(block_id, verify=True)[lo:hi]
        else:  # hashed as it was written, moments ago
            yield FileSlice(store.open(block_id), lo, hi - lo)
