"""``POST /v1/blocks:batch`` answered as plain ASGI, ahead of FastAPI, in the common case.

The route's time to first byte on a busy 2-core host was mostly FastAPI's machinery: routing,
dependency injection, request validation and the ``def`` route's hop into the thread pool and
back, each a wait for the CPU, before the body's own worker thread (:mod:`edge_node.direct`)
even starts. :func:`serve_batch` answers the common case on the event loop instead and hands
the body to that one worker thread directly; the response is the route's own
(:func:`edge_node.api.routes._body.pieces_response`: same headers, bytes, checks, counters).

The fast path is taken only when all of these hold; anything else goes to the app unchanged,
with the request body replayed, so its answers (400 ``invalid_block_id``, 404, 413, 422, the
re-hash of an untrusted block in a worker thread, on-demand caching) stay exactly the route's:

- the request is not a peer's migration (``X-TrimCache-Migration``, counted by the route);
- the body can go straight to the socket (``direct`` offered and a sender slot free), the
  node emulates no radio link (its middleware is part of the app), has no cache policy and
  runs no agent (``EDGE_AGENT_CHECKPOINT``: the route counts the request as demand);
- the body is ``application/json``, at most :data:`MAX_BODY_BYTES`, ``{"block_ids": [...]}``
  (with an optional ``model_id`` string of at most 128 characters, ignored as by the route) of
  1 to :data:`MAX_FAST_IDS` ids (their trust checks run on the event loop: one ``stat`` each);
- every id is a block in the store that is trusted (its file's signature is the one recorded
  when it was last hashed).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from starlette.types import Message, Receive, Scope, Send

from core.asgi import DEFAULT_READ_TIMEOUT_S
from core.digest import BlockId
from edge_node.api.routes._body import pieces_response
from edge_node.direct import direct_ready
from edge_node.ingest import MIGRATION_HEADER
from edge_node.node import EdgeNode

PATH = "/v1/blocks:batch"
#: Larger batches take the route (their trust checks run in a worker thread, not on the loop).
MAX_FAST_IDS = 4096
#: A batch of MAX_FAST_IDS ids is ~280 KB of JSON; larger bodies take the route (and its limit).
MAX_BODY_BYTES = 1 << 20
_MODEL_ID_MAX = 128

App = Callable[[Scope, Receive, Send], Awaitable[None]]


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """``receive`` that first gives back ``messages`` (the body already read)."""
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed


async def _read_body(receive: Receive) -> tuple[list[Message], bytes | None]:
    """The messages read and the whole body, or None where the route must decide (too long,
    stalled, the client went away)."""
    messages: list[Message] = []
    size = 0
    while True:
        message: Message | None = None
        with anyio.move_on_after(DEFAULT_READ_TIMEOUT_S):
            message = await receive()
        if message is None:  # stalled: the route's guard answers 408
            return messages, None
        messages.append(message)
        if message.get("type") != "http.request":
            return messages, None
        size += len(message.get("body", b""))
        if size > MAX_BODY_BYTES:
            return messages, None
        if not message.get("more_body", False):
            return messages, b"".join(m.get("body", b"") for m in messages)


_MIGRATION_HEADER = MIGRATION_HEADER.lower().encode()


def _eligible(scope: Scope, node: object) -> bool:
    if scope.get("type") != "http" or scope.get("method") != "POST":
        return False
    if scope.get("path") != PATH or not isinstance(node, EdgeNode):
        return False
    settings = node.settings
    if settings.cache_policy is not None or not direct_ready(scope):
        return False
    if settings.agent_checkpoint is not None:
        return False  # the agent counts every request naming a model (edge_node.agent)
    if settings.link_rate_bytes_per_s or settings.link_latency_ms > 0:
        return False  # the radio link emulation (inside FastAPI's stack) paces the route
    if settings.world_file is not None:
        return False  # the emulated CoMP downlink (edge_node/radio.py) schedules the route
    headers = dict(scope.get("headers") or [])
    if _MIGRATION_HEADER in headers:
        return False  # a peer migrating blocks: the route counts what it serves as migrated out
    content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
    if content_type != b"application/json":
        return False
    length = headers.get(b"content-length")
    return length is None or (length.isdigit() and int(length) <= MAX_BODY_BYTES)


def _blocks(node: EdgeNode, body: bytes) -> list[tuple[BlockId, int]] | None:
    """The ``(id, size)`` pairs of a batch the fast path may serve, else None."""
    try:
        data: Any = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict) or not set(data) <= {"block_ids", "model_id"}:
        return None
    model_id = data.get("model_id")
    if model_id is not None and not (isinstance(model_id, str) and len(model_id) <= _MODEL_ID_MAX):
        return None
    ids = data.get("block_ids")
    if not isinstance(ids, list) or not 0 < len(ids) <= MAX_FAST_IDS:
        return None
    # Unknown, bad or untrusted ids: the route answers (400 / 404, or re-hashes in a thread).
    return node.trusted_blocks(ids)


async def serve_batch(state: Any, scope: Scope, receive: Receive, send: Send, app: App) -> None:
    """Answer a batch request on the fast path when it qualifies, else pass it to ``app``."""
    node = getattr(state, "node", None)
    if not _eligible(scope, node):
        await app(scope, receive, send)
        return
    assert isinstance(node, EdgeNode)
    messages, body = await _read_body(receive)
    blocks = None if body is None else _blocks(node, body)
    if blocks is None:
        await app(scope, _replay(messages, receive), send)
        return
    total = sum(size for _, size in blocks)
    response = pieces_response(
        node,
        node.blocks_pieces(blocks),
        status_code=200,
        headers={"Content-Length": str(total)},
    )
    try:
        await response(scope, receive, send)
    finally:
        node.counters.add_request(status_code=200)
