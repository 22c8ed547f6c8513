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
- ``origin``: ``8 S / origin_bps + airtime(h)`` (section 3's cloud fetch): for a block no
  node holds, the serving edge pulls b from the origin over the backhaul and delivers it on
  its radio, as the model says (H_b empty); for a held block, and with no serving edge, the
  origin is the client's own last resort (it reads the origin itself).

Every option adds the topology's ``latency_ms``. The block's delivery is the option with the
least expected time; exact ties prefer ``held``, then ``migrate``, then ``origin`` (then node
id): a migration that is no faster than reading the far holder directly is not made.

:func:`order_by_delay` is the delay objective's ordering of a block's candidates (all the
options above, fastest first, the origin last).

Hook for broadcast groups: a block already being broadcast in the client's cluster would cost
only the rest of its airtime; :func:`block_options` takes every cost from
:class:`RouteCosts`, so a broadcast-aware estimate replaces ``air_ms_per_byte`` for the
blocks of a live group (not done yet: this module knows no broadcast state).

Pure code: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

from controller.delay.model import airtime_s, snr_linear
from controller.topology import Topology

How = Literal["held", "migrate", "origin"]
#: Exact ties: held before migrate before origin.
HELD, MIGRATE, ORIGIN = 0, 1, 2
_HOW: tuple[How, How, How] = ("held", "migrate", "origin")

Point = tuple[float, float]


class BlockOption(NamedTuple):
    """One way a block reaches the client: who sends it (None: the origin itself) and how, with its
    cost in milliseconds per byte of the block. Every option adds the same ``latency_ms``, so
    the ranking of a block's options does not depend on its size; tuples order by cost, then
    held < migrate < origin, then node id."""

    ms_per_byte: float
    rank: int  # HELD | MIGRATE | ORIGIN
    node_id: str | None
    migrate_from: str | None = None

    @property
    def how(self) -> How:
        return _HOW[self.rank]


@dataclass(frozen=True, slots=True)
class RouteCosts:
    """What every block of one route shares: per node, the radio's milliseconds per byte to
    the client; the links' milliseconds per byte; the serving edge and, per node, its
    distance to it (the migration source is the nearest holder)."""

    air_ms_per_byte: Mapping[str, float]
    latency_ms: float
    migrate_ms_per_byte: float
    origin_ms_per_byte: float
    serving: str | None
    to_serving_m: Mapping[str, float]


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


def route_costs(
    topology: Topology, point: Point, positions: Mapping[str, Point], serving: str | None
) -> RouteCosts:
    """The per-route constants of :func:`block_options` for a client at ``point``
    (``positions``: every route node's, the serving edge's included)."""
    ch = topology.channel
    home = positions[serving] if serving is not None else None
    return RouteCosts(
        air_ms_per_byte={n: airtime_ms(topology, point, p, 1) for n, p in positions.items()},
        latency_ms=ch.latency_ms,
        migrate_ms_per_byte=8000.0 / ch.backhaul_bps,
        origin_ms_per_byte=8000.0 / ch.origin_bps,
        serving=serving,
        to_serving_m={} if home is None else {n: _distance(home, p) for n, p in positions.items()},
    )


def block_options(costs: RouteCosts, holders: Sequence[str]) -> list[BlockOption]:
    """Every way a block held by ``holders`` reaches the client, fastest first (the serving
    edge migrates only a block it does not hold). The same for every block with these
    holders: cache it per holder set."""
    air = costs.air_ms_per_byte
    options = [BlockOption(air[n], HELD, n) for n in holders]
    serving = costs.serving
    last_hop = 0.0 if serving is None else air[serving]
    if serving is not None and holders and serving not in holders:
        dist = costs.to_serving_m
        source = min(holders, key=lambda n: (dist[n], n))
        options.append(BlockOption(costs.migrate_ms_per_byte + last_hop, MIGRATE, serving, source))
    # A block nobody holds comes from the cloud through the serving edge (the model's rule:
    # H_b empty); for a held block the origin stays the client's own last resort.
    via = serving if not holders else None
    options.append(BlockOption(costs.origin_ms_per_byte + last_hop, ORIGIN, via))
    options.sort(key=lambda o: (o.ms_per_byte, o.rank, o.node_id or ""))
    return options


def expected_ms(costs: RouteCosts, option: BlockOption, nbytes: int) -> float:
    """The expected time of ``option`` for a block of ``nbytes``."""
    return costs.latency_ms + nbytes * option.ms_per_byte


def order_by_delay(options: list[BlockOption], index: Mapping[str, int], origin: int) -> list[int]:
    """Source indexes of a block's candidates by expected delay, each node once, the origin
    last (the client's route invariant)."""
    out: list[int] = []
    for option in options:
        if option.node_id is not None and index[option.node_id] not in out:
            out.append(index[option.node_id])
    out.append(origin)
    return out
