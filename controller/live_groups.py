"""Live broadcast groups in routing (issue 17 item 4: "routing orders sources by expected delay
including migration and the current broadcast groups").

Edges with an emulated radio and a broadcast window report in every heartbeat the blocks they
are broadcasting or have queued (``NodeHeartbeat.broadcast``: size, bytes on the air, expected
start and end; edge_node/cluster_follow.py), and beat at once when they open a group. This
module keeps that state apart from the routing snapshot, so a route answer stays one cached
body per routing stamp (:mod:`controller.route_cache`) and live groups never move the stamp:

- **Store.** :func:`store` writes one field per node of the Redis hash ``ctl:live-groups``
  (the node's groups with wall-clock start and end), removes it when the node reports none,
  and keeps the hash no longer than its latest end (+ a heartbeat's expiry).
- **View.** :class:`LiveGroups` reads the hash at most every :data:`LIVE_TTL_S` (one HGETALL,
  in a worker thread) and drops groups that have ended: block id -> the groups carrying it.
- **Per-block delivery hint.** With the delay objective and a client position,
  :meth:`LiveGroups.apply` takes the cached route body and, for each of its blocks in a live
  group of a node the route already lists for that block, costs joining the group the delay
  model's way: the group's remaining time (its expected end) plus, when it is on the air, the
  missed head (the share already sent) as unicast airtime from that node; latency as every
  option. When that beats the route's ``delivery[block].expected_ms`` (the block alone, per
  :mod:`controller.delay_routing`), the node goes first in ``blocks[block]`` and
  ``delivery[block]`` says ``{"source": i, "how": "held", "broadcast": true, "expected_ms"}``.
  Routes without a live group of theirs are answered as cached (no decode); those with one
  are re-encoded once per (view, :data:`LIVE_TTL_S` tick, model, point) and kept in a small
  LRU. The estimate ignores that a weaker new member slows the group (its rate is the weakest
  member's) and other edges' bookings of a shared medium.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import anyio.to_thread

from controller import delay_routing
from controller.state import RedisState
from core.wire import LiveGroup

if TYPE_CHECKING:
    from controller.route_cache import RouteCache

KEY = "ctl:live-groups"
#: Seconds a read of the live groups is used before the next (and the time step of hints).
LIVE_TTL_S = 0.25
#: Re-encoded routes kept (model x point x view x tick).
MAX_HINTED = 256


@dataclass(frozen=True, slots=True)
class Group:
    """One block of one node's live groups, wall-clock times (``time.time()``)."""

    node_id: str
    size_bytes: int
    sent_bytes: int
    starts_at: float
    ends_at: float


def store(
    state: RedisState, node_id: str, groups: Sequence[LiveGroup], *, now: float, keep_s: float
) -> None:
    """Record ``node_id``'s live groups of a heartbeat received at ``now`` (none: remove)."""
    if not groups:
        state._call(lambda: state.client.hdel(KEY, node_id))
        return
    doc = [
        [g.block_id, g.size_bytes, g.sent_bytes, now + g.starts_in_s, now + g.ends_in_s]
        for g in groups
    ]
    last = now + max(g.ends_in_s for g in groups)
    ttl_ms = max(1, int((last - now + keep_s) * 1000))

    def write() -> None:
        pipe = state.client.pipeline(transaction=False)
        pipe.hset(KEY, node_id, json.dumps(doc, separators=(",", ":")))
        pipe.pexpire(KEY, ttl_ms, gt=True)
        pipe.pexpire(KEY, ttl_ms, nx=True)
        pipe.execute()

    state._call(write)


def parse(raw: Mapping[str, str], now: float) -> dict[str, list[Group]]:
    """The hash's fields as block id -> live groups (ended ones and bad fields skipped)."""
    out: dict[str, list[Group]] = {}
    for node_id, text in sorted(raw.items()):
        try:
            rows = json.loads(text)
            for block_id, size, sent, starts_at, ends_at in rows:
                if float(ends_at) > now:
                    group = Group(node_id, int(size), int(sent), float(starts_at), float(ends_at))
                    out.setdefault(str(block_id), []).append(group)
        except (ValueError, TypeError):
            continue
    return out


def join_ms(group: Group, air_ms_per_byte: float, latency_ms: float, now: float) -> float:
    """The expected time for a client joining ``group`` now to have the whole block: the
    rest of the group, then the missed head as unicast airtime."""
    span = group.ends_at - group.starts_at
    if now <= group.starts_at or span <= 0:
        head = 0.0
    else:
        head = group.size_bytes * min(1.0, (now - group.starts_at) / span)
    return latency_ms + max(0.0, group.ends_at - now) * 1000.0 + head * air_ms_per_byte


def hint_route(
    route: dict[str, Any],
    groups: Mapping[str, list[Group]],
    *,
    air_ms_per_byte: Mapping[str, float],
    latency_ms: float,
    now: float,
) -> bool:
    """Put, for each block of ``route`` in a live group, the group's node first when joining
    it is faster (module docstring); True when the route changed."""
    delivery: dict[str, dict[str, Any]] = route.get("delivery") or {}
    blocks: dict[str, list[int]] = route["blocks"]
    sources: list[dict[str, Any]] = route["sources"]
    index = {s.get("node_id"): i for i, s in enumerate(sources) if s.get("kind") == "edge"}
    sizes: dict[str, int] = {}
    changed = False
    for block_id, live in groups.items():
        listed = blocks.get(block_id)
        if listed is None:
            continue
        if not sizes:
            sizes = _block_sizes(route)
        current = delivery.get(block_id, {}).get("expected_ms")
        if current is None:
            first = sources[listed[0]].get("node_id")
            air = air_ms_per_byte.get(first) if first is not None else None
            current = math.inf if air is None else latency_ms + sizes.get(block_id, 0) * air
        best: tuple[float, int] | None = None
        for group in live:
            i = index.get(group.node_id)
            air = air_ms_per_byte.get(group.node_id)
            if (
                i is None
                or i not in listed
                or air is None
                or group.size_bytes != sizes.get(block_id)
            ):
                continue
            ms = join_ms(group, air, latency_ms, now)
            if ms < current and (best is None or ms < best[0]):
                best = (ms, i)
        if best is None:
            continue
        ms, i = best
        blocks[block_id] = [i, *(j for j in listed if j != i)]
        delivery[block_id] = {
            "source": i,
            "how": "held",
            "broadcast": True,
            "expected_ms": round(ms, 3),
        }
        changed = True
    if changed:
        route["delivery"] = delivery
    return changed


def _block_sizes(route: Mapping[str, Any]) -> dict[str, int]:
    """Block id -> size of a route document's manifest (``files[].blocks``: id, offset, length)."""
    manifest = cast(dict[str, Any], route["manifest"])
    sizes: dict[str, int] = {}
    for tensor_file in manifest.get("files", []):
        for row in tensor_file.get("blocks", []):
            sizes.setdefault(str(row[0]), int(row[2]))
    return sizes


class LiveGroups:
    """The controller process's view of the live groups, and the routes hinted with them."""

    def __init__(self, state: RedisState) -> None:
        self.state = state
        self._view: dict[str, list[Group]] = {}
        self._raw: dict[str, str] = {}
        self._read_at = -math.inf
        self._version = 0
        self._lock: asyncio.Lock | None = None
        self._hinted: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()
        self.hinted = 0  # routes answered with a broadcast hint

    def may_matter(self) -> bool:
        """Whether a route may need a hint now: live groups were seen, or the last read is
        older than :data:`LIVE_TTL_S` (the route cache's fast path then steps aside)."""
        return bool(self._view) or time.monotonic() - self._read_at >= LIVE_TTL_S

    async def view(self) -> dict[str, list[Group]]:
        """Block id -> live groups, at most :data:`LIVE_TTL_S` old."""
        if time.monotonic() - self._read_at < LIVE_TTL_S:
            return self._view
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if time.monotonic() - self._read_at >= LIVE_TTL_S:
                client = self.state.client
                raw = cast(
                    dict[str, str],
                    await anyio.to_thread.run_sync(
                        lambda: self.state._call(lambda: client.hgetall(KEY))
                    ),
                )
                if raw != self._raw:
                    self._raw, self._version = raw, self._version + 1
                    self._hinted.clear()
                self._view = parse(raw, time.time())
                self._read_at = time.monotonic()
        return self._view

    async def apply(
        self,
        routes: RouteCache,
        model_id: str,
        *,
        area_id: str | None,
        point: tuple[float, float] | None,
        body: bytes,
    ) -> bytes:
        """``body`` (a route of :class:`RouteCache`) with the live groups' hints (module
        docstring); unchanged unless the delay objective is on and a group matters."""
        if routes.planner.settings.objective != "delay":
            return body
        view = await self.view()
        if not view:
            return body
        context = routes.context(area_id, point)
        if context is None:
            return body
        topology, where, positions = context
        tick = int(time.monotonic() / LIVE_TTL_S)
        key = (self._version, tick, model_id, where, body)
        hit = self._hinted.get(key)
        if hit is not None:
            return hit
        route = json.loads(body)
        if not any(b in view for b in route["blocks"]):
            out = body
        else:
            air = {n: delay_routing.airtime_ms(topology, where, p, 1) for n, p in positions.items()}
            changed = hint_route(
                route, view, air_ms_per_byte=air, latency_ms=topology.channel.latency_ms,
                now=time.time(),
            )  # fmt: skip
            out = body
            if changed:
                self.hinted += 1
                out = json.dumps(
                    route, ensure_ascii=False, allow_nan=False, separators=(",", ":")
                ).encode("utf-8")
        self._hinted[key] = out
        while len(self._hinted) > MAX_HINTED:
            self._hinted.popitem(last=False)
        return out
