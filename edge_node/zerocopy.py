"""Zero-copy responses: block files go from the page cache to the socket with ``sendfile(2)``.

Python streaming copies every byte twice (file -> bytes -> socket) and costs ~1 s of CPU per GiB;
nginx's ``sendfile`` costs ~0.15 s. On a busy host that CPU is the throughput, so trusted block
files are sent with ``loop.sendfile`` instead.

- Bodies are sequences of *pieces*: ``bytes`` (headers of rebuilt files, small blocks that were
  hashed in memory) or :class:`FileSlice` (an already-open block file, offset, count).
- :class:`PiecesResponse` sends ``bytes`` as ordinary body messages and each ``FileSlice`` as an
  ASGI ``http.response.zerocopysend`` message when the server offers that extension, else it
  reads the slice in a worker thread (1 MiB reads) and sends the bytes.
- :func:`zerocopy_send` adds the extension for uvicorn on an asyncio selector loop (its h11 or
  httptools protocol): it writes the slice with ``loop.sendfile(transport, ...)`` (which waits for
  the transport's buffer to drain first, so ordering is kept) and then tells the protocol's
  Content-Length bookkeeping that ``count`` body bytes went out. Any other server or loop
  (uvloop, hypercorn, TestClient) simply does not get the extension.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from starlette.background import BackgroundTask
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from core.link import ZEROCOPY_EXTENSION
from edge_node.streaming import read_ahead

logger = logging.getLogger(__name__)

_READ_BYTES = 1 << 20


@dataclass(slots=True)
class FileSlice:
    """``count`` bytes at ``offset`` of an open file (the response closes it)."""

    file: BinaryIO
    offset: int
    count: int

    def iter_bytes(self) -> Iterator[bytes]:
        remaining = self.count
        offset = self.offset
        fd = self.file.fileno()
        while remaining > 0:
            chunk = os.pread(fd, min(_READ_BYTES, remaining), offset)
            if not chunk:
                raise OSError(f"file shrank while serving ({remaining} bytes missing)")
            offset += len(chunk)
            remaining -= len(chunk)
            yield chunk


Piece = bytes | FileSlice


class ResponseCutShortError(OSError):
    """A body's source failed after the status line went out: the response ends early (the
    client sees fewer bytes than ``Content-Length``), logged as a warning, not a traceback."""


def _piece_size(piece: Piece) -> int:
    # Preparing a FileSlice only opens a file: let one read-ahead hop gather many of them.
    return 0 if isinstance(piece, FileSlice) else len(piece)


def coalesce(pieces: Iterator[Piece], *, max_bytes: int = _READ_BYTES) -> Iterator[Piece]:
    """Join runs of small ``bytes`` pieces (up to ``max_bytes``) so they go out in one write."""
    run: list[bytes] = []
    run_bytes = 0
    for piece in pieces:
        if isinstance(piece, FileSlice) or len(piece) >= max_bytes:
            if run:
                yield b"".join(run)
                run, run_bytes = [], 0
            yield piece
            continue
        run.append(piece)
        run_bytes += len(piece)
        if run_bytes >= max_bytes:
            yield b"".join(run)
            run, run_bytes = [], 0
    if run:
        yield b"".join(run)


def pieces_to_bytes(pieces: Iterator[Piece]) -> Iterator[bytes]:
    for piece in pieces:
        if isinstance(piece, FileSlice):
            with piece.file:
                yield from piece.iter_bytes()
        else:
            yield piece


def _bookkeeper(cycle: Any) -> Callable[[int], None] | None:
    """How to tell a uvicorn request cycle that ``n`` body bytes were written behind its back."""
    conn = getattr(cycle, "conn", None)
    if conn is not None and hasattr(conn, "_writer"):  # h11: a ContentLengthWriter once started

        def h11_sent(n: int) -> None:
            writer = conn._writer
            if not hasattr(writer, "_length"):
                raise RuntimeError("zerocopysend needs a Content-Length response")
            writer._length -= n

        return h11_sent
    if hasattr(cycle, "expected_content_length"):  # httptools

        def httptools_sent(n: int) -> None:
            cycle.expected_content_length -= n

        return httptools_sent
    return None


def zerocopy_send(scope: Scope, send: Send) -> tuple[Scope, Send]:
    """If ``send`` belongs to a uvicorn cycle on an asyncio selector loop, add the extension."""
    if scope.get("type") != "http":
        return scope, send
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    account = _bookkeeper(cycle)
    loop = asyncio.get_running_loop()
    if (
        transport is None
        or account is None
        or not isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop)
        or getattr(transport, "_sendfile_compatible", None) is None
    ):
        return scope, send
    extensions = dict(scope.get("extensions") or {})
    extensions[ZEROCOPY_EXTENSION] = {}
    scope = {**scope, "extensions": extensions}

    async def send_with_zerocopy(message: Message) -> None:
        if message["type"] != ZEROCOPY_EXTENSION:
            await send(message)
            return
        count: int = message["count"]
        if count and not transport.is_closing():
            if getattr(cycle, "response_complete", False):
                raise RuntimeError("zerocopysend after the response completed")
            try:
                sent = await loop.sendfile(transport, message["file"], message["offset"], count)
            except (ConnectionError, RuntimeError) as exc:
                raise OSError(f"client went away during sendfile: {exc}") from exc
            account(sent)
            if sent != count:
                raise OSError(f"sendfile sent {sent} of {count} bytes")
        if not message.get("more_body", False):
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    return scope, send_with_zerocopy


class PiecesResponse(Response):
    """A response whose body is a sequence of pieces (see the module docstring)."""

    def __init__(
        self,
        pieces: Iterator[Piece],
        *,
        status_code: int = 200,
        headers: dict[str, str] | None = None,
        media_type: str = "application/octet-stream",
        on_bytes: Callable[[int], None] | None = None,
        on_zerocopy_bytes: Callable[[int], None] | None = None,
        background: BackgroundTask | None = None,
    ) -> None:
        self.pieces = pieces
        self.on_bytes = on_bytes
        self.on_zerocopy_bytes = on_zerocopy_bytes
        self.status_code = status_code
        self.media_type = media_type
        self.background = background
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        zerocopy = ZEROCOPY_EXTENSION in (scope.get("extensions") or {})
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        try:
            async for piece in read_ahead(coalesce(self.pieces), size=_piece_size):
                if isinstance(piece, FileSlice):
                    with piece.file:
                        if zerocopy:
                            await send(
                                {
                                    "type": ZEROCOPY_EXTENSION,
                                    "file": piece.file,
                                    "offset": piece.offset,
                                    "count": piece.count,
                                    "more_body": True,
                                }
                            )
                            if self.on_zerocopy_bytes is not None:
                                self.on_zerocopy_bytes(piece.count)
                        else:
                            async for chunk in read_ahead(piece.iter_bytes()):
                                await send(
                                    {"type": "http.response.body", "body": chunk, "more_body": True}
                                )
                    n = piece.count
                else:
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
                    n = len(piece)
                if self.on_bytes is not None:
                    self.on_bytes(n)
        except ResponseCutShortError as exc:
            logger.warning("response cut short: %s", exc)
            return
        except OSError as exc:
            logger.info("client disconnected mid-response: %s", exc)
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        if self.background is not None:
            await self.background()
