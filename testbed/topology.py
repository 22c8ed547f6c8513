"""The testbed's toy geography: where edge nodes and user areas sit, in metres.

Edge nodes stand on a line (up to four) or on a square-ish grid (more), ``spacing_m`` apart, like
small cells along a street. Each edge node has one user area close to it (``area_offset_m`` away),
so a user in ``area-k`` is near ``edge-k`` and a few hundred metres from the others: a download
from the near edge is fast, from a far edge slower, and from the origin (the "cloud", behind the
backhaul) slowest.

Invariants: node ids are ``edge-1..edge-N`` and area ids ``area-1..area-N`` in the same order;
positions are deterministic (no randomness), so every run of the testbed is the same world.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

DEFAULT_SPACING_M = 400.0
DEFAULT_AREA_OFFSET_M = (60.0, 40.0)


@dataclass(frozen=True, slots=True)
class EdgeSite:
    """One edge node's place."""

    node_id: str
    x_m: float
    y_m: float

    @property
    def position(self) -> tuple[float, float]:
        return (self.x_m, self.y_m)


@dataclass(frozen=True, slots=True)
class UserArea:
    """A place where users stand; ``near`` is the edge node closest to it."""

    area_id: str
    x_m: float
    y_m: float
    near: str

    @property
    def position(self) -> tuple[float, float]:
        return (self.x_m, self.y_m)


@dataclass(frozen=True, slots=True)
class SiteLayout:
    """The testbed's edge sites and user areas; ``to_json()`` is what testbed.json records
    (:func:`testbed.launcher.controller_topology` turns it into a controller topology)."""

    edges: tuple[EdgeSite, ...]
    areas: tuple[UserArea, ...]

    def edge(self, node_id: str) -> EdgeSite:
        for site in self.edges:
            if site.node_id == node_id:
                return site
        raise KeyError(node_id)

    def area_near(self, node_id: str) -> UserArea:
        for area in self.areas:
            if area.near == node_id:
                return area
        raise KeyError(node_id)

    def to_json(self) -> dict[str, Any]:
        return {
            "edges": [
                {"node_id": site.node_id, "position": [site.x_m, site.y_m]} for site in self.edges
            ],
            "areas": [
                {"area_id": area.area_id, "position": [area.x_m, area.y_m], "near": area.near}
                for area in self.areas
            ],
        }


def node_id_for(index: int) -> str:
    """The id of the ``index``-th edge node (0-based): ``edge-1``, ``edge-2``, ..."""
    return f"edge-{index + 1}"


def grid_topology(
    n_edges: int,
    *,
    spacing_m: float = DEFAULT_SPACING_M,
    area_offset_m: tuple[float, float] = DEFAULT_AREA_OFFSET_M,
) -> SiteLayout:
    """Place ``n_edges`` edge nodes on a line (n <= 4) or a grid, each with one user area nearby.

    >>> [site.position for site in grid_topology(3).edges]
    [(0.0, 0.0), (400.0, 0.0), (800.0, 0.0)]
    >>> grid_topology(2).areas[1]
    UserArea(area_id='area-2', x_m=460.0, y_m=40.0, near='edge-2')
    """
    if n_edges < 1:
        raise ValueError(f"need at least one edge node, got {n_edges}")
    if spacing_m <= 0:
        raise ValueError(f"spacing_m must be positive, got {spacing_m}")
    columns = n_edges if n_edges <= 4 else math.ceil(math.sqrt(n_edges))
    edges: list[EdgeSite] = []
    areas: list[UserArea] = []
    for index in range(n_edges):
        row, column = divmod(index, columns)
        site = EdgeSite(node_id_for(index), column * spacing_m, row * spacing_m)
        edges.append(site)
        areas.append(
            UserArea(
                f"area-{index + 1}",
                site.x_m + area_offset_m[0],
                site.y_m + area_offset_m[1],
                near=site.node_id,
            )
        )
    return SiteLayout(tuple(edges), tuple(areas))
