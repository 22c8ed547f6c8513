"""Radio link emulation (``EDGE_LINK_RATE_BYTES_PER_S``, ``EDGE_LINK_LATENCY_MS``).

The testbed's radio profile is "the link between this edge node and a user". The node emulates it
with one ASGI middleware, added only when emulation is on (off, the default, leaves every serving
path exactly as it is):

- **Latency** is added once per data request, before the request is handled, so it shows up as
  time to first byte (never per chunk).
- **Rate**: one :class:`core.ratelimit.TokenBucket` per node, shared by every response the node
  sends concurrently. A client downloading with several parallel connections (the SDK uses ~4)
  therefore gets the configured rate in total, not once per connection. One bucket per node (not
  per client address) models one user at a time on the cell's link, which is what the testbed
  runs; several simultaneous users share the node's rate.
- The middleware paces the messages on their way to the server: body messages are cut into
  slices (~20 per second of line time, 16 KiB to 1 MiB) and each slice waits for its booking on
  the bucket before it goes out. Zero-copy ``sendfile`` messages (see :mod:`edge_node.zerocopy`)
  are cut into file slices the same way, so they keep their zero-copy path but never bypass the
  limiter. Every route's bytes go through it: blocks, batches, Hub ``resolve``, the Hub and
  model metadata JSON.
- Control and observability paths (``/healthz``, ``/metrics``, ``/v1/stats``, ``/v1/plan``) are
  neither delayed nor paced: they are not radio traffic.
- Peer migration (another edge fetching ``/v1/blocks:batch`` from this one) cannot be told apart
  from a client's batch request, so it shares the radio bucket too: while a node emulates its radio
  link, blocks migrate out of it no faster than that link's rate.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.ratelimit import TokenBucket
from edge_node.zerocopy import ZEROCOPY_EXTENSION

#: Paths never delayed nor paced by the link emulation (control and observability).
UNEMULATED_PREFIXES = ("/healthz", "/metrics", "/v1/stats", "/v1/plan")
#: Idle-link credit: absorbs the senders' wake-up jitter without letting a burst beat the rate.
BURST_S = 0.02


@dataclass(slots=True)
class LinkCounters:
    """What the middleware did, for tests and stats: requests it delayed and paced bytes."""

    delayed_requests: int = 0
    unemulated_requests: int = 0


def make_bucket(rate_bytes_per_s: float | None) -> TokenBucket | None:
    """The node's shared radio link bucket (None when the rate is not emulated)."""
    if not rate_bytes_per_s:
        return None
    return TokenBucket(rate_bytes_per_s, burst_bytes=int(rate_bytes_per_s * BURST_S))


class LinkEmulationMiddleware:
    """Adds ``latency_ms`` once per data request and paces its body through ``bucket``."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        latency_ms: float,
        bucket: TokenBucket | None,
        counters: LinkCounters | None = None,
    ) -> None:
        self.app = app
        self.latency_s = latency_ms / 1000.0
        self.bucket = bucket
        self.counters = counters if counters is not None else LinkCounters()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path", "").startswith(UNEMULATED_PREFIXES):
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
