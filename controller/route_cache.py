"""Route answers cached per routing state: one Redis GET per request instead of a rebuild.

A route (:func:`controller.routing.build_route`) depends only on the catalogue entry of the
model (and, for a LoRA adapter, which catalogued model is its base), the live nodes (url,
position, confirmed holdings, dropping, cache policy), the active topology, the client's point
(from its area or x/y) and the origin URL. This module keeps:

- a *snapshot* of those inputs (live nodes, catalogue, topology, block sets) tagged with the
  ``ctl:routing:stamp`` token it was read under and a *deadline*: the read time plus the
  smallest remaining TTL of the snapshot's node keys;
- a bounded LRU of encoded route bodies per ``(model_id, point)`` of the current snapshot.

The rule that keeps cached routes exact: the snapshot and its routes are used only while the
``ctl:routing:stamp`` is unchanged **and** the monotonic clock is before the deadline; otherwise
the inputs are re-read (and the LRU emptied). Every write a route may depend on rewrites the
stamp in the same Redis transaction and publishes it on ``ctl:routing:changed``
(:mod:`controller.state`: a node joining, a heartbeat changing a routed field, a plan response
or push changing holdings or dropping, a node deleted or pruned, a catalogue add/remove, a
topology, a placement). A node that stops heartbeating needs no write: its key's TTL runs out no
earlier than the deadline, so after it the re-read no longer sees the node. A snapshot whose
stamp moved while it was read serves that one request and is not kept.

How a request learns the stamp, without a Redis read on the hot path: a *listener* task on the
event loop subscribes to ``ctl:routing:changed`` and re-reads the stamp (one GET) after every
announcement and every :data:`STAMP_CHECK_S` without one. A cached body is answered with no
Redis command while the stamp it last read equals the snapshot's, that read *started* less than
:data:`STAMP_TRUST_S` ago, and no write of this process that may move the stamp
(``RedisState.stamp_writes``) has finished since it started. Otherwise the request reads the
stamp itself (one async GET, as before the listener existed), and a re-read or rebuild runs in a
worker thread. So:

- in one process, a route asked after a write returned always reflects it (read your writes);
- across replicas, a route reflects a write of another process at most :data:`STAMP_TRUST_S`
  (1 s) after that write, whatever happens to the subscription (a lost announcement, a dead
  connection, a stalled listener): the trusted read started before the write, and trust ends
  1 s after it started. With the subscription up the delay is the announcement's (well under
  a millisecond on loopback) plus one GET.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import anyio.to_thread

from controller.adapters import base_models
from controller.errors import ModelNotFoundError, StateUnavailableError
from controller.live_groups import LiveGroups
from controller.planner import Planner
from controller.routing import build_route
from controller.state import CatalogueEntry, NodeRecord, RedisState
from controller.topology import Topology

logger = logging.getLogger(__name__)

#: Encoded routes kept per snapshot (model x distinct points); the oldest used go first.
MAX_ROUTES = 4096
#: Seconds a stamp read by the listener is trusted without another read: the longest a
#: replica answers from its snapshot after another process moved the stamp (module docstring).
STAMP_TRUST_S = 1.0
#: Seconds between the listener's reads of the stamp when no change is announced.
STAMP_CHECK_S = 0.25

Point = tuple[float, float] | None


@dataclass(frozen=True, slots=True)
class _Snapshot:
    stamp: str
    deadline: float  # time.monotonic() after which a node of the snapshot may have expired
    nodes: list[NodeRecord]
    catalogue: dict[str, CatalogueEntry]
    topology: Topology
    blocks_by_model: dict[str, frozenset[str]]
    #: Adapter model id -> its base's (:func:`controller.adapters.base_models`).
    bases: dict[str, str]


def _fresh(snapshot: _Snapshot | None, stamp: str | None) -> bool:
    """Whether ``snapshot`` still answers for ``stamp``: same stamp, no node of it expired."""
    return snapshot is not None and snapshot.stamp == stamp and time.monotonic() < snapshot.deadline


class RouteCache:
    """Encoded ``GET /v1/routes/{model_id}`` bodies for one controller process."""

    def __init__(
        self, state: RedisState, planner: Planner, origin_url: str, *, max_routes: int = MAX_ROUTES
    ) -> None:
        self.state, self.planner, self.origin_url = state, planner, origin_url
        self.max_routes = max_routes
        self._lock = threading.Lock()
        self._snapshot: _Snapshot | None = None
        self._routes: OrderedDict[tuple[str, Point], bytes] = OrderedDict()
        self.hits = 0
        self.misses = 0
        # The listener's view: the stamp it last read, when that read started (monotonic) and
        # the state's stamp_writes count before it (a later local write distrusts it).
        self._known: tuple[str, float, int] | None = None
        self._listener: asyncio.Task[None] | None = None
        #: Live broadcast groups: per-block hints on top of the cached bodies (delay objective).
        self.live = LiveGroups(state)

    # -- the stamp listener -----------------------------------------------------------------
    def start(self) -> None:
        """Start the stamp listener on the running event loop (the app's lifespan)."""
        if self._listener is None:
            self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def aclose(self) -> None:
        task, self._listener = self._listener, None
        # Cancelled again until it ends: a cancel that lands in redis-py's read timeout can be
        # swallowed (the task then waits for its next message forever).
        for _ in range(50):
            if task is None or task.done():
                break
            task.cancel()
            await asyncio.wait({task}, timeout=0.1)
        self._known = None

    async def _refresh(self) -> None:
        writes, started = self.state.stamp_writes, time.monotonic()
        stamp = await self.state.routing_stamp_async()
        if stamp is not None and writes == self.state.stamp_writes:
            self._known = (stamp, started, writes)
        else:
            self._known = None

    async def _listen(self) -> None:
        """Subscribe to stamp announcements; re-read the stamp after each (and every
        :data:`STAMP_CHECK_S`). While it runs, a cached route needs no Redis read."""
        down = False
        while True:
            try:
                async with self.state.routing_changes() as wait:
                    while True:
                        await self._refresh()  # after subscribing: no announcement missed
                        if down:
                            logger.info("route stamp listener: Redis is back")
                            down = False
                        await wait(STAMP_CHECK_S)
            except StateUnavailableError as exc:
                self._known = None
                if not down:
                    logger.warning("route stamp listener: %s", exc)
                    down = True
                await asyncio.sleep(STAMP_CHECK_S)
            except Exception:  # noqa: BLE001 - routes fall back to a read per request
                self._known = None
                logger.exception("route stamp listener failed")
                await asyncio.sleep(STAMP_CHECK_S)

    def _trusted_stamp(self) -> str | None:
        """The listener's stamp while it may stand for a read of this request (or None)."""
        known = self._known
        if (
            known is None
            or known[2] != self.state.stamp_writes
            or time.monotonic() - known[1] >= STAMP_TRUST_S
        ):
            return None
        return known[0]

    def cached(self, model_id: str, *, area_id: str | None, point: Point) -> bytes | None:
        """A cached body answered without any Redis read, while the listener vouches for the
        snapshot's stamp (None: ask :meth:`route_async`)."""
        snapshot = self._snapshot
        if snapshot is None or not _fresh(snapshot, self._trusted_stamp()):
            return None
        if self.planner.settings.objective == "delay" and self.live.may_matter():
            return None  # the route may need a live group's hint (controller.live_groups)
        return self._hit(snapshot, (model_id, self._point(snapshot, area_id, point)))

    def _hit(self, snapshot: _Snapshot, key: tuple[str, Point]) -> bytes | None:
        """The cached body of ``key`` while ``snapshot`` is still the current one (a hit moves
        it to the LRU's end)."""
        with self._lock:
            body = self._routes.get(key) if self._snapshot is snapshot else None
            if body is not None:
                self._routes.move_to_end(key)
                self.hits += 1
        return body

    def _load(self, stamp: str) -> tuple[_Snapshot, bool]:
        """Read the inputs; ``(snapshot, whether it may be kept for stamp)``."""
        started = time.monotonic()
        nodes, first_expiry_s = self.state.live_nodes_ttl()
        catalogue = self.planner.catalogue()
        topology = self.planner.active_topology(nodes).topology
        held_ids = {m for n in nodes for m in n.serving_models}
        held = [catalogue[m] for m in sorted(held_ids) if m in catalogue]
        deadline = started + first_expiry_s if first_expiry_s is not None else float("inf")
        snapshot = _Snapshot(
            stamp,
            deadline,
            nodes,
            catalogue,
            topology,
            self.planner.blocks_by_model(held),
            base_models([e.summary() for e in catalogue.values()]),
        )
        return snapshot, self.state.routing_stamp() == stamp

    def _current(self) -> tuple[_Snapshot, bool]:
        stamp = self.state.routing_stamp()
        snapshot = self._snapshot
        if snapshot is not None and _fresh(snapshot, stamp):
            return snapshot, True
        snapshot, keep = self._load(stamp)
        if keep:
            with self._lock:
                self._snapshot = snapshot
                self._routes.clear()
        return snapshot, keep

    async def route_async(self, model_id: str, *, area_id: str | None, point: Point) -> bytes:
        """:meth:`route` on the event loop: a cached body without a Redis read while the
        listener vouches for the stamp (:meth:`cached`), else after one non-blocking stamp read;
        anything else (a re-read, a rebuild, an error) in a worker thread."""
        body = self.cached(model_id, area_id=area_id, point=point)
        if body is not None:
            return body
        stamp = await self.state.routing_stamp_async()
        snapshot = self._snapshot
        if snapshot is not None and _fresh(snapshot, stamp) and model_id in snapshot.catalogue:
            body = self._hit(snapshot, (model_id, self._point(snapshot, area_id, point)))
            if body is not None:
                return body
        return await anyio.to_thread.run_sync(
            functools.partial(self.route, model_id, area_id=area_id, point=point)
        )

    def context(
        self, area_id: str | None, point: Point
    ) -> tuple[Topology, tuple[float, float], dict[str, tuple[float, float]]] | None:
        """The current snapshot's topology, the client's point and the live nodes' positions
        (for :mod:`controller.live_groups`); None: no snapshot yet, or no point."""
        snapshot = self._snapshot
        if snapshot is None:
            return None
        where = self._point(snapshot, area_id, point)
        if where is None:
            return None
        topology = snapshot.topology
        positions = {
            n.node_id: topology.positions.get(n.node_id, n.position) for n in snapshot.nodes
        }
        return topology, where, positions

    @staticmethod
    def _point(snapshot: _Snapshot, area_id: str | None, point: Point) -> Point:
        if point is None and area_id is not None and area_id in snapshot.topology.areas:
            area = snapshot.topology.areas[area_id]
            return (area.x_m, area.y_m)
        return point

    def route(self, model_id: str, *, area_id: str | None, point: Point) -> bytes:
        """The JSON body of the route of ``model_id`` for a client at ``point`` (or in
        ``area_id`` when no point is given; an unknown area ranks as if no position).

        Raises:
            ModelNotFoundError: the model is not in the catalogue.
        """
        snapshot, kept = self._current()
        entry = snapshot.catalogue.get(model_id)
        if entry is None:
            raise ModelNotFoundError(model_id)
        point = self._point(snapshot, area_id, point)
        key = (model_id, point)
        with self._lock:
            body = self._routes.get(key) if kept and self._snapshot is snapshot else None
            if body is not None:
                self._routes.move_to_end(key)
                self.hits += 1
                return body
            self.misses += 1
        body = json.dumps(
            build_route(
                entry,
                nodes=snapshot.nodes,
                blocks_by_model=snapshot.blocks_by_model,
                topology=snapshot.topology,
                point=point,
                origin_url=self.origin_url,
                objective=self.planner.settings.objective,
                migration=self.planner.settings.route_migration,
                base_model_id=snapshot.bases.get(model_id),
            ),
            ensure_ascii=False,
            allow_nan=False,
            separators=(",", ":"),
        ).encode("utf-8")
        with self._lock:
            if kept and self._snapshot is snapshot:
                self._routes[key] = body
                while len(self._routes) > self.max_routes:
                    self._routes.popitem(last=False)
        return body
