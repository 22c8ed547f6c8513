"""Whole response bodies written straight to the socket from one worker thread.

Sending a body as ASGI messages costs several event-loop and thread hops per piece (a read-ahead
hop, h11, the transport's buffer, flow control, one ``loop.sendfile`` per block with its drain
wait); a model of 100+ blocks pays it 100+ times, and on a loaded host every hop is a wait for
the CPU. nginx instead runs one tight ``sendfile`` loop. The ``trimcache.response.direct``
extension does the same for :class:`edge_node.zerocopy.PiecesResponse`:

- the app sends ``{"type": DIRECT_EXTENSION, "run": run, "more_body": False}`` after
  ``http.response.start``; :func:`send_direct` waits until the transport's buffer is empty
  (headers are out), pauses reading, runs ``run(writer)`` in a worker thread, where
  :class:`SocketWriter` writes with ``os.writev`` / ``os.sendfile`` on the socket (in
  blocking mode meanwhile), then tells the protocol how many body bytes went out
  and ends the body;
- at most :data:`MAX_DIRECT` bodies use it at once (:func:`direct_ready`), so long downloads
  never take the worker threads that ``def`` routes need; others use the per-piece path;
- a client that takes no bytes for :data:`IDLE_TIMEOUT_S` ends the response (``TimeoutError``).

It relies on the same uvicorn/asyncio internals as ``loop.sendfile`` (``_make_empty_waiter``),
so it is offered exactly where zero-copy is (:func:`edge_node.zerocopy.zerocopy_send`).
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import anyio
import anyio.to_thread

DIRECT_EXTENSION = "trimcache.response.direct"
#: Bodies written directly at the same time (each holds a worker thread while it runs).
MAX_DIRECT = 16
#: A client that accepts no byte for this long is dropped.
IDLE_TIMEOUT_S = 60.0
#: At most this many buffers per ``writev`` (the kernel's IOV_MAX is 1024).
MAX_IOV = 512

_limiters: dict[asyncio.AbstractEventLoop, anyio.CapacityLimiter] = {}

Buffer = bytes | bytearray | memoryview


def _limiter() -> anyio.CapacityLimiter:
    loop = asyncio.get_running_loop()
    limiter = _limiters.get(loop)
    if limiter is None:
        limiter = _limiters[loop] = anyio.CapacityLimiter(MAX_DIRECT)
    return limiter


def direct_ready(scope: Mapping[str, Any]) -> bool:
    """Whether a body may be written directly now (offered and a sender slot free)."""
    if DIRECT_EXTENSION not in (scope.get("extensions") or {}):
        return False
    return _limiter().available_tokens >= 1


class SocketWriter:
    """Blocking writes on the socket ``fd`` from one worker thread.

    While :meth:`blocking` is entered the fd is in blocking mode with ``SO_SNDTIMEO``, so the
    kernel waits for buffer space itself (a non-blocking loop with ``poll`` costs ~50 % more
    CPU per byte in partial writes and wake-ups); leaving it restores non-blocking mode for the
    event loop.
    """

    def __init__(self, fd: int, *, idle_timeout_s: float = IDLE_TIMEOUT_S) -> None:
        self.fd = fd
        #: Body bytes written so far.
        self.sent = 0
        self.idle_timeout_s = idle_timeout_s

    @contextmanager
    def blocking(self) -> Iterator[None]:
        seconds = int(self.idle_timeout_s)
        micros = int((self.idle_timeout_s - seconds) * 1e6)
        with socket.socket(fileno=os.dup(self.fd)) as sock:  # the same socket, own fd
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(seconds, micros))
            # Corked (as nginx's tcp_nopush): tails and small blocks fill whole segments.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
            os.set_blocking(self.fd, True)
            try:
                yield
            finally:
                os.set_blocking(self.fd, False)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(0, 0))
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)  # sends the rest

    def _stalled(self) -> TimeoutError:
        return TimeoutError(f"client took no bytes for {self.idle_timeout_s:.0f} s")

    def writev(self, buffers: Sequence[Buffer]) -> None:
        """Write all ``buffers`` in order (few syscalls: one ``writev`` per batch)."""
        pending = [memoryview(b) for b in buffers if len(b)]
        first = 0
        while first < len(pending):
            try:
                n = os.writev(self.fd, pending[first : first + MAX_IOV])
            except BlockingIOError:
                raise self._stalled() from None
            self.sent += n
            while first < len(pending) and n >= len(pending[first]):
                n -= len(pending[first])
                first += 1
            if n:
                pending[first] = pending[first][n:]

    def sendfile(self, in_fd: int, offset: int, count: int) -> int:
        """Send ``count`` bytes of ``in_fd`` at ``offset``; returns fewer if the file ends."""
        done = 0
        while done < count:
            try:
                n = os.sendfile(self.fd, in_fd, offset + done, count - done)
            except BlockingIOError:
                raise self._stalled() from None
            if n == 0:
                break
            done += n
            self.sent += n
        return done


def _timeval(seconds: int, micros: int) -> bytes:
    return struct.pack("@ll", seconds, micros)


Run = Callable[[SocketWriter], None]


def _run_blocking(run: Run, writer: SocketWriter) -> None:
    with writer.blocking():
        run(writer)


async def send_direct(
    transport: Any, run: Run, account: Callable[[int], None], send: Any, *, more_body: bool
) -> None:
    """Run ``run`` on the transport's socket in a worker thread (see the module docstring)."""
    if transport.is_closing():
        raise OSError("client went away before the body")
    resume_reading = transport.is_reading()
    transport.pause_reading()
    writer: SocketWriter | None = None
    try:
        await transport._make_empty_waiter()  # the headers (and anything before) are out
        writer = SocketWriter(transport.get_extra_info("socket").fileno())
        await anyio.to_thread.run_sync(_run_blocking, run, writer, limiter=_limiter())
    finally:
        transport._reset_empty_waiter()
        if writer is not None:
            account(writer.sent)
        if resume_reading and not transport.is_closing():
            transport.resume_reading()
    if not more_body:
        await send({"type": "http.response.body", "body": b"", "more_body": False})
