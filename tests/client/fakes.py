"""The one fault a real edge node cannot produce on demand: a corrupt byte on the wire.

A real edge node verifies what it serves, so the client's sha256 check of a flipped byte in transit
needs this stand-in. It is a real ASGI app serving the edge node's block read API of docs/api.md
(``GET /v1/blocks/{id}`` with Range, ``POST /v1/blocks:batch``) from a block store:

- ``corrupt=True``: flips the first byte of every block it sends (lengths stay right);
- ``corrupt_ids={...}``: flips the first byte of only these blocks.

``Faults.requests`` records what was asked, so a test can show the node was really used.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from core.store import BlockStore

CHUNK = 1024 * 1024


class Faults:
    def __init__(self, *, corrupt: bool = False, corrupt_ids: Iterable[str] = ()) -> None:
        self.corrupt = corrupt
        self.corrupt_ids = set(corrupt_ids)
        self.requests: list[str] = []


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}},
        status_code=status,
        headers={"X-Error-Code": code},
    )


def create_block_app(store: BlockStore, faults: Faults) -> FastAPI:
    """A corrupting edge-like block server over ``store``."""
    app = FastAPI()

    def body(block_ids: list[str], span: tuple[int, int] | None = None) -> Iterator[bytes]:
        for block_id in block_ids:
            data = store.read(block_id)
            if (faults.corrupt or block_id in faults.corrupt_ids) and data:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            if span is not None:
                data = data[span[0] : span[1]]
            for start in range(0, len(data), CHUNK):
                yield data[start : start + CHUNK]

    @app.get("/v1/blocks/{block_id}")
    def get_block(block_id: str, request: Request) -> Response:
        faults.requests.append(f"GET {request.url.path}")
        if not store.has(block_id):
            return _error(404, "block_not_found", f"block {block_id} not found")
        size = store.size(block_id)
        range_header = request.headers.get("range")
        if range_header is None:
            return StreamingResponse(
                body([block_id]),
                media_type="application/octet-stream",
                headers={"Content-Length": str(size)},
            )
        first, _, last = range_header.removeprefix("bytes=").partition("-")
        lo, hi = int(first), min(int(last) + 1 if last else size, size)
        return StreamingResponse(
            body([block_id], (lo, hi)),
            status_code=206,
            media_type="application/octet-stream",
            headers={
                "Content-Length": str(hi - lo),
                "Content-Range": f"bytes {lo}-{hi - 1}/{size}",
            },
        )

    @app.post("/v1/blocks:batch")
    async def get_batch(request: Request) -> Response:
        faults.requests.append(f"POST {request.url.path}")
        block_ids = (await request.json())["block_ids"]
        for block_id in block_ids:
            if not store.has(block_id):
                return _error(404, "block_not_found", f"block {block_id} not found")
        total = sum(store.size(b) for b in block_ids)
        return StreamingResponse(
            body(block_ids),
            media_type="application/octet-stream",
            headers={"Content-Length": str(total)},
        )

    return app
