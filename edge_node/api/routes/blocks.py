"""Block routes: one block (GET/HEAD, Range) and a streamed batch of whole blocks."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.responses import Response

from core.asgi import BINARY_RESPONSES
from core.hubapi import parse_range, range_headers
from edge_node.api.deps import NodeDep
from edge_node.api.routes._body import OCTET, pieces_response
from edge_node.api.schemas import BatchRequest

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
    pieces = node.block_pieces(bid, start, end)
    return pieces_response(node, pieces, status_code=status, headers=headers)


@router.post("/v1/blocks:batch", response_class=Response, responses=BINARY_RESPONSES)
def get_blocks_batch(request: BatchRequest, node: NodeDep) -> Response:
    """The blocks' bytes concatenated in request order; unknown ids are 404 before any byte."""
    blocks = node.ensure_servable(request.block_ids)
    headers = {"Content-Length": str(sum(size for _, size in blocks))}
    return pieces_response(node, node.blocks_pieces(blocks), status_code=200, headers=headers)
