"""How routes turn block pieces into responses (zero-copy where the server allows it).

Radio link emulation paces these responses on their way out (:mod:`edge_node.link`), so routes
build the same response whether it is on or off. A block file written while its response
streams cuts the response short (:class:`edge_node.zerocopy.PiecesResponse`), is tainted
(:mod:`edge_node.tainted`: Range resumes over it get the whole file) and is re-hashed here: a
mismatch quarantines it and queues its repair (:meth:`EdgeNode.verify`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from fastapi.responses import Response

from core.digest import is_block_id
from core.errors import BlockNotFoundError
from edge_node.node import EdgeNode
from edge_node.zerocopy import FileSlice, Piece, PiecesResponse

OCTET = "application/octet-stream"
logger = logging.getLogger(__name__)


def _recheck(node: EdgeNode, piece: FileSlice) -> None:
    """Taint the block ``piece`` came from (blocks are named by id), then re-hash the node's
    copy: the bytes sent before the cut may be wrong even if the file is right again."""
    block_id = Path(str(getattr(piece.file, "name", ""))).name
    if not is_block_id(block_id):
        return
    node.tainted.add(block_id)  # before the cut response's connection closes
    if not node.store.has(block_id):
        return  # a pull-buffer block: gone with its response
    try:
        node.verify(block_id)
    except BlockNotFoundError:
        logger.warning("block_id=%s changed on disk while served: quarantined", block_id)


def pieces_response(
    node: EdgeNode,
    pieces: Iterator[Piece],
    *,
    status_code: int,
    headers: dict[str, str],
    zero_copy: bool = True,
) -> Response:
    return PiecesResponse(
        pieces,
        status_code=status_code,
        headers=headers,
        media_type=OCTET,
        on_bytes=node.counters.add_served,
        on_zerocopy_bytes=node.counters.add_zerocopy,
        on_changed=lambda piece: _recheck(node, piece),
        zero_copy=zero_copy,
    )
