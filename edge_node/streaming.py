"""Response bodies at line rate: read-ahead in a worker thread, byte counting, radio link pacing.

Starlette runs a sync body iterator one ``next()`` per thread hop and sends each chunk before
asking for the next, so disk reads and hashing never overlap the socket writes. :func:`read_ahead`
keeps one ``next()`` in flight in a worker thread while the event loop sends the previous chunk;
``hashlib`` and file reads release the GIL, so the two run on two cores.

Radio link emulation (``EDGE_LINK_*``) is per response, as if each client had its own link: the
latency is added once before the response starts (:class:`LinkLatencyMiddleware`) and the rate
paces that response's body (:func:`paced`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TypeVar

import anyio
import anyio.to_thread
from starlette.types import ASGIApp, Receive, Scope, Send

_BATCH_BYTES = 1 << 20
_BATCH_ITEMS = 64
T = TypeVar("T")
#: Paths never delayed by the link emulation (control and observability, not the radio link).
_UNDELAYED_PREFIXES = ("/healthz", "/metrics", "/v1/stats", "/v1/plan")


def counted(chunks: Iterator[bytes], add: Callable[[int], None]) -> Iterator[bytes]:
    for chunk in chunks:
        add(len(chunk))
        yield chunk


def paced(chunks: Iterator[bytes], rate_bytes_per_s: float | None) -> Iterator[bytes]:
    """Yield no faster than ``rate_bytes_per_s`` (None: as fast as possible)."""
    if not rate_bytes_per_s:
        yield from chunks
        return
    piece = int(max(16 * 1024, min(1 << 20, rate_bytes_per_s / 20)))
    started = time.monotonic()
    sent = 0
    for chunk in chunks:
        view = memoryview(chunk)
        for i in range(0, len(view), piece):
            part = view[i : i + piece]
            sent += len(part)
            delay = started + sent / rate_bytes_per_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            yield bytes(part)


def _default_size(item: object) -> int:
    return len(item) if isinstance(item, bytes | bytearray | memoryview) else _BATCH_BYTES


async def read_ahead(
    chunks: Iterator[T], *, size: Callable[[T], int] = _default_size
) -> AsyncIterator[T]:
    """Async view of ``chunks`` that computes what comes next while the current items are sent.

    Each worker-thread hop takes items until they add up to ~1 MiB (by ``size``), so a body of
    many small blocks does not pay one thread hop per block.
    """

    def step() -> list[T]:
        batch: list[T] = []
        total = 0
        for item in chunks:
            batch.append(item)
            total += size(item)
            if total >= _BATCH_BYTES or len(batch) >= _BATCH_ITEMS:
                break
        return batch

    def close() -> None:
        close_gen = getattr(chunks, "close", None)
        if close_gen is not None:
            close_gen()

    pending: asyncio.Future[list[T]] = asyncio.ensure_future(anyio.to_thread.run_sync(step))
    try:
        while True:
            batch = await pending
            if not batch:
                return
            pending = asyncio.ensure_future(anyio.to_thread.run_sync(step))
            for item in batch:
                yield item
    finally:
        # Never close the generator while a worker thread is inside next(): defer until done.
        if pending.done():
            if not pending.cancelled():
                pending.exception()  # mark retrieved
            close()
        else:

            def close_when_done(future: asyncio.Future[list[T]]) -> None:
                if not future.cancelled():
                    future.exception()
                close()

            pending.add_done_callback(close_when_done)


class LinkLatencyMiddleware:
    """Adds ``latency_ms`` before every data request (blocks, models, Hub API)."""

    def __init__(self, app: ASGIApp, *, latency_ms: float) -> None:
        self.app = app
        self.latency_s = latency_ms / 1000.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.latency_s > 0:
            path: str = scope.get("path", "")
            if not path.startswith(_UNDELAYED_PREFIXES):
                await anyio.sleep(self.latency_s)
        await self.app(scope, receive, send)
