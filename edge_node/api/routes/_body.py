"""How routes turn block pieces into responses (zero-copy where the server allows it).

Radio link emulation paces these responses on their way out (:mod:`edge_node.link`), so routes
build the same response whether it is on or off.
"""

from __future__ import annotations

from collections.abc import Iterator

from fastapi.responses import Response

from edge_node.node import EdgeNode
from edge_node.zerocopy import Piece, PiecesResponse

OCTET = "application/octet-stream"


def pieces_response(
    node: EdgeNode, pieces: Iterator[Piece], *, status_code: int, headers: dict[str, str]
) -> Response:
    return PiecesResponse(
        pieces,
        status_code=status_code,
        headers=headers,
        media_type=OCTET,
        on_bytes=node.counters.add_served,
        on_zerocopy_bytes=node.counters.add_zerocopy,
    )
