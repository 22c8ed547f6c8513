"""On-demand caching (``EDGE_CACHE_POLICY=lru|lfu``): the node caches what its requests ask for.

With a policy set, the node holds no planned placement (the controller pushes it none, and
``PUT /v1/plan`` is refused). Instead every request that names a model (a Hub ``resolve`` of
one of its files, or ``POST /v1/blocks:batch`` with ``model_id``) goes through
:meth:`OnDemandCache.lookup`:

- **hit**: the model is cached and all its blocks are in the store; served from the store;
- **miss**: the request is served by pull-through (:mod:`edge_node.pull`: from peers or the
  origin, every block hashed against its id), and the model is *admitted*: the policy
  (:mod:`core.cachepolicy`, the same code the placement simulator replays for ``lru``/``lfu``)
  evicts whole models until the new one's missing blocks fit ``EDGE_CAPACITY_BYTES``, then the
  model's manifest is held, so pull-through keeps the blocks it fetches in the store.

The unit is the whole model, as in the placement problem's model of ``lru``/``lfu``
(:mod:`controller.placement.online`): storage is the union of the cached models' blocks, so a
block shared by two cached models is stored and counted once, and evicting a model deletes only
the blocks no cached model still uses.

Responses *lease* their model (:class:`Lease`): while a response streams, its model is never
chosen for eviction (the policy takes the next one; if only such models are left the new model
is served without being admitted), and no block of it is deleted, even when an eviction of
another model that shares it drops it from the policy: such a block is deleted when the last
response using it ends. Admission, eviction and those deletions run under the node's plan lock,
so they never race a repair or the pull-through's copy into the store.

At startup the complete held models are re-admitted (in model-id order, while they fit); other
manifests and blocks no admitted model uses are dropped. Counters: ``cache_hits``,
``cache_misses``, ``cache_evictions``, ``cache_evicted_bytes`` in ``GET /v1/stats``.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from core.cachepolicy import POLICIES
from core.digest import BlockId
from core.manifest import ModelManifest
from edge_node.node import EdgeNode
from edge_node.pull import PullThrough, ServedRepo, Window
from edge_node.zerocopy import Piece

logger = logging.getLogger(__name__)

#: The response header naming the outcome: ``hit`` or ``miss``.
CACHE_HEADER = "X-TrimCache-Cache"
#: The response header with the bytes of this response the node fetched upstream to serve it.
PULLED_HEADER = "X-TrimCache-Pulled-Bytes"


@dataclass(slots=True)
class Lease:
    """One response's hold on its model: ``hit`` or not; :meth:`release` when it is done."""

    cache: OnDemandCache
    model_id: str
    blocks: tuple[BlockId, ...]
    hit: bool
    _released: bool = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.cache.unpin(self.model_id, self.blocks)


class OnDemandCache:
    """The policy state of one on-demand node (thread-safe)."""

    def __init__(self, node: EdgeNode, policy: str) -> None:
        self.node = node
        self.policy = policy
        self._models: dict[str, tuple[BlockId, ...]] = {}
        self._sizes: dict[str, int] = {}
        capacity = node.settings.capacity_bytes
        self.cache = POLICIES[policy](
            sys.maxsize if capacity is None else capacity, self._models, self._sizes
        )
        self._lock = threading.Lock()
        self._in_use: dict[BlockId, int] = {}  # block -> responses using it
        self._serving: dict[str, int] = {}  # model -> responses streaming it
        #: Called after an eviction and when a response ends (the app: a heartbeat now).
        self.on_change: Callable[[], None] | None = None
        self._restore()

    def _learn(self, manifest: ModelManifest) -> None:
        sizes = manifest.block_sizes()
        self._models[manifest.model_id] = tuple(sizes)
        self._sizes.update({str(b): n for b, n in sizes.items()})

    def _restore(self) -> None:
        node = self.node
        with node.plan_lock:
            complete = {m.model_id for m in node.complete_models()}
            for manifest in node.manifests():
                self._learn(manifest)
                fits = (
                    self.cache.used_bytes + self.cache.missing_bytes(manifest.model_id)
                    <= self.cache.capacity_bytes
                )
                if manifest.model_id in complete and fits:
                    self.cache.insert(manifest.model_id)
                else:
                    node.drop_manifest(manifest.model_id)
            node.evict_except({BlockId(b) for b in self.cache.block_ids()})

    def models(self) -> tuple[str, ...]:
        with self._lock:
            return self.cache.cached_models()

    def _pinned(self, model_id: str) -> bool:
        return model_id in self._serving

    def lookup(self, manifest: ModelManifest, *, admit: bool = True) -> Lease:
        """Look ``manifest``'s model up (a hit touches it); on a miss with ``admit`` cache it
        (evicting by the policy). The returned lease pins the model until released.

        ``admit`` is False for a response whose blocks are all here (e.g. blocks it shares
        with a cached model, asked of this node as their holder): nothing to pull, so nothing
        to cache, and no eviction for a request this node is not the cache of."""
        node = self.node
        model_id = manifest.model_id
        with self._lock:
            self._learn(manifest)
            found = self.cache.find(model_id)
            hit = found and node.store.is_complete(manifest)
            blocks = self._models[model_id]
            for block_id in blocks:
                self._in_use[block_id] = self._in_use.get(block_id, 0) + 1
            self._serving[model_id] = self._serving.get(model_id, 0) + 1
            if not hit and admit:
                self._admit(manifest, cached=found)
        return Lease(self, model_id, blocks, hit)

    def _admit(self, manifest: ModelManifest, *, cached: bool) -> None:
        """Under ``_lock``: make the policy cache ``manifest`` and the node hold it."""
        node = self.node
        with node.plan_lock:
            if cached:  # cached, but blocks went missing (a copy skipped): pull them in again
                admission_evicted: list[str] = []
                admitted = True
            else:
                admission = self.cache.admit(manifest.model_id, pinned=self._pinned)
                admission_evicted, admitted = admission.evicted, admission.admitted
            for victim in admission_evicted:
                node.drop_manifest(victim)
            if admitted:
                node.put_manifest(manifest)
            freed = 0
            if admission_evicted:
                keep = {BlockId(b) for b in self.cache.block_ids()} | set(self._in_use)
                freed = node.evict_except(keep)
                self._changed()
                node.counters.add_cache_evictions(len(admission_evicted), freed)
                logger.info(
                    "on-demand %s node_id=%s evicted=%s bytes=%d for model_id=%s",
                    self.policy,
                    node.node_id,
                    ",".join(admission_evicted),
                    freed,
                    manifest.model_id,
                )
            if not admitted:
                logger.info(
                    "on-demand %s node_id=%s: model_id=%s served without caching "
                    "(larger than the capacity, or only models in use left to evict)",
                    self.policy,
                    node.node_id,
                    manifest.model_id,
                )

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def unpin(self, model_id: str, blocks: tuple[BlockId, ...]) -> None:
        """A response is done: release its model and blocks; delete the blocks it kept alive
        that no cached model uses any more."""
        node = self.node
        with self._lock:
            left = self._serving[model_id] - 1
            if left:
                self._serving[model_id] = left
            else:
                del self._serving[model_id]
            orphans: list[BlockId] = []
            for block_id in blocks:
                left = self._in_use[block_id] - 1
                if left:
                    self._in_use[block_id] = left
                else:
                    del self._in_use[block_id]
                    if block_id not in self.cache.refs and node.store.has(block_id):
                        orphans.append(block_id)
            if orphans:
                with node.plan_lock:
                    keep = node.referenced_blocks() | set(self._in_use)
                    for block_id in orphans:
                        if block_id not in keep:
                            node.store.delete(block_id)
        self._changed()


class LeasedPieces:
    """A response body's pieces that release their lease when the body ends, fails, is closed,
    or is dropped unsent (a client gone before the first byte): never a pin left behind."""

    def __init__(self, pieces: Iterator[Piece], lease: Lease) -> None:
        self._pieces = pieces
        self._lease = lease

    def __iter__(self) -> LeasedPieces:
        return self

    def __next__(self) -> Piece:
        try:
            return next(self._pieces)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._lease.release()
        close = getattr(self._pieces, "close", None)
        if close is not None:
            close()

    def __del__(self) -> None:
        self._lease.release()


def serve(
    cache: OnDemandCache,
    pull: PullThrough,
    repo: ServedRepo,
    windows_of: Callable[[], list[Window]],
    held: Callable[[], Iterator[Piece]],
) -> tuple[Iterator[Piece], dict[str, str]]:
    """A response body for ``repo`` on an on-demand node, and its cache headers.

    Looks the model up (admitting it on a miss when this response lacks blocks here), then
    cuts the response into windows (``windows_of``, after the lookup: its evictions never touch
    this model's blocks). Nothing missing: the ``held`` pieces, a ``hit``; else pull-through, a
    ``miss`` with the bytes pulled.
    Raises (UpstreamUnavailableError, PullBufferBusyError) before any byte, lease released.
    """
    lacking = any(w.missing for w in windows_of())
    lease = cache.lookup(repo.manifest, admit=lacking)
    try:
        windows = windows_of()
        pulled = pull.missing_bytes(windows)
        pieces = pull.serve(repo, windows) if pulled else held()
    except BaseException:
        lease.release()
        raise
    cache.node.counters.add_cache_lookup(hit=not pulled)
    headers = {CACHE_HEADER: "miss" if pulled else "hit", PULLED_HEADER: str(pulled)}
    return LeasedPieces(pieces, lease), headers
