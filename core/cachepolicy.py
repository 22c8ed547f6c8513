"""Online cache policies ``lru`` and ``lfu`` over whole models (metadata only, pure).

One place for the policy logic that both the placement simulator
(:mod:`controller.placement.online`) and on-demand edge nodes (:mod:`edge_node.ondemand`) run.

Each cache holds *models* whose storage is the union of their blocks (a block shared by two
cached models is stored and counted once). The policies share one template method,
:meth:`OnlineCache.get` (after libCacheSim's ``cache_get_base``): ``find``; on a miss,
``to_evict`` + ``evict`` until the model's missing blocks fit, then ``insert``. They hold ids,
sizes and counters, never bytes.

- ``lru`` evicts the least recently used model;
- ``lfu`` the least frequently used one (requests counted while the model is cached, reset on
  eviction; ties: least recently used).

:meth:`OnlineCache.admit` is :meth:`~OnlineCache.get`'s miss path for a caller whose models may
be *pinned* (an edge node never evicts blocks a response is streaming): pinned models are
skipped in eviction order. ``models`` and ``blocks`` are read at call time, so a caller may add
entries to them (an edge learns models as they are requested).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(slots=True)
class Admission:
    """What :meth:`OnlineCache.admit` did: whether the model is now cached, and the models it
    evicted (in eviction order) to make room."""

    admitted: bool
    evicted: list[str] = field(default_factory=list)


class OnlineCache:
    """A model cache with union-of-blocks storage; subclasses supply the eviction hooks.

    Args:
        capacity_bytes: the server's capacity.
        models: model id -> block ids.
        blocks: block id -> size in bytes.
    """

    def __init__(
        self,
        capacity_bytes: int,
        models: Mapping[str, Sequence[str]],
        blocks: Mapping[str, int],
    ) -> None:
        self.capacity_bytes = capacity_bytes
        self.models = models
        self.blocks = blocks
        self.refs: dict[str, int] = {}  # block id -> number of cached models using it
        self.used_bytes = 0
        self.clock = 0

    # Template method ---------------------------------------------------------------------
    def get(self, model_id: str) -> bool:
        """Request ``model_id``: True on a hit; on a miss insert it (evicting as needed)."""
        if self.find(model_id):
            return True
        self.admit(model_id)
        return False

    def admit(self, model_id: str, *, pinned: Callable[[str], bool] | None = None) -> Admission:
        """Insert a model that missed, evicting in policy order (skipping ``pinned`` models)
        until its missing blocks fit. A model larger than the capacity is not admitted and
        evicts nothing; one that cannot fit because of pinned models is not admitted either
        (what was evicted on the way stays evicted)."""
        out = Admission(admitted=False)
        if self.contains(model_id):
            self.touch(model_id)
            out.admitted = True
            return out
        if self.size_bytes(self.models[model_id]) > self.capacity_bytes:
            return out
        while self.used_bytes + self.missing_bytes(model_id) > self.capacity_bytes:
            victim = next(
                (m for m in self.eviction_order() if pinned is None or not pinned(m)), None
            )
            if victim is None:
                return out
            self.evict(victim)
            out.evicted.append(victim)
        self.insert(model_id)
        out.admitted = True
        return out

    # Hooks ---------------------------------------------------------------------------------
    def find(self, model_id: str) -> bool:
        """Hit test; updates metadata on a hit. A model whose blocks are all present (brought by
        other models) is a hit too, and becomes cached at no cost."""
        self.clock += 1
        if self.contains(model_id):
            self.touch(model_id)
            return True
        if all(b in self.refs for b in self.models[model_id]):
            self.insert(model_id)
            return True
        return False

    def insert(self, model_id: str) -> None:
        for block_id in self.models[model_id]:
            if block_id not in self.refs:
                self.refs[block_id] = 0
                self.used_bytes += self.blocks[block_id]
            self.refs[block_id] += 1
        self.add_item(model_id)

    def evict(self, model_id: str) -> None:
        self.remove_item(model_id)
        for block_id in self.models[model_id]:
            self.refs[block_id] -= 1
            if self.refs[block_id] == 0:
                del self.refs[block_id]
                self.used_bytes -= self.blocks[block_id]

    def to_evict(self) -> str:
        return self.eviction_order()[0]

    def eviction_order(self) -> list[str]:
        """Cached models, first to evict first."""
        raise NotImplementedError

    def contains(self, model_id: str) -> bool:
        raise NotImplementedError

    def touch(self, model_id: str) -> None:
        raise NotImplementedError

    def add_item(self, model_id: str) -> None:
        raise NotImplementedError

    def remove_item(self, model_id: str) -> None:
        raise NotImplementedError

    def cached_models(self) -> tuple[str, ...]:
        raise NotImplementedError

    # Helpers -------------------------------------------------------------------------------
    def size_bytes(self, block_ids: Sequence[str]) -> int:
        return sum(self.blocks[b] for b in set(block_ids))

    def missing_bytes(self, model_id: str) -> int:
        return sum(self.blocks[b] for b in set(self.models[model_id]) if b not in self.refs)

    def block_ids(self) -> frozenset[str]:
        return frozenset(self.refs)


class LRUCache(OnlineCache):
    """Evicts the least recently used model."""

    def __init__(
        self, capacity_bytes: int, models: Mapping[str, Sequence[str]], blocks: Mapping[str, int]
    ) -> None:
        super().__init__(capacity_bytes, models, blocks)
        self.order: OrderedDict[str, None] = OrderedDict()

    def contains(self, model_id: str) -> bool:
        return model_id in self.order

    def touch(self, model_id: str) -> None:
        self.order.move_to_end(model_id)

    def add_item(self, model_id: str) -> None:
        self.order[model_id] = None

    def remove_item(self, model_id: str) -> None:
        del self.order[model_id]

    def to_evict(self) -> str:
        return next(iter(self.order))

    def eviction_order(self) -> list[str]:
        return list(self.order)

    def cached_models(self) -> tuple[str, ...]:
        return tuple(self.order)


class LFUCache(OnlineCache):
    """Evicts the least frequently used model (ties: least recently used)."""

    def __init__(
        self, capacity_bytes: int, models: Mapping[str, Sequence[str]], blocks: Mapping[str, int]
    ) -> None:
        super().__init__(capacity_bytes, models, blocks)
        self.meta: dict[str, tuple[int, int]] = {}  # model id -> (count, last use)

    def contains(self, model_id: str) -> bool:
        return model_id in self.meta

    def touch(self, model_id: str) -> None:
        count, _ = self.meta[model_id]
        self.meta[model_id] = (count + 1, self.clock)

    def add_item(self, model_id: str) -> None:
        self.meta[model_id] = (1, self.clock)

    def remove_item(self, model_id: str) -> None:
        del self.meta[model_id]

    def to_evict(self) -> str:
        return min(self.meta, key=self.meta.__getitem__)

    def eviction_order(self) -> list[str]:
        return sorted(self.meta, key=self.meta.__getitem__)

    def cached_models(self) -> tuple[str, ...]:
        return tuple(self.meta)


CacheFactory = Callable[[int, Mapping[str, Sequence[str]], Mapping[str, int]], OnlineCache]
POLICIES: Mapping[str, CacheFactory] = {"lru": LRUCache, "lfu": LFUCache}
