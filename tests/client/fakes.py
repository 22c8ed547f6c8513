"""Small real ASGI apps for the client tests: a block server with injectable faults, and a
route server standing in for the controller.

The block server speaks the edge node's read API of docs/api.md (``GET /v1/blocks/{id}``,
``POST /v1/blocks:batch``, ``GET /v1/models``, ``GET /v1/models/{id}/manifest``). Faults, each a
real behaviour on the wire:

- ``corrupt=True``: flips the first byte of every block it sends (lengths stay right);
- ``corrupt_ids={...}``: flips the first byte of only these blocks;
- ``die_after_bytes=N``: once N body bytes have gone out, it drops the connection mid-body and
  answers every later request with a 500, as a node that crashed would;
- ``chunk_delay_s``: sleeps between 64 KiB chunks (a slow radio link).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from core.manifest import ModelManifest
from core.store import BlockStore

CHUNK = 64 * 1024


class KilledError(Exception):
    """Raised inside the app to drop a connection mid-body."""


class Faults:
    def __init__(
        self,
        *,
        corrupt: bool = False,
        corrupt_ids: Iterable[str] = (),
        die_after_bytes: int | None = None,
        chunk_delay_s: float = 0.0,
    ) -> None:
        self.corrupt = corrupt
        self.corrupt_ids = set(corrupt_ids)
        self.die_after_bytes = die_after_bytes
        self.chunk_delay_s = chunk_delay_s
        self.sent = 0
        self.dead = False
        self.requests: list[str] = []
        self._lock = threading.Lock()

    def account(self, nbytes: int) -> None:
        with self._lock:
            self.sent += nbytes
            if self.die_after_bytes is not None and self.sent >= self.die_after_bytes:
                self.dead = True
        if self.dead:
            raise KilledError("node killed mid-download")


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}},
        status_code=status,
        headers={"X-Error-Code": code},
    )


def create_block_app(
    store: BlockStore, manifests: Iterable[ModelManifest], faults: Faults | None = None
) -> FastAPI:
    """An edge-like block server over ``store`` holding ``manifests``."""
    faults = faults or Faults()
    held = {m.model_id: m for m in manifests}
    app = FastAPI()
    app.state.faults = faults

    async def body(
        block_ids: list[str], span: tuple[int, int] | None = None
    ) -> AsyncIterator[bytes]:
        for block_id in block_ids:
            data = store.read(block_id)
            if (faults.corrupt or block_id in faults.corrupt_ids) and data:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            if span is not None:
                data = data[span[0] : span[1]]
            for start in range(0, len(data), CHUNK):
                piece = data[start : start + CHUNK]
                faults.account(len(piece))
                if faults.chunk_delay_s:
                    await asyncio.sleep(faults.chunk_delay_s)
                yield piece

    def check_alive(request: Request) -> None:
        faults.requests.append(f"{request.method} {request.url.path}")
        if faults.dead:
            raise KilledError("node is down")

    @app.get("/v1/blocks/{block_id}")
    def get_block(block_id: str, request: Request) -> Response:
        check_alive(request)
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
        check_alive(request)
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

    @app.get("/v1/models")
    def list_models() -> dict[str, Any]:
        return {
            "models": [
                {"model_id": m.model_id, "repo_id": m.repo_id, "revision": m.revision}
                for m in held.values()
            ]
        }

    @app.get("/v1/models/{model_id}/manifest")
    def manifest(model_id: str) -> Response:
        if model_id not in held:
            return _error(404, "model_not_found", f"model {model_id} not found")
        return Response(held[model_id].to_json(), media_type="application/json")

    return app


def create_route_app(
    manifests: Mapping[str, ModelManifest],
    sources: list[dict[str, Any]],
    holders: Mapping[int, set[str]],
) -> FastAPI:
    """A controller stand-in: ``GET /v1/routes/{id}``, ``GET /v1/models``, ``POST /v1/demand``.

    ``holders`` maps a source index to the model ids whose blocks it holds; the origin (the
    source with ``kind == "origin"``) is always listed last for every block.
    """
    app = FastAPI()
    app.state.demand = []

    @app.get("/v1/routes/{model_id}")
    def route(model_id: str) -> Response:
        if model_id not in manifests:
            return _error(404, "model_not_found", f"model {model_id} not found")
        manifest = manifests[model_id]
        origin = [i for i, s in enumerate(sources) if s["kind"] == "origin"]
        blocks = {}
        for block_id in manifest.block_sizes():
            order = [
                i
                for i in range(len(sources))
                if i in holders and any(block_id in manifests[m].block_sizes() for m in holders[i])
            ]
            blocks[block_id] = order + origin
        return JSONResponse(
            {
                "model_id": model_id,
                "manifest": manifest.to_dict(),
                "sources": sources,
                "blocks": blocks,
            }
        )

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {
            "models": [
                {"model_id": m.model_id, "repo_id": m.repo_id, "revision": m.revision}
                for m in manifests.values()
            ]
        }

    @app.post("/v1/demand")
    async def demand(request: Request) -> dict[str, str]:
        app.state.demand.append(await request.json())
        return {"status": "ok"}

    return app
