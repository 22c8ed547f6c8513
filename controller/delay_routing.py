"""Per-block delivery of a route under the delay model: held, migrate (edge to edge) or origin.

For a client at a point, the *serving edge* is its home in the delay model
(docs/delay-model.md section 2): the planned (non on-demand) live node with the largest SNR at
the point, i.e. the nearest one, ties by node id. Each block b of S bytes can then reach the
client three ways, each costed with the delay model's formulas (sections 3-5, one user,
unicast: ``airtime = 8 S / (W log2(1 + gamma))`` from :func:`controller.delay.model.airtime_s`,
gamma from :func:`~controller.delay.model.snr_linear` with the topology's channel):

- ``held``: a node n that holds b sends it: ``airtime(n)``;
- ``migrate``: the serving edge h lacks b and a neighbour n holds it: n sends b to h over the
  edge-to-edge link, h delivers it: ``prep + airtime(h)`` with ``prep = 8 S / backhaul_bps``
  (section 3's migration). The holder chosen is the one nearest to h (ties by id);
- ``origin``: ``8 S / origin_bps + airtime(h)`` (section 3's cloud fetch).

Every option adds the topology's ``latency_ms``. The block's delivery is the option with the
least expected time; exact ties prefer ``held``, then ``migrate``, then ``origin`` (then node
id): a migration that is no faster than reading the far holder directly is not made.

:func:`order_by_delay` is the delay objective's ordering of a block's candidates (all the
options above, fastest first, the origin last).

Hook for broadcast groups: a block already being broadcast in the client's cluster would cost
only the rest of its airtime; :func:`block_options` takes every cost from ``air_ms`` and
``prep`` computed here, so a broadcast-aware estimate replaces :func:`airtime_ms` for the
blocks of a live group (not done yet: this module knows no broadcast state).

Pure code: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from controller.delay.model import airtime_s, snr_linear
from controller.topology import Topology

How = Literal["held", "migrate", "origin"]
_HOW_RANK: Mapping[str, int] = {"held": 0, "migrate": 1, "origin": 2}

Point = tuple[float, float]


@dataclass(frozen=True, slots=True)
class BlockOption:
    """One way a block reaches the client: who sends it (None: the origin) and how."""

    node_id: str | None
    how: How
    expected_ms: float
    migrate_from: str | None = None

    def key(self) -> tuple[float, int, str]:
        return (self.expected_ms, _HOW_RANK[self.how], self.node_id or "")


def _distance(a: Point, b: Point) -> float:
    return math.hypot(a[0] - b[0], a[1] - b[1])


def airtime_ms(topology: Topology, point: Point, position: Point, nbytes: int) -> float:
    """The delay model's unicast airtime of ``nbytes`` from a node at ``position`` to a user
    at ``point``, in milliseconds (no latency)."""
    ch = topology.channel
    snr = snr_linear(
        _distance(point, position),
        tx_power_dbm=ch.tx_power_dbm,
        noise_dbm_per_hz=ch.noise_dbm_per_hz,
        bandwidth_hz=ch.bandwidth_hz,
    )
    return airtime_s(nbytes, snr, ch.bandwidth_hz) * 1000.0


def serving_edge(positions: Mapping[str, Point], point: Point | None) -> str | None:
    """The delay model's home among ``positions`` (node id -> position): the nearest node,
    ties by id (None: no point, or no node)."""
    if point is None or not positions:
        return None
    return min(positions, key=lambda n: (_distance(point, positions[n]), n))


def block_options(
    topology: Topology,
    point: Point,
    nbytes: int,
    *,
    holders: Mapping[str, Point],
    serving: str | None,
    positions: Mapping[str, Point],
) -> list[BlockOption]:
    """Every way one block of ``nbytes`` reaches a client at ``point``, fastest first.

    ``holders``: node id -> position of the nodes that hold the block and may serve it;
    ``serving``: the client's serving edge (None: no migration, the origin read is costed as
    a direct read); ``positions``: positions of all route nodes (the serving edge's included).
    """
    ch = topology.channel
    lat = ch.latency_ms
    options = [
        BlockOption(n, "held", lat + airtime_ms(topology, point, pos, nbytes))
        for n, pos in holders.items()
    ]
    last_hop = 0.0
    if serving is not None:
        home = positions[serving]
        last_hop = airtime_ms(topology, point, home, nbytes)
        if serving not in holders and holders:
            source = min(holders, key=lambda n: (_distance(home, holders[n]), n))
            prep = 8.0 * nbytes / ch.backhaul_bps * 1000.0
            options.append(BlockOption(serving, "migrate", lat + prep + last_hop, source))
    origin_ms = lat + 8.0 * nbytes / ch.origin_bps * 1000.0 + last_hop
    options.append(BlockOption(None, "origin", origin_ms))
    options.sort(key=BlockOption.key)
    return options


def best_option(options: list[BlockOption]) -> BlockOption:
    """The delivery of a block: the first of :func:`block_options` (the origin when it is the
    only way)."""
    return options[0]


def order_by_delay(options: list[BlockOption], index: Mapping[str, int], origin: int) -> list[int]:
    """Source indexes of a block's candidates by expected delay, each node once, the origin
    last (the client's route invariant)."""
    out: list[int] = []
    for option in options:
        if option.node_id is not None and index[option.node_id] not in out:
            out.append(index[option.node_id])
    out.append(origin)
    return out
