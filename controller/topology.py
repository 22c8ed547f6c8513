"""The network topology the planner and the router reason about: user areas, channel, deadlines.

Edge node positions come from the nodes' registrations (a topology may override them). A
topology document (``PUT /v1/topology``, ``CONTROLLER_TOPOLOGY_FILE``) looks like::

    {"schema": "trimcache.topology/v1",
     "areas": {"area-1": {"x_m": 0.0, "y_m": 0.0, "weight": 1.0}},
     "channel": {"bandwidth_hz": 20e6, "tx_power_dbm": 30.0, ...},   # see Channel
     "deadlines_s": {"default": 10.0, "bert-sst2": 4.0},
     "positions": {"edge-1": [0.0, 0.0]}}                            # optional overrides

Every key but ``schema`` is optional. With no topology stored, :func:`default_topology` puts
one user area 20 m from each live edge node (``area-{node_id}``).

Latency model (reachability in the placement problem and the order of a route's sources):
:mod:`controller.wireless` (distance-based path loss, Shannon rate, direct delivery within
``coverage_m``, a backhaul relay hop from a neighbouring node). This module adds user areas,
per-model deadlines, node positions and a fixed ``latency_ms`` per transfer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

import numpy as np

from controller import wireless
from controller.errors import InvalidRequestError
from controller.wireless import RadioConfig

SCHEMA = "trimcache.topology/v1"
DEFAULT_AREA_OFFSET_M = 20.0
# Bounds of every number a topology (or a heartbeat, a route query) may carry: positions within
# 10,000 km of the origin keep every distance and rate finite.
MAX_COORD_M = 1e7
MAX_AREAS = 10_000
MAX_ID_CHARS = 200
# Channel parameter -> (lowest, highest, lowest is allowed).
CHANNEL_BOUNDS: Mapping[str, tuple[float, float, bool]] = MappingProxyType(
    {
        "tx_power_dbm": (-100.0, 100.0, True),
        "bandwidth_hz": (0.0, 1e12, False),
        "noise_dbm_per_hz": (-300.0, 0.0, True),
        "coverage_m": (0.0, MAX_COORD_M, True),
        "neighbour_m": (0.0, MAX_COORD_M, True),
        "backhaul_bps": (0.0, 1e15, False),
        "origin_bps": (0.0, 1e15, False),
        "min_distance_m": (0.0, MAX_COORD_M, False),
        "latency_ms": (0.0, 1e7, True),
    }
)


def _bounded(what: str, value: float, low: float, high: float, *, low_ok: bool = True) -> float:
    """``value`` if it is finite and within [low, high] (or (low, high]); else a 400."""
    above = value >= low if low_ok else value > low
    if not (math.isfinite(value) and above and value <= high):
        bound = "[" if low_ok else "("
        raise InvalidRequestError(
            f"topology: {what} = {value!r} is outside {bound}{low:g}, {high:g}]"
        )
    return value


@dataclass(frozen=True, slots=True)
class Channel:
    """Radio and backhaul parameters: :class:`controller.wireless.RadioConfig`'s fields plus
    ``latency_ms``, a fixed per-transfer latency (propagation, request round trip) added to the
    expected delivery time of a route's sources. ``backhaul_bps`` is the edge-to-edge link (the
    relay hop of the wireless model, the migration link of :mod:`controller.delay_routing`);
    ``origin_bps`` the origin -> edge link (the delay model's cloud backhaul)."""

    tx_power_dbm: float = 30.0
    bandwidth_hz: float = 100e6
    noise_dbm_per_hz: float = -174.0
    coverage_m: float = 300.0
    neighbour_m: float = 450.0
    backhaul_bps: float = 10e9
    min_distance_m: float = 1.0
    latency_ms: float = 2.0
    origin_bps: float = 1e9

    def radio(self) -> RadioConfig:
        return RadioConfig(
            tx_power_dbm=self.tx_power_dbm,
            bandwidth_hz=self.bandwidth_hz,
            noise_dbm_per_hz=self.noise_dbm_per_hz,
            coverage_m=self.coverage_m,
            neighbour_m=self.neighbour_m,
            backhaul_bps=self.backhaul_bps,
            min_distance_m=self.min_distance_m,
        )


@dataclass(frozen=True, slots=True)
class Area:
    x_m: float
    y_m: float
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class Topology:
    """Areas, channel, per-model deadlines and optional node position overrides."""

    areas: Mapping[str, Area]
    channel: Channel = field(default_factory=Channel)
    deadlines_s: Mapping[str, float] = field(
        default_factory=lambda: MappingProxyType({"default": 10.0})
    )
    positions: Mapping[str, tuple[float, float]] = field(
        default_factory=lambda: MappingProxyType({})
    )

    def deadline_s(self, model_id: str) -> float:
        return float(self.deadlines_s.get(model_id, self.deadlines_s.get("default", 10.0)))

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "areas": {
                a: {"x_m": v.x_m, "y_m": v.y_m, "weight": v.weight} for a, v in self.areas.items()
            },
            "channel": {f.name: getattr(self.channel, f.name) for f in fields(Channel)},
            "deadlines_s": dict(self.deadlines_s),
            "positions": {n: list(p) for n, p in self.positions.items()},
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Topology:
        """Parse and validate a topology document.

        Raises:
            InvalidRequestError: wrong schema, unknown keys or bad values (names the entry).
        """
        if not isinstance(doc, Mapping):
            raise InvalidRequestError("a topology must be a JSON object")
        schema = doc.get("schema", SCHEMA)
        if schema != SCHEMA:
            raise InvalidRequestError(f"topology schema must be {SCHEMA!r}, got {schema!r}")
        unknown = sorted(set(doc) - {"schema", "areas", "channel", "deadlines_s", "positions"})
        if unknown:
            raise InvalidRequestError(f"topology: unknown key {unknown[0]!r}")
        try:
            areas = {
                str(a): Area(float(v["x_m"]), float(v["y_m"]), float(v.get("weight", 1.0)))
                for a, v in dict(doc.get("areas", {})).items()
            }
            known = {f.name for f in fields(Channel)}
            channel_doc = dict(doc.get("channel", {}))
            bad = sorted(set(channel_doc) - known)
            if bad:
                raise InvalidRequestError(f"topology: unknown channel parameter {bad[0]!r}")
            channel = Channel(**{k: float(v) for k, v in channel_doc.items()})
            deadlines = {str(m): float(s) for m, s in dict(doc.get("deadlines_s", {})).items()}
            positions = {
                str(n): (float(p[0]), float(p[1]))
                for n, p in dict(doc.get("positions", {})).items()
            }
        except InvalidRequestError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, OverflowError) as exc:
            raise InvalidRequestError(f"topology: malformed entry ({exc!r})") from exc
        for kind, ids in (("area", areas), ("deadline", deadlines), ("position", positions)):
            if len(ids) > MAX_AREAS:
                raise InvalidRequestError(f"topology: more than {MAX_AREAS} {kind} entries")
            for key in ids:
                if not 0 < len(key) <= MAX_ID_CHARS:
                    raise InvalidRequestError(
                        f"topology: {kind} id of {len(key)} characters (1-{MAX_ID_CHARS})"
                    )
        for area_id, area in areas.items():
            for coord in ("x_m", "y_m"):
                _bounded(
                    f"area {area_id!r} {coord}", getattr(area, coord), -MAX_COORD_M, MAX_COORD_M
                )
            _bounded(f"area {area_id!r} weight", area.weight, 0.0, 1e12)
        for node_id, (x, y) in positions.items():
            _bounded(f"position of {node_id!r} x", x, -MAX_COORD_M, MAX_COORD_M)
            _bounded(f"position of {node_id!r} y", y, -MAX_COORD_M, MAX_COORD_M)
        for model_id, seconds in deadlines.items():
            _bounded(f"deadline of {model_id!r}", seconds, 0.0, 1e7, low_ok=False)
        for name, (low, high, low_ok) in CHANNEL_BOUNDS.items():
            _bounded(f"channel {name}", getattr(channel, name), low, high, low_ok=low_ok)
        deadlines.setdefault("default", 10.0)
        return cls(
            areas=MappingProxyType(areas),
            channel=channel,
            deadlines_s=MappingProxyType(deadlines),
            positions=MappingProxyType(positions),
        )


def default_topology(node_positions: Mapping[str, tuple[float, float]]) -> Topology:
    """One user area ``area-{node_id}`` next to each edge node (20 m east of it)."""
    areas = {
        f"area-{node_id}": Area(x + DEFAULT_AREA_OFFSET_M, y)
        for node_id, (x, y) in sorted(node_positions.items())
    }
    return Topology(areas=MappingProxyType(areas))


def _wireless(
    node_positions: Mapping[str, tuple[float, float]], users: Mapping[str, tuple[float, float]]
) -> wireless.RadioGeometry:
    node_ids = tuple(node_positions)
    user_ids = tuple(users)
    return wireless.RadioGeometry(
        server_ids=node_ids,
        server_xy_m=np.array([node_positions[n] for n in node_ids], dtype=np.float64).reshape(
            len(node_ids), 2
        ),
        user_ids=user_ids,
        user_xy_m=np.array([users[u] for u in user_ids], dtype=np.float64).reshape(
            len(user_ids), 2
        ),
    )


def delivery_ms(
    topology: Topology,
    point: tuple[float, float],
    node_positions: Mapping[str, tuple[float, float]],
    nbytes: int,
) -> dict[str, float]:
    """Expected time for each node to deliver ``nbytes`` to a user at ``point``.

    Internal logic: the wireless model's time (direct when the node covers the point, relayed
    by the point's associated node when it is a neighbour) plus ``latency_ms``; a node out of
    reach of both gets the direct time at its (poor) far-distance rate, so it still ranks.
    """
    if not node_positions:
        return {}
    channel = topology.channel
    radio = channel.radio()
    spb = wireless.seconds_per_byte(_wireless(node_positions, {"u": point}), radio)[0]
    out: dict[str, float] = {}
    for i, (node_id, pos) in enumerate(node_positions.items()):
        seconds_per_byte = float(spb[i])
        if not math.isfinite(seconds_per_byte):
            d = math.hypot(point[0] - pos[0], point[1] - pos[1])
            seconds_per_byte = 8.0 / float(wireless.rate_bps(d, radio))
        out[node_id] = nbytes * seconds_per_byte * 1000 + channel.latency_ms
    return out


def reachable_sets(
    topology: Topology,
    node_positions: Mapping[str, tuple[float, float]],
    model_bytes: Mapping[str, int],
) -> dict[str, dict[str, list[str]]]:
    """Area id -> node id -> models that node can deliver to the area within their deadline
    (:func:`controller.wireless.reachable_sets`)."""
    if not node_positions or not topology.areas:
        return {a: {} for a in topology.areas}
    users = {a: (v.x_m, v.y_m) for a, v in topology.areas.items()}
    deadlines = {m: topology.deadline_s(m) for m in model_bytes}
    return wireless.reachable_sets(
        _wireless(node_positions, users), model_bytes, deadlines, topology.channel.radio()
    )
