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
  (uvloop, hypercorn, TestClient), or a uvicorn outside ``UVICORN_RANGE`` (the releases whose
  internals this relies on, pinned in pyproject.toml), simply does not get the extension; the
  node logs at start-up whether it is active (:func:`zerocopy_status`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, BinaryIO, ClassVar

import anyio.to_thread
from starlette.background import BackgroundTask
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from core.link import ZEROCOPY_EXTENSION
from edge_node.direct import (
    DIRECT_EXTENSION,
    MAX_DIRECT,
    SocketWriter,
    direct_ready,
    send_direct,
)
from edge_node.streaming import read_ahead

logger = logging.getLogger(__name__)

_READ_BYTES = 1 << 20
#: uvicorn releases whose protocol internals :func:`zerocopy_send` relies on ([lo, hi); the
#: h11 ``ContentLengthWriter._length`` and httptools ``expected_content_length`` bookkeeping).
#: Kept equal to the ``uvicorn`` range in pyproject.toml; outside it zero-copy stays off.
UVICORN_RANGE = ((0, 29), (0, 56))
#: The end of every ``sendfile``'d slice that is read and checked instead (see PiecesResponse).
TAIL_BYTES = 64 * 1024
#: Bytes gathered for one ``writev`` on the direct path (and its reused read buffer).
GATHER_BYTES = 4 << 20
#: On the direct path, slices from this size go by ``sendfile`` (+ a checked tail): there a
#: ``sendfile`` costs one syscall, not an event-loop round trip.
DIRECT_SENDFILE_BYTES = 4 * TAIL_BYTES


def _signature(fd: int) -> tuple[int, int, int, int]:
    st = os.fstat(fd)
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(slots=True)
class FileSlice:
    """``count`` bytes at ``offset`` of an open file (the response closes it).

    ``signature`` (inode, size, mtime, ctime) is taken when the slice is made, i.e. just after
    the node found the block trusted; any write to the file changes it (a write updates ctime
    before its bytes become visible, and ctime cannot be set back), so :meth:`check` after a
    read proves the bytes read are the ones that were verified.
    """

    file: BinaryIO
    offset: int
    count: int
    signature: tuple[int, int, int, int] | None = None

    def __post_init__(self) -> None:
        if self.signature is None:
            self.signature = _signature(self.file.fileno())

    def check(self) -> None:
        """Raise :class:`SourceChangedError` if the file was written since the slice was made."""
        if _signature(self.file.fileno()) != self.signature:
            raise SourceChangedError(self)

    def read(self, offset: int, count: int) -> bytes:
        """``count`` bytes at ``offset`` of the file, checked unchanged after the read."""
        chunk = os.pread(self.file.fileno(), count, offset)
        if len(chunk) != count:
            raise SourceChangedError(self)
        self.check()
        return chunk

    def read_into(self, view: memoryview, offset: int) -> None:
        """Fill ``view`` with the file's bytes at ``offset``, checked unchanged after the read."""
        if os.preadv(self.file.fileno(), [view], offset) != len(view):
            raise SourceChangedError(self)
        self.check()

    def iter_bytes(self, end: int | None = None) -> Iterator[bytes]:
        """The slice (up to file offset ``end``) in checked 1 MiB reads."""
        offset = self.offset
        stop = self.offset + self.count if end is None else end
        while offset < stop:
            chunk = self.read(offset, min(_READ_BYTES, stop - offset))
            offset += len(chunk)
            yield chunk


Piece = bytes | FileSlice


class ResponseCutShortError(OSError):
    """A body's source failed after the status line went out: the response ends early (the
    client sees fewer bytes than ``Content-Length``), logged as a warning, not a traceback."""


class SourceChangedError(ResponseCutShortError):
    """A served file was written (or shrank) while its response streamed."""

    def __init__(self, piece: FileSlice) -> None:
        super().__init__(f"{getattr(piece.file, 'name', 'file')} changed while being served")
        self.piece = piece


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


def _small_to_bytes(pieces: Iterator[Piece]) -> Iterator[Piece]:
    """Slices of at most ``_READ_BYTES`` as checked bytes (read in the read-ahead thread and
    coalesced with their neighbours: one write instead of a ``sendfile`` and a tail each)."""
    for piece in pieces:
        if isinstance(piece, FileSlice) and piece.count <= _READ_BYTES:
            with piece.file:
                yield piece.read(piece.offset, piece.count)
        else:
            yield piece


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


def _uvicorn_supported() -> tuple[bool, str]:
    try:
        from importlib.metadata import PackageNotFoundError, version

        found = version("uvicorn")
    except PackageNotFoundError:
        return False, "uvicorn is not installed"
    numbers = tuple(int(p) for p in found.split(".")[:2] if p.isdigit())
    lo, hi = UVICORN_RANGE
    if not lo <= numbers < hi:
        return False, f"uvicorn {found} is outside the tested range {_range_text()}"
    return True, f"uvicorn {found}"


def _range_text() -> str:
    lo, hi = UVICORN_RANGE
    return f">={lo[0]}.{lo[1]},<{hi[0]}.{hi[1]}"


_UVICORN_OK = _uvicorn_supported()


def zerocopy_status() -> tuple[bool, str]:
    """Whether ``sendfile`` responses can be active in this process, and why (for start-up).

    Call it on the serving loop: the extension needs a supported uvicorn (its h11 or
    httptools protocol) on an asyncio selector loop (not uvloop).
    """
    ok, why = _UVICORN_OK
    if not ok:
        return False, why
    loop = asyncio.get_running_loop()
    if not isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop):
        return False, f"{why} on {type(loop).__name__}, not an asyncio selector loop"
    return True, f"{why} on {type(loop).__name__} (h11 or httptools)"


def zerocopy_send(scope: Scope, send: Send) -> tuple[Scope, Send]:
    """If ``send`` belongs to a uvicorn cycle on an asyncio selector loop, add the extension."""
    if scope.get("type") != "http" or not _UVICORN_OK[0]:
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
    if hasattr(transport, "_make_empty_waiter"):
        extensions[DIRECT_EXTENSION] = {}
    scope = {**scope, "extensions": extensions}

    async def send_with_zerocopy(message: Message) -> None:
        if message["type"] == DIRECT_EXTENSION:
            if getattr(cycle, "response_complete", False):
                raise RuntimeError("direct body after the response completed")
            more_body = message.get("more_body", False)
            await send_direct(transport, message["run"], account, send, more_body=more_body)
            return
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


class _Gather:
    """Pieces bound for one ``writev``: ``bytes`` as they are, file bytes read (and checked)
    into one reused buffer. A buffer may be reused once ``writev`` returns: the kernel copied it.
    """

    _free: ClassVar[list[bytearray]] = []  # buffers of finished bodies (at most MAX_DIRECT)
    _free_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, writer: SocketWriter, on_bytes: Callable[[int], None] | None) -> None:
        self.writer = writer
        self.on_bytes = on_bytes
        with self._free_lock:
            self.buffer = self._free.pop() if self._free else bytearray(GATHER_BYTES)
        self.view = memoryview(self.buffer)
        self.used = 0  # of ``view``
        self.pending: list[bytes | memoryview] = []
        self.pending_bytes = 0

    def add(self, data: bytes | memoryview) -> None:
        self.pending.append(data)
        self.pending_bytes += len(data)
        if self.pending_bytes >= GATHER_BYTES or len(self.pending) >= 256:
            self.flush()

    def read(self, piece: FileSlice, offset: int, count: int) -> None:
        """Queue ``count`` bytes of ``piece`` at file ``offset`` (checked after the read)."""
        end = offset + count
        while offset < end:
            if self.used == len(self.view):
                self.flush()
            n = min(end - offset, len(self.view) - self.used, _READ_BYTES)
            view = self.view[self.used : self.used + n]
            piece.read_into(view, offset)
            self.used += n
            offset += n
            self.add(view)

    def flush(self) -> None:
        if self.pending:
            self.writer.writev(self.pending)
            if self.on_bytes is not None:
                self.on_bytes(self.pending_bytes)
        self.pending, self.pending_bytes, self.used = [], 0, 0

    def close(self) -> None:
        """Give the buffer back (no view of it may be used after this)."""
        self.pending, self.pending_bytes, self.used = [], 0, 0
        with self._free_lock:
            if len(self._free) < MAX_DIRECT:
                self._free.append(self.buffer)


class PiecesResponse(Response):
    """A response whose body is a sequence of pieces (see the module docstring).

    Every byte of a :class:`FileSlice` leaves only after a check that its file is unchanged
    since the block was found trusted (:meth:`FileSlice.check`); a changed file ends the
    response short (``on_changed`` is told, e.g. to re-hash and quarantine the block):

    - read path (``zero_copy=False`` or no extension): each 1 MiB chunk is read, checked, then
      sent, so no changed byte ever goes out;
    - ``sendfile`` path: slices of at most 1 MiB are read and checked like the read path; of
      larger ones all but the last ``TAIL_BYTES`` go by ``sendfile``, then the tail is read and
      checked (which also covers the bytes sent before it) and sent. A write
      during the ``sendfile`` may reach the client, but the response never completes: clients
      of ``/v1/blocks`` hash every block and fetch it again; for Hub clients, which resume with
      a Range and keep what they had, ``on_changed`` taints the block (:mod:`edge_node.tainted`:
      a resume over it gets the whole file).

    Where the server offers :mod:`edge_node.direct` (and the body has a Content-Length), the
    same two paths run in one worker thread writing to the socket itself (:meth:`_write_direct`),
    not as one ASGI message per piece; there ``sendfile`` starts at ``DIRECT_SENDFILE_BYTES``,
    and a slice followed by more of the body goes whole, checked before the next byte is
    written (the next bytes are what the response withholds); only the body's last slice
    keeps a checked tail.
    """

    def __init__(
        self,
        pieces: Iterator[Piece],
        *,
        status_code: int = 200,
        headers: dict[str, str] | None = None,
        media_type: str = "application/octet-stream",
        on_bytes: Callable[[int], None] | None = None,
        on_zerocopy_bytes: Callable[[int], None] | None = None,
        on_changed: Callable[[FileSlice], None] | None = None,
        zero_copy: bool = True,
        background: BackgroundTask | None = None,
    ) -> None:
        self.pieces = pieces
        self.on_bytes = on_bytes
        self.on_zerocopy_bytes = on_zerocopy_bytes
        self.on_changed = on_changed
        self.zero_copy = zero_copy
        self.status_code = status_code
        self.media_type = media_type
        self.background = background
        self.init_headers(headers)

    async def _send_slice(self, piece: FileSlice, send: Send) -> None:
        end = piece.offset + piece.count
        if piece.count > TAIL_BYTES:
            count = piece.count - TAIL_BYTES
            await send(
                {
                    "type": ZEROCOPY_EXTENSION,
                    "file": piece.file,
                    "offset": piece.offset,
                    "count": count,
                    "more_body": True,
                }
            )
            if self.on_zerocopy_bytes is not None:
                self.on_zerocopy_bytes(count)
            tail = piece.read(end - TAIL_BYTES, TAIL_BYTES)  # 64 KiB from the page cache
            await send({"type": "http.response.body", "body": tail, "more_body": True})
            return
        body = piece.read(piece.offset, piece.count)  # at most 64 KiB
        await send({"type": "http.response.body", "body": body, "more_body": True})

    def _write_direct(self, writer: SocketWriter, *, zerocopy: bool) -> None:
        """The whole body on the socket from this worker thread (see :mod:`edge_node.direct`).

        ``bytes`` and file bytes read and checked go out gathered in ``writev`` calls. With
        ``zerocopy``, slices of ``DIRECT_SENDFILE_BYTES`` or more go by ``sendfile``, and the
        file is checked right after it, before any later byte of the body is written; so a
        file written during its ``sendfile`` ends the response short, as on the message path.
        Only the body's last piece has no later byte to hold back: a slice that ends the body
        keeps its last ``TAIL_BYTES`` out of the ``sendfile`` and sends them read and checked.
        Checking once per slice (not reading a tail of each) saves a read, a copy and a
        ``writev`` per block of a batch.
        """
        out = _Gather(writer, self.on_bytes)
        # The body's end, from its Content-Length: no look-ahead, since a piece may only stay
        # readable until the next one is asked for (pull-through windows).
        remaining = int(self.headers["content-length"])
        try:
            for piece in self.pieces:
                if not isinstance(piece, FileSlice):
                    out.add(piece)
                    remaining -= len(piece)
                    continue
                remaining -= piece.count
                with piece.file:
                    if zerocopy and piece.count >= DIRECT_SENDFILE_BYTES:
                        out.flush()
                        last = remaining <= 0
                        count = piece.count - TAIL_BYTES if last else piece.count
                        if writer.sendfile(piece.file.fileno(), piece.offset, count) != count:
                            raise SourceChangedError(piece)
                        if self.on_zerocopy_bytes is not None:
                            self.on_zerocopy_bytes(count)
                        if self.on_bytes is not None:
                            self.on_bytes(count)
                        if last:
                            out.read(piece, piece.offset + count, TAIL_BYTES)
                        else:
                            piece.check()
                    else:
                        out.read(piece, piece.offset, piece.count)
            out.flush()
        finally:
            out.close()
            close = getattr(self.pieces, "close", None)
            if close is not None:
                close()

    async def _send_body(self, scope: Scope, send: Send) -> None:
        extensions = scope.get("extensions") or {}
        zerocopy = self.zero_copy and ZEROCOPY_EXTENSION in extensions
        if direct_ready(scope) and "content-length" in self.headers:
            run = partial(self._write_direct, zerocopy=zerocopy)
            await send({"type": DIRECT_EXTENSION, "run": run, "more_body": False})
            return
        # Read path: slices become checked 1 MiB reads, gathered with the other pieces so one
        # worker-thread hop reads ahead across block boundaries.
        pieces = _small_to_bytes(self.pieces) if zerocopy else pieces_to_bytes(self.pieces)
        async for piece in read_ahead(coalesce(pieces), size=_piece_size):
            if isinstance(piece, FileSlice):
                with piece.file:
                    await self._send_slice(piece, send)
                n = piece.count
            else:
                await send({"type": "http.response.body", "body": piece, "more_body": True})
                n = len(piece)
            if self.on_bytes is not None:
                self.on_bytes(n)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        try:
            await self._send_body(scope, send)
        except SourceChangedError as exc:
            logger.warning("response cut short: %s", exc)
            if self.on_changed is not None:
                await anyio.to_thread.run_sync(self.on_changed, exc.piece)
            return
        except ResponseCutShortError as exc:
            logger.warning("response cut short: %s", exc)
            return
        except OSError as exc:
            logger.info("client disconnected mid-response: %s", exc)
            return
        if self.background is not None:
            await self.background()
