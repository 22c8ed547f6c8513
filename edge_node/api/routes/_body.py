"""How routes turn block pieces into responses (zero-copy, or paced for the radio link)."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi.responses import Response, StreamingResponse

from edge_node.node import EdgeNode
from edge_node.streaming import counted, paced, read_ahead
from edge_node.zerocopy import Piece, PiecesResponse, pieces_to_bytes

OCTET = "application/octet-stream"


def pieces_response(
    node: EdgeNode, pieces: Iterator[Piece], *, status_code: int, headers: dict[str, str]
) -> Response:
    rate = node.settings.link_rate_bytes_per_s
    if rate:
        chunks = counted(paced(pieces_to_bytes(pieces), rate), node.counters.add_served)
        return StreamingResponse(
            read_ahead(chunks), status_code=status_code, headers=headers, media_type=OCTET
        )
    return PiecesResponse(
        pieces,
        status_code=status_code,
        headers=headers,
        media_type=OCTET,
        on_bytes=node.counters.add_served,
        on_zerocopy_bytes=node.counters.add_zerocopy,
    )
