"""Response bodies at line rate: read-ahead in a worker thread.

Starlette runs a sync body iterator one ``next()`` per thread hop and sends each chunk before
asking for the next, so disk reads and hashing never overlap the socket writes. :func:`read_ahead`
keeps one ``next()`` in flight in a worker thread while the event loop sends the previous chunk;
``hashlib`` and file reads release the GIL, so the two run on two cores.

Radio link emulation (``EDGE_LINK_*``) lives in :mod:`edge_node.link`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TypeVar

import anyio
import anyio.to_thread

_BATCH_BYTES = 1 << 20
_BATCH_ITEMS = 64
T = TypeVar("T")


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
