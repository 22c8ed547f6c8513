"""Routes: which sources may serve each block of a model, best first.

A :class:`Route` is the parsed answer of the controller's ``GET /v1/routes/{model_id}``
(docs/api.md), or one built locally when there is no controller (a single edge node, or the origin
alone). Invariant: every block of the manifest has a non-empty candidate list, and when the route
has an origin it is the last candidate of every block ("ending at the origin").

``delivery`` (optional in the answer) says per block how its first candidate serves it: it
holds it, it *migrates* it from a neighbour edge (``migrate_from``), or it pulls it from the
origin (``how: "origin"`` with an edge as ``source``) while it sends it; the download asks such
an edge with ``"migrate": true`` (+ ``migrate_from`` / ``via_origin``, client._download).
``base_model_id`` (optional) names a LoRA adapter's base model, which the SDK then fetches at
the same time as the adapter (client._client).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from core.digest import BlockId
from core.errors import ManifestError
from core.manifest import ModelManifest, check_model_id
from core.wire import DeliveryHow, RouteDelivery, RouteSource

from ._errors import ClientError

SourceKind = Literal["edge", "origin"]


@dataclass(frozen=True, slots=True)
class Source:
    """One place blocks can come from: an edge node (blocks API) or the origin (Range reads)."""

    url: str
    kind: SourceKind
    node_id: str | None = None
    expected_ms: float | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    """How source ``source`` serves one block: ``held``, ``migrate`` (from source
    ``migrate_from``) or ``origin``."""

    source: int
    how: DeliveryHow
    migrate_from: int | None = None


@dataclass(frozen=True, slots=True)
class Route:
    """A manifest plus, for every block, the indexes of its sources in preference order."""

    model_id: str
    manifest: ModelManifest
    sources: tuple[Source, ...]
    blocks: Mapping[BlockId, tuple[int, ...]]
    delivery: Mapping[BlockId, Delivery] = field(default_factory=dict)
    #: A LoRA adapter's base model (the controller names it): fetched alongside the adapter.
    base_model_id: str | None = None

    def migrate_from(self, block_id: BlockId, source: int) -> str | None:
        """The URL ``source`` migrates ``block_id`` from, when the route says it does."""
        d = self.delivery.get(block_id)
        if d is None or d.how != "migrate" or d.source != source or d.migrate_from is None:
            return None
        return self.sources[d.migrate_from].url

    def via_origin(self, block_id: BlockId, source: int) -> bool:
        """Whether edge ``source`` delivers ``block_id`` from the origin (it pulls it over the
        backhaul and sends it on its radio), when the route says so."""
        d = self.delivery.get(block_id)
        return (
            d is not None
            and d.how == "origin"
            and d.source == source
            and self.sources[source].kind == "edge"
        )

    def pulled(self, block_id: BlockId, source: int) -> bool:
        """Whether edge ``source`` pulls ``block_id`` to serve it (migrate or via origin)."""
        return self.migrate_from(block_id, source) is not None or self.via_origin(block_id, source)

    def candidates(self, block_id: BlockId) -> tuple[int, ...]:
        return self.blocks[block_id]


def _with_origin_last(indexes: list[int], origin: int | None) -> tuple[int, ...]:
    out: list[int] = []
    for i in indexes:
        if i not in out and i != origin:
            out.append(i)
    if origin is not None:
        out.append(origin)
    return tuple(out)


def parse_route(data: Any) -> Route:
    """Parse and check a controller route (``GET /v1/routes/{model_id}``).

    Raises:
        ClientError: the answer is malformed (bad manifest, bad source indexes).
    """
    try:
        manifest = ModelManifest.from_dict(data["manifest"])
        parsed = [RouteSource.model_validate(s) for s in data["sources"]]
        sources = tuple(
            Source(
                url=s.url.rstrip("/"),
                kind=s.kind,
                node_id=s.node_id,
                expected_ms=s.expected_ms,
            )
            for s in parsed
        )
        raw_blocks: Mapping[str, Any] = data.get("blocks") or {}
        raw_delivery: Mapping[str, Any] = data.get("delivery") or {}
        parsed_delivery = {
            BlockId(b): RouteDelivery.model_validate(d) for b, d in raw_delivery.items()
        }
        base_model_id = data.get("base_model_id")
        if base_model_id is not None:
            base_model_id = check_model_id(base_model_id)
    except (KeyError, TypeError, AttributeError, ValueError, ManifestError) as exc:
        raise ClientError(f"malformed route from controller: {exc}") from exc
    origins = [i for i, s in enumerate(sources) if s.kind == "origin"]
    origin = origins[-1] if origins else None
    blocks: dict[BlockId, tuple[int, ...]] = {}
    for block_id in manifest.block_sizes():
        listed = raw_blocks.get(block_id, [])
        if not isinstance(listed, list) or not all(
            isinstance(i, int) and 0 <= i < len(sources) for i in listed
        ):
            raise ClientError(f"malformed route: bad source indexes for block {block_id}")
        candidates = _with_origin_last(listed, origin)
        if not candidates:
            raise ClientError(f"route for {manifest.model_id} names no source for {block_id}")
        blocks[block_id] = candidates
    delivery: dict[BlockId, Delivery] = {}
    for block_id, d in parsed_delivery.items():
        if block_id not in blocks:
            continue
        if d.source >= len(sources) or (d.migrate_from or 0) >= len(sources):
            raise ClientError(f"malformed route: bad delivery indexes for block {block_id}")
        delivery[block_id] = Delivery(d.source, d.how, d.migrate_from)
    return Route(manifest.model_id, manifest, sources, blocks, delivery, base_model_id)


def single_source_route(manifest: ModelManifest, source: Source) -> Route:
    """A route where one source serves every block (edge-only or origin-only fetches)."""
    blocks = dict.fromkeys(manifest.block_sizes(), (0,))
    return Route(manifest.model_id, manifest, (source,), blocks)
