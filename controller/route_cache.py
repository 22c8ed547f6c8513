"""Route answers cached per routing state: one Redis GET per request instead of a rebuild.

A route (:func:`controller.routing.build_route`) depends only on the catalogue entry of the
model, the live nodes (url, position, confirmed holdings, dropping, cache policy), the active
topology, the client's point (from its area or x/y) and the origin URL. This module keeps:

- a *snapshot* of those inputs (live nodes, catalogue, topology, block sets) tagged with the
  ``ctl:routing:stamp`` token it was read under and a *deadline*: the read time plus the
  smallest remaining TTL of the snapshot's node keys;
- a bounded LRU of encoded route bodies per ``(model_id, point)`` of the current snapshot.

The rule that keeps cached routes exact: every request reads the stamp (one GET, on the
event loop with an asyncio client: a cached answer never waits for a worker thread). The snapshot
and its routes are used only while the stamp is unchanged **and** the monotonic clock is before
the deadline; otherwise the inputs are re-read (and the LRU emptied). Every write a route may
depend on rewrites the stamp in the same Redis transaction (:mod:`controller.state`: a node
joining, a heartbeat changing a routed field, a plan response or push changing holdings or
dropping, a node deleted or pruned, a catalogue add/remove, a topology, a placement). A node
that stops heartbeating needs no write: its key's TTL runs out no earlier than the deadline,
so after it the re-read no longer sees the node. A route therefore never names a node after
its heartbeat expiry, and never misses a change later than the request after the write. A
snapshot whose stamp moved while it was read serves that one request and is not kept.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import anyio.to_thread

from controller.errors import ModelNotFoundError
from controller.planner import Planner
from controller.routing import build_route
from controller.state import CatalogueEntry, NodeRecord, RedisState
from controller.topology import Topology

#: Encoded routes kept per snapshot (model x distinct points); the oldest used go first.
MAX_ROUTES = 4096

Point = tuple[float, float] | None


@dataclass(frozen=True, slots=True)
class _Snapshot:
    stamp: str
    deadline: float  # time.monotonic() after which a node of the snapshot may have expired
    nodes: list[NodeRecord]
    catalogue: dict[str, CatalogueEntry]
    topology: Topology
    blocks_by_model: dict[str, frozenset[str]]


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
            stamp, deadline, nodes, catalogue, topology, self.planner.blocks_by_model(held)
        )
        return snapshot, self.state.routing_stamp() == stamp

    def _current(self) -> tuple[_Snapshot, bool]:
        stamp = self.state.routing_stamp()
        snapshot = self._snapshot
        if (
            snapshot is not None
            and snapshot.stamp == stamp
            and time.monotonic() < snapshot.deadline
        ):
            return snapshot, True
        snapshot, keep = self._load(stamp)
        if keep:
            with self._lock:
                self._snapshot = snapshot
                self._routes.clear()
        return snapshot, keep

    async def route_async(self, model_id: str, *, area_id: str | None, point: Point) -> bytes:
        """:meth:`route` on the event loop: a cached body after one non-blocking stamp read;
        anything else (a re-read, a rebuild, an error) in a worker thread."""
        stamp = await self.state.routing_stamp_async()
        snapshot = self._snapshot
        if (
            snapshot is not None
            and snapshot.stamp == stamp
            and time.monotonic() < snapshot.deadline
            and model_id in snapshot.catalogue
        ):
            key = (model_id, self._point(snapshot, area_id, point))
            with self._lock:
                body = self._routes.get(key) if self._snapshot is snapshot else None
                if body is not None:
                    self._routes.move_to_end(key)
                    self.hits += 1
                    return body
        return await anyio.to_thread.run_sync(
            functools.partial(self.route, model_id, area_id=area_id, point=point)
        )

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
