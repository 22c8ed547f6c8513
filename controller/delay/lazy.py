"""The delay greedy's batched lazy re-evaluation: fresh gains known before they are popped.

:func:`controller.delay.solvers.greedy_placement` is a lazy (CELF) greedy: it pops the
(node, bundle) pair with the largest stale key, re-evaluates it, and takes it when its fresh
ratio is still >= the next key, else pushes it back with the fresh key. Done one pop at a
time this costs one gain call per pop; at 10k models x 200 nodes with room for many picks
most pops are pairs whose gain fell (often to zero: a node out of reach of a unit's
requesters gains only "the unit has a holder somewhere", which the first holder takes away).

:class:`FreshGains` keeps that loop's decisions and makes its gains come in batches:

- **memo**: the quantised gain of a pair under the current placement. The one-at-a-time
  loop would compute the same value at every pop of that pair until the placement changes,
  so the loop reads it from here; its pops, pushes and picks are unchanged.
- **prefetch**: when a popped pair has no memo, the stale heap tops the loop is about to pop
  are taken too: every top whose key is above the best fresh ratio seen since the last pick
  (the loop pops all of them before it can pick: a pick's ratio is >= that best), or, while
  none is known, a batch that doubles each time (1, 2, 4, ... :data:`MAX_BATCH`). They are
  pushed back unchanged (the heap is the same afterwards) and evaluated grouped by their
  missing units, one ``gains(nodes, units)`` call per group: the evaluator takes many nodes
  at once (:class:`~controller.delay.incremental.IncrementalDelay` evaluates the nodes out
  of reach of the requesters as one); groups of fewer than :data:`MANY_BELOW` pairs go
  together to the evaluator's ``gains_many`` when it has one (IncrementalDelay: one change
  per slot for many candidates, each at its own node).
- **slot-exact invalidation**: a pick (node, units) changes only the slots that request
  those units (and that node's missing units), so a memo survives the pick when its pair is
  on another node and its missing units' slots are all untouched: the evaluator would
  compute the same value (a gain reads only the schedules and holders of its own slots).

Every value in the memo is a gain the loop would have computed in the same state, so the
picks are those of the one-at-a-time loop (``lazy="single"``; tested on random instances,
the evaluation counts included). Pure code.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence

from controller.delay.model import DelayInstance

# The largest prefetch batch (heap entries popped and pushed back at once).
MAX_BATCH = 4096

# The memo is swept of stale entries when it doubles past this size.
MIN_SWEEP = 100_000

HeapEntry = tuple[float, int, str, int]  # (-ratio, tie index, node, bundle)
Missing = Callable[[str, int], tuple[list[str], int]]
BatchGains = Callable[[Sequence[str], Sequence[str]], list[int]]
ManyGains = Callable[[Sequence[tuple[str, Sequence[str]]]], list[int]]

# Groups of fewer pairs than this go to the evaluator's gains_many together, when it has one.
MANY_BELOW = 4


class FreshGains:
    """Quantised gains of (node, bundle) pairs under the current placement (module docstring)."""

    def __init__(
        self, instance: DelayInstance, gains: BatchGains, many: ManyGains | None = None
    ) -> None:
        self._slots_of_unit = instance.slots_of_unit
        self._gains = gains
        self._many = many
        # pair -> (gain, number of picks when computed, slots of its missing units)
        self._memo: dict[tuple[str, int], tuple[int, int, tuple[int, ...]]] = {}
        self._swept = MIN_SWEEP
        self._picks = 0
        self._slot_touched: dict[int, int] = {}  # slot -> number of the pick that last changed it
        self._node_touched: dict[str, int] = {}
        self._best = -math.inf  # the best fresh ratio since the last pick
        self._batch = 1  # the next prefetch size while no fresh ratio is known
        self.rows = 0  # (node, bundle) gains computed in prefetches (for the bench)

    def get(self, node_id: str, c: int) -> int | None:
        """The pair's gain now, if known."""
        hit = self._memo.get((node_id, c))
        if hit is None:
            return None
        if not self._valid(node_id, hit):
            del self._memo[node_id, c]
            return None
        return hit[0]

    def _valid(self, node_id: str, hit: tuple[int, int, tuple[int, ...]]) -> bool:
        _g, at, slots = hit
        return self._node_touched.get(node_id, -1) <= at and all(
            self._slot_touched.get(t, -1) <= at for t in slots
        )

    def put(self, node_id: str, c: int, units: Sequence[str], g: int, cost: int) -> None:
        """Record a gain computed now for the pair's missing ``units`` costing ``cost``."""
        slots = tuple({t for u in units for t in self._slots_of_unit[u]})
        self._memo[node_id, c] = (g, self._picks, slots)
        if g > 0:
            self._best = max(self._best, g / max(cost, 1))

    def picked(self, node_id: str, units: Sequence[str]) -> None:
        """``node_id`` took ``units``: memos on that node or those units' slots are stale."""
        self._picks += 1
        self._node_touched[node_id] = self._picks
        for u in units:
            for t in self._slots_of_unit[u]:
                self._slot_touched[t] = self._picks
        self._best = -math.inf
        self._batch = 1
        if len(self._memo) > 2 * self._swept:  # drop stale memos now and then (memory)
            self._memo = {k: v for k, v in self._memo.items() if self._valid(k[0], v)}
            self._swept = max(len(self._memo), MIN_SWEEP)

    def prefetch(
        self,
        heap: list[HeapEntry],
        node_id: str,
        c: int,
        units: list[str],
        missing: Missing,
        free: dict[str, int],
    ) -> None:
        """Compute the popped pair's gain with the stale tops the loop pops next."""
        batch = {(node_id, c): (units, missing(node_id, c)[1])}
        size = MAX_BATCH if self._best > -math.inf else self._batch
        taken: list[HeapEntry] = []
        while heap and len(taken) < size and -heap[0][0] > self._best:
            entry = heapq.heappop(heap)
            taken.append(entry)
            pair = (entry[2], entry[3])
            if pair in batch:
                continue
            rest, cost = missing(*pair)
            if not rest or cost > free[pair[0]] or self.get(*pair) is not None:
                continue
            batch[pair] = (rest, cost)
        for entry in taken:
            heapq.heappush(heap, entry)
        if self._best == -math.inf:
            self._batch = min(2 * self._batch, MAX_BATCH)
        groups: dict[tuple[str, ...], list[tuple[str, int]]] = {}
        for pair, (rest, _cost) in batch.items():
            groups.setdefault(tuple(rest), []).append(pair)
        few: list[tuple[str, int]] = []
        for rest_units, pairs in groups.items():
            if self._many is not None and len(pairs) < MANY_BELOW:
                few.extend(pairs)
                continue
            values = self._gains([n for n, _ in pairs], rest_units)
            self.rows += len(pairs)
            for pair, g in zip(pairs, values, strict=True):
                self.put(pair[0], pair[1], rest_units, g, batch[pair][1])
        if few and self._many is not None:
            values = self._many([(n, batch[n, c][0]) for n, c in few])
            self.rows += len(few)
            for pair, g in zip(few, values, strict=True):
                self.put(pair[0], pair[1], batch[pair][0], g, batch[pair][1])
