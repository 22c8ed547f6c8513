"""Link emulation as one ASGI middleware: latency once per request, bytes paced by a shared bucket.

Every emulated link of the testbed (an edge node's radio link, ``edge_node.link``; an origin's
backhaul) is this one middleware, configured with its latency, its :class:`TokenBucket` and the
paths it leaves alone:

- **Latency** is added once per emulated request, before it is handled, so it shows up as time
  to first byte (never per chunk).
- **Rate**: one bucket per link, shared by every response the link carries concurrently, so
  parallel connections get the configured rate in total, not once per connection.
- Body messages are cut into slices (~20 per second of line time, 16 KiB to 1 MiB) and each
  slice waits for its booking on the bucket before it goes out. Zero-copy ``sendfile`` messages
  (:data:`ZEROCOPY_EXTENSION`, see ``edge_node.zerocopy``) are cut into file slices the same way:
  they keep their zero-copy path but never bypass the limiter.
- Paths starting with one of ``unemulated`` (control and observability) are neither delayed nor
  paced; :class:`LinkCounters` counts both kinds of request, so tests check the split by count.
- A request carrying :data:`WIRED_HEADER` comes from an edge node that emulates this link on its
  own side (``edge_node.wired``, per block transfer): it is left alone, so it is emulated once.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.ratelimit import TokenBucket

#: The ASGI message type of a zero-copy file slice (uvicorn + ``loop.sendfile``).
ZEROCOPY_EXTENSION = "http.response.zerocopysend"
#: Sent by an edge node on requests whose wired link it emulates itself (``edge_node.wired``).
WIRED_HEADER = "X-TrimCache-Wired"
_WIRED = WIRED_HEADER.lower().encode()
#: Idle-link credit: absorbs the senders' wake-up jitter without letting a burst beat the rate.
BURST_S = 0.02


@dataclass(slots=True)
class LinkCounters:
    """What the middleware did, for tests and stats: requests it emulated and left alone."""

    delayed_requests: int = 0
    unemulated_requests: int = 0


def make_bucket(rate_bytes_per_s: float | None) -> TokenBucket | None:
    """The node's shared radio link bucket (None when the rate is not emulated)."""
    if not rate_bytes_per_s:
        return None
    return TokenBucket(rate_bytes_per_s, burst_bytes=int(rate_bytes_per_s * BURST_S))


class LinkEmulationMiddleware:
    """Adds ``latency_ms`` once per emulated request and paces its body through ``bucket``.

    Args:
        app: the service's ASGI app.
        latency_ms: added before each emulated request.
        bucket: the link's shared bucket (None: the rate is not emulated).
        unemulated: path prefixes neither delayed nor paced.
        counters: where the request counts go (a new one by default).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        latency_ms: float,
        bucket: TokenBucket | None,
        unemulated: tuple[str, ...] = (),
        counters: LinkCounters | None = None,
    ) -> None:
        self.app = app
        self.latency_s = latency_ms / 1000.0
        self.bucket = bucket
        self.unemulated = unemulated
        self.counters = counters if counters is not None else LinkCounters()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope.get("path", "").startswith(self.unemulated)
            or any(k.lower() == _WIRED for k, _v in scope.get("headers") or ())
        ):
            self.counters.unemulated_requests += 1
            await self.app(scope, receive, send)
            return
        self.counters.delayed_requests += 1
        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)
        if self.bucket is not None:
            send = _paced_send(send, self.bucket)
        await self.app(scope, receive, send)


def _paced_send(send: Send, bucket: TokenBucket) -> Send:
    async def paced(message: Message) -> None:
        kind = message["type"]
        step = bucket.slice_bytes()
        if kind == "http.response.body":
            body: bytes = message.get("body", b"")
            if len(body) <= step:
                await bucket.wait_async(len(body))
                await send(message)
                return
            more_body = message.get("more_body", False)
            view = memoryview(body)
            for i in range(0, len(body), step):
                part = bytes(view[i : i + step])
                await bucket.wait_async(len(part))
                last = i + step >= len(body)
                await send({"type": kind, "body": part, "more_body": more_body if last else True})
        elif kind == ZEROCOPY_EXTENSION:
            count: int = message["count"]
            if count <= step:
                await bucket.wait_async(count)
                await send(message)
                return
            more_body = message.get("more_body", False)
            offset: int = message["offset"]
            for i in range(0, count, step):
                n = min(step, count - i)
                await bucket.wait_async(n)
                last = i + n >= count
                await send(
                    {
                        **message,
                        "offset": offset + i,
                        "count": n,
                        "more_body": more_body if last else True,
                    }
                )
        else:
            await send(message)

    return paced
