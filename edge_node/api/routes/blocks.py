"""Block routes: one block (GET/HEAD, Range) and a streamed batch of whole blocks.

On an on-demand node (``EDGE_CACHE_POLICY``) a batch naming its ``model_id`` is served through
:func:`edge_node.ondemand.serve` (missing blocks pulled through, the model cached). On a node
running its agent (``EDGE_AGENT_CHECKPOINT``) such a batch is counted as demand
(:mod:`edge_node.agent`) and served by pull-through (the agent decides what to keep). On other
nodes a batch with ``migrate`` and ``model_id`` migrates the blocks it lacks from peer edges
(:mod:`edge_node.migrate`); a batch a peer sends for its own migration is counted as migrated
out.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response

from core.asgi import BINARY_RESPONSES
from core.digest import BlockId, check_block_id
from core.hubapi import parse_range, range_headers
from edge_node import migrate, ondemand
from edge_node.api.deps import AgentDep, NodeDep, OnDemandDep, PullDep
from edge_node.api.routes._body import OCTET, pieces_response
from edge_node.api.schemas import BatchRequest
from edge_node.errors import InvalidRequestError
from edge_node.ingest import MIGRATION_HEADER
from edge_node.pull import ServedRepo
from edge_node.radio import declare_blocks

router = APIRouter(tags=["blocks"])

IMMUTABLE = "public, max-age=31536000, immutable"


@router.head("/v1/blocks/{block_id:path}", response_class=Response, responses=BINARY_RESPONSES)
def head_block(block_id: str, node: NodeDep) -> Response:
    [(bid, size)] = node.ensure_servable([block_id])
    headers = {
        "ETag": f'"{bid}"',
        "Accept-Ranges": "bytes",
        "Content-Length": str(size),
        "Cache-Control": IMMUTABLE,
    }
    return Response(headers=headers, media_type=OCTET)


@router.get("/v1/blocks/{block_id:path}", response_class=Response, responses=BINARY_RESPONSES)
def get_block(
    block_id: str,
    node: NodeDep,
    raw: Request,
    range_header: Annotated[str | None, Header(alias="range")] = None,
) -> Response:
    [(bid, size)] = node.ensure_servable([block_id])
    headers = {"ETag": f'"{bid}"', "Accept-Ranges": "bytes", "Cache-Control": IMMUTABLE}
    span = parse_range(range_header, size)
    status, start, end = range_headers(headers, span, size)
    if size <= node.settings.verify_on_read_max_bytes:
        # Small: hashed in full before a single byte (or header) goes out.
        data = node.read_verified(bid)[start:end]
        node.counters.add_served(len(data))
        node.counters.add_blocks_served(1)
        return Response(data, status_code=status, headers=headers, media_type=OCTET)
    if span is None:
        node.counters.add_blocks_served(1)
        declare_blocks(raw.scope, [(bid, size)])
    pieces = node.block_pieces(bid, start, end)
    return pieces_response(node, pieces, status_code=status, headers=headers)


@router.post("/v1/blocks:batch", response_class=Response, responses=BINARY_RESPONSES)
def get_blocks_batch(
    request: BatchRequest,
    node: NodeDep,
    pull: PullDep,
    cache: OnDemandDep,
    agent: AgentDep,
    raw: Request,
    migrating_peer: Annotated[str | None, Header(alias=MIGRATION_HEADER)] = None,
) -> Response:
    """The blocks' bytes concatenated in request order; unknown ids are 404 before any byte."""
    if cache is not None and request.model_id is not None:
        return _batch_on_demand(request, request.model_id, node, pull, cache)
    if agent is not None and agent.enabled and request.model_id is not None:
        agent.demand.observe(request.model_id)
        return _batch_pulled(request, request.model_id, node, pull, raw)
    if request.migrate and request.model_id is not None:
        pieces, layout, migrated = migrate.serve_batch(
            pull, request.block_ids, request.model_id, request.migrate_from, request.via_origin
        )
        declare_blocks(raw.scope, layout)  # pulled blocks go out on this node's radio too
        headers = {"Content-Length": str(sum(n for _, n in layout))}
        # Migrated blocks live in the pull buffer only while their window is sent (as below).
        return pieces_response(
            node, pieces, status_code=200, headers=headers, zero_copy=not migrated
        )
    blocks = node.ensure_servable(request.block_ids)
    if migrating_peer is not None:
        migrate.count_served(node, blocks)
    declare_blocks(raw.scope, blocks)  # the radio may broadcast them (edge_node.radio)
    headers = {"Content-Length": str(sum(size for _, size in blocks))}
    return pieces_response(node, node.blocks_pieces(blocks), status_code=200, headers=headers)


def _model_blocks(
    request: BatchRequest, model_id: str, pull: PullDep
) -> tuple[list[BlockId], ServedRepo, list[tuple[BlockId, int]]]:
    """The batch's block ids checked, ``model_id``'s repo, and (block id, size) per block;
    a block that is not one of the model's is a 400."""
    ids = [check_block_id(b) for b in request.block_ids]
    repo = pull.find_model(model_id)
    sizes = repo.manifest.block_sizes()
    foreign = [b for b in ids if b not in sizes]
    if foreign:
        raise InvalidRequestError(f"block {foreign[0]} is not a block of model {model_id!r}")
    return ids, repo, [(b, sizes[b]) for b in ids]


def _batch_pulled(
    request: BatchRequest, model_id: str, node: NodeDep, pull: PullDep, raw: Request
) -> Response:
    """The batch's blocks of ``model_id``: held ones from the store, the rest pulled through."""
    ids, repo, blocks = _model_blocks(request, model_id, pull)
    windows = pull.block_windows(blocks)
    headers = {"Content-Length": str(sum(n for _, n in blocks))}
    if not pull.missing_bytes(windows):  # all here: the plain batch path
        servable = node.ensure_servable(ids)
        declare_blocks(raw.scope, servable)  # the radio may broadcast them (edge_node.radio)
        return pieces_response(node, node.blocks_pieces(servable), status_code=200, headers=headers)
    # The body is the blocks, whole, in order, pulled ones included: the radio groups them as
    # any batch (else every byte of the request went out as its own unicast).
    declare_blocks(raw.scope, blocks)
    # Pulled blocks live in the pull buffer only while their window is sent (as below).
    return pieces_response(
        node, pull.serve(repo, windows), status_code=200, headers=headers, zero_copy=False
    )


def _batch_on_demand(
    request: BatchRequest,
    model_id: str,
    node: NodeDep,
    pull: PullDep,
    cache: ondemand.OnDemandCache,
) -> Response:
    ids, repo, blocks = _model_blocks(request, model_id, pull)
    pieces, headers = ondemand.serve(
        cache,
        pull,
        repo,
        lambda: pull.block_windows(blocks),
        lambda: node.blocks_pieces(node.ensure_servable(ids)),
    )
    headers["Content-Length"] = str(sum(n for _, n in blocks))
    # Pulled blocks live in the pull buffer only while their window is sent: read them on the
    # way out (as the Hub route does), never hand a file to sendfile that may be gone by then.
    miss = headers[ondemand.CACHE_HEADER] == "miss"
    return pieces_response(node, pieces, status_code=200, headers=headers, zero_copy=not miss)
