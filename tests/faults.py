"""Fault injection around the REAL services: ASGI middleware, never a second implementation.

A real edge node verifies what it serves, so a byte flipped in transit has to be injected
between the app and the socket. :class:`CorruptBlocks` wraps the real edge app
(:func:`edge_node.app.create_app`) and flips the first byte of chosen blocks in the bodies of
``POST /v1/blocks:batch`` and ``GET /v1/blocks/{id}`` (lengths stay right); everything else,
Range parsing included, is the edge's own code. Wrapping the app also turns the zero-copy
``sendfile`` path off (:mod:`edge_node.zerocopy` only adds it for the server's own ``send``), so
every body byte passes through the middleware.

:func:`read_body` is the one way the test ASGI apps and middleware read a request body.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

BATCH_PATH = "/v1/blocks:batch"
BLOCK_PREFIX = "/v1/blocks/"


async def read_body(receive: Receive) -> tuple[bytes, list[Message]]:
    """The whole request body, and the messages it came in (to replay them to an app)."""
    body = b""
    messages: list[Message] = []
    while True:
        message = await receive()
        messages.append(message)
        body += message.get("body", b"")
        if message["type"] != "http.request" or not message.get("more_body"):
            return body, messages


def replay(messages: list[Message], receive: Receive) -> Callable[[], Awaitable[Message]]:
    """A ``receive`` that hands out ``messages`` first, then the real ones."""
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed


class CorruptBlocks:
    """ASGI middleware: the real app's block bodies, with the first byte of some blocks flipped.

    Args:
        app: the real edge app.
        sizes: block id -> length (the manifests' sizes), to find a block's first byte in a batch.
        corrupt: flip every block.
        corrupt_ids: flip only these blocks.

    ``requests`` lists the block requests it saw (``"POST /v1/blocks:batch"``), ``flipped`` the
    block ids it corrupted, so a test can show the fault was really injected.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        sizes: Mapping[str, int],
        corrupt: bool = False,
        corrupt_ids: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.sizes = dict(sizes)
        self.corrupt = corrupt
        self.corrupt_ids = set(corrupt_ids)
        self.requests: list[str] = []
        self.flipped: list[str] = []

    def _victim(self, block_id: str) -> bool:
        return (self.corrupt or block_id in self.corrupt_ids) and self.sizes.get(block_id, 0) > 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        flips: dict[int, str] = {}  # body offset -> block whose first byte it is
        if method == "POST" and path == BATCH_PATH:
            body, messages = await read_body(receive)
            receive = replay(messages, receive)
            try:
                block_ids = [str(b) for b in json.loads(body)["block_ids"]]
            except (ValueError, KeyError, TypeError):
                block_ids = []
            at = 0
            for block_id in block_ids:
                if self._victim(block_id):
                    flips[at] = block_id
                at += self.sizes.get(block_id, 0)
        elif method == "GET" and path.startswith(BLOCK_PREFIX):
            block_id = path.removeprefix(BLOCK_PREFIX)
            ranged = any(k == b"range" for k, _ in scope["headers"])
            if self._victim(block_id) and not ranged:
                flips[0] = block_id
        else:
            await self.app(scope, receive, send)
            return
        self.requests.append(f"{method} {path}")
        await self.app(scope, receive, self._flipping(send, flips))

    def _flipping(self, send: Send, flips: dict[int, str]) -> Send:
        state: dict[str, Any] = {"ok": False, "sent": 0}

        async def flipping_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["ok"] = message["status"] < 300
            elif message["type"] == "http.response.body" and state["ok"]:
                body: bytes = message.get("body", b"")
                sent: int = state["sent"]
                hits = [at for at in flips if sent <= at < sent + len(body)]
                if hits:
                    data = bytearray(body)
                    for at in hits:
                        data[at - sent] ^= 0xFF
                        self.flipped.append(flips[at])
                    message = {**message, "body": bytes(data)}
                state["sent"] = sent + len(body)
            await send(message)

        return flipping_send


class StallBodies:
    """A stalled upstream: wraps a real app (e.g. the origin) and, while ``stalled`` is set,
    sends the status line and the first ``after_bytes`` of every ``GET`` body that matches
    ``paths`` (a substring; "" = all), then holds the connection open without sending more
    until ``stalled`` is cleared (the rest then flows normally). ``stalls`` counts the
    responses held so far."""

    def __init__(self, app: ASGIApp, *, paths: str = "", after_bytes: int = 1024) -> None:
        import threading

        self.app = app
        self.paths = paths
        self.after_bytes = after_bytes
        self.stalled = threading.Event()
        self.stalled.set()
        self.stalls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hit = (
            scope["type"] == "http"
            and scope["method"] == "GET"
            and self.paths in scope["path"]
            and self.stalled.is_set()
        )
        if not hit:
            await self.app(scope, receive, send)
            return
        await self.app(scope, receive, self._holding(send))

    def _holding(self, send: Send) -> Send:
        import asyncio

        state = {"sent": 0, "held": False}

        async def holding_send(message: Message) -> None:
            if message["type"] == "http.response.body" and self.stalled.is_set():
                body: bytes = message.get("body", b"")
                room = max(0, self.after_bytes - state["sent"])
                if len(body) > room:
                    head, rest = body[:room], body[room:]
                    if head:
                        await send({**message, "body": head, "more_body": True})
                    state["sent"] += len(head)
                    if not state["held"]:
                        state["held"] = True
                        self.stalls += 1
                    while self.stalled.is_set():
                        await asyncio.sleep(0.05)
                    message = {**message, "body": rest}
                else:
                    state["sent"] += len(body)
            await send(message)

        return holding_send
