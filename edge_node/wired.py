"""The emulated wired links of an edge node: the backhaul (origin -> edge) and edge -> edge.

On with ``EDGE_WORLD_FILE`` (a ``trimcache.world/v1`` document, :mod:`core.world`): its
``backhaul`` and ``edge_links`` (:class:`core.world.Link`: rate, latency) are emulated on the
*pulling* side, by every transfer this node's :class:`edge_node.ingest.Fetcher` makes (plans,
repairs, pull-through, request-time migration and origin delivery for a client):

- **Latency** once per request, before it is sent.
- **Rate per block transfer.** A block of S bytes that a request carries is not stored (so
  not servable) before ``start + latency + S / rate``, ``start`` being the request's start:
  the delay model's rule (docs/delay-model.md section 3: ``prep_b = S_b / R``; "transfers of
  different PBs do not contend"). It is one :class:`core.ratelimit.TokenBucket` per block
  transfer, booked whole when the request starts; the blocks of one request (a coalesced
  origin Range read, a peer batch) therefore run in parallel, as in the model. A contended
  link (one bucket shared by all transfers) is what :mod:`core.link` emulates for the
  origin's direct clients; the model has no contended backhaul (section 8, "not modelled").

Requests to the origin carry :data:`WIRED_HEADER`: the origin's own link emulation (the
testbed shapes it with the world's backhaul for direct clients) leaves them alone, so a pull
is emulated once.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from core.link import WIRED_HEADER
from core.ratelimit import TokenBucket
from core.world import Link, World

__all__ = ["WIRED_HEADER", "LinkKind", "Transfer", "WiredLinks", "wired_links"]

LinkKind = Literal["backhaul", "edge"]


@dataclass(frozen=True, slots=True)
class Transfer:
    """One request on a wired link: when each of its blocks may count as arrived."""

    deadlines: tuple[float, ...]

    def hold(self, index: int) -> None:
        """Block this thread until block ``index`` of the request has had its line time."""
        delay = self.deadlines[index] - time.monotonic()
        if delay > 0:
            time.sleep(delay)


@dataclass(frozen=True, slots=True)
class WiredLinks:
    """The world's backhaul and edge-to-edge links, as this node emulates them."""

    backhaul: Link
    edge: Link

    def link(self, kind: LinkKind) -> Link:
        return self.backhaul if kind == "backhaul" else self.edge

    def start(
        self, kind: LinkKind, sizes: Sequence[int], *, since: float | None = None
    ) -> Transfer:
        """A request of blocks ``sizes`` starts on link ``kind``: sleep its latency, book each
        block's line time (one bucket per block transfer: they do not contend).

        ``since``: the transfers began then (a pull of many blocks, whose requests a worker
        pool runs a few at a time): each block is due ``latency + S / rate`` after it, as in
        the model where every PB's transfer starts at once; no sleep before the request."""
        link = self.link(kind)
        if since is None:
            if link.latency_ms > 0:
                time.sleep(link.latency_ms / 1000.0)
            begin = time.monotonic()
        else:
            begin = since + link.latency_ms / 1000.0
        rate = link.rate_bytes_per_s
        if rate is None:
            return Transfer(tuple(begin for _ in sizes))
        # One bucket per block transfer, booked whole: due its line time after ``begin``.
        return Transfer(tuple(begin + TokenBucket(rate).reserve(n) for n in sizes))


@functools.lru_cache(maxsize=8)
def _load(path: Path) -> WiredLinks:
    world = World.load(path)
    return WiredLinks(world.backhaul, world.edge_links)


def wired_links(world_file: Path | None) -> WiredLinks | None:
    """The node's wired links (None without a world file)."""
    return None if world_file is None else _load(Path(world_file))
