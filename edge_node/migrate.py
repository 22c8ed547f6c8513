"""Request-time migration: a client's serving edge pulls blocks it lacks from a neighbour edge.

The controller's route (docs/api.md, ``delivery[block].how == "migrate"``) sends a client to
its serving edge for a block a neighbour holds, when the delay model says that is faster than
reading the neighbour directly or the origin. The client asks the serving edge with
``POST /v1/blocks:batch {"block_ids", "model_id", "migrate": true, "migrate_from"}``; this
module answers it with the pull-through machinery (:class:`edge_node.pull.PullThrough`, one
implementation of pulling: windows, the pull buffer, every block hashed against its id):

- the blocks the node holds are served from its store, the others are fetched into the pull
  buffer, all before the answer starts (one window), from *peer edges only*: the holders the
  controller's route names for the block (``EDGE_CONTROLLER_URL``), the client's
  ``migrate_from`` URL first when it is one of them. The origin is not asked for them: a block
  no peer delivers is 502 ``upstream_unavailable`` before any byte (the client moves it to its
  next candidate);
- the blocks of ``via_origin`` (the route's ``how: "origin"`` with this node as ``source``: the
  delay model's cloud path) are pulled from the origin over the backhaul (emulated with a
  world, :mod:`edge_node.wired`) and sent on this node's radio like held ones (when some block
  comes via the origin, a block no peer delivers may fall back to the origin too);
- the whole body is declared to the radio (:func:`edge_node.radio.declare_blocks`): pulled
  blocks are airtime on this node's downlink and can be broadcast like held ones;
- peer requests carry :data:`edge_node.ingest.MIGRATION_HEADER`; the peer counts what it serves
  under it as ``migrated_out_blocks`` / ``migrated_out_bytes``, the serving edge counts what it
  pulled as ``migrated_in_blocks`` / ``migrated_in_bytes`` (``GET /v1/stats``, ``/metrics``).

A migrated block the node's placement puts here is kept in its store (as pull-through keeps
it); others live in the pull buffer only while the answer uses them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence

from core.digest import BlockId, check_block_id
from edge_node.catalogue import Sources
from edge_node.errors import InvalidRequestError
from edge_node.node import EdgeNode
from edge_node.pull import PullThrough, ServedRepo
from edge_node.zerocopy import Piece


def prefer(
    sources: Sources,
    hints: Mapping[str, str],
    via_origin: Collection[str] = (),
    origin_url: str | None = None,
) -> Sources:
    """``sources`` with each block's hinted peer first, when the route lists it for the block;
    the blocks of ``via_origin`` from the origin only, the others from peers only (no origin
    unless some block comes via the origin)."""
    peers: dict[BlockId, tuple[str, ...]] = {}
    for block_id, urls in sources.peers.items():
        if block_id in via_origin:
            continue
        hint = hints.get(block_id, "").rstrip("/")
        if hint in urls:
            urls = (hint, *(u for u in urls if u != hint))
        peers[block_id] = urls
    origin = (sources.origin_url or origin_url) if via_origin else None
    return Sources(peers, origin)


def serve_batch(
    pull: PullThrough,
    block_ids: Sequence[str],
    model_id: str,
    hints: Mapping[str, str],
    via_origin: Collection[str] = (),
) -> tuple[Iterator[Piece], list[tuple[BlockId, int]], bool]:
    """The pieces of the blocks ``block_ids`` of ``model_id`` (missing ones migrated from
    peers, or pulled from the origin for ``via_origin``), the body's blocks ``(id, size)`` in
    order, and whether any block is pulled. Every missing block is pulled before the answer
    starts (one pull window), so the radio can send each block as soon as it is on air.

    Raises:
        InvalidRequestError: a block is not one of the model's (400).
        ModelNotFoundError / RepoNotFoundError: the model is unknown here and to the controller.
        UpstreamUnavailableError: a missing block came from no peer (502, before any byte).
    """
    ids = [check_block_id(b) for b in block_ids]
    found = pull.find_model(model_id)
    sizes = found.manifest.block_sizes()
    foreign = [b for b in ids if b not in sizes]
    if foreign:
        raise InvalidRequestError(f"block {foreign[0]} is not a block of model {model_id!r}")
    blocks = [(b, sizes[b]) for b in ids]
    windows = pull.block_windows(blocks, window_bytes=sum(n for _, n in blocks) or 1)
    if not pull.missing_bytes(windows):
        return pull.serve(found, windows), blocks, False
    origin_url = pull.node.plan_record.origin_url or pull.node.settings.origin_url
    sources = prefer(pull.sources(found), hints, frozenset(via_origin), origin_url)
    repo = ServedRepo(found.manifest, sources, migration=True)
    return pull.serve(repo, windows), blocks, True


def count_served(node: EdgeNode, blocks: Sequence[tuple[BlockId, int]]) -> None:
    """A peer's migration batch was answered: count its blocks as migrated out."""
    node.counters.add_migrated_out(len(blocks), sum(n for _, n in blocks))
