"""Radio link emulation (``EDGE_LINK_RATE_BYTES_PER_S``, ``EDGE_LINK_LATENCY_MS``).

The testbed's radio profile is "the link between this edge node and a user". The node emulates it
with the one link middleware of the project (:class:`core.link.LinkEmulationMiddleware`), added
only when emulation is on (off, the default, leaves every serving path exactly as it is); this
module holds the edge's configuration of it:

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
  limiter (bodies written straight to the socket, :mod:`edge_node.direct`, are not offered
  while the rate is emulated). Every route's bytes go through it: blocks, batches, Hub
  ``resolve``, the Hub and model metadata JSON.
- Control and observability paths (``/healthz``, ``/metrics``, ``/v1/stats``, ``/v1/plan``) are
  neither delayed nor paced: they are not radio traffic.
- Peer migration (another edge fetching ``/v1/blocks:batch`` from this one) cannot be told apart
  from a client's batch request, so it shares the radio bucket too: while a node emulates its radio
  link, blocks migrate out of it no faster than that link's rate.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from core.link import LinkCounters, make_bucket
from core.link import LinkEmulationMiddleware as _Link
from core.ratelimit import TokenBucket
from edge_node.direct import DIRECT_EXTENSION

__all__ = ["UNEMULATED_PREFIXES", "LinkCounters", "LinkEmulationMiddleware", "make_bucket"]

#: Paths never delayed nor paced by the link emulation (control and observability).
UNEMULATED_PREFIXES = ("/healthz", "/metrics", "/v1/stats", "/v1/plan")


class LinkEmulationMiddleware(_Link):
    """The radio link of an edge node: :class:`core.link.LinkEmulationMiddleware` leaving
    :data:`UNEMULATED_PREFIXES` alone."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        latency_ms: float,
        bucket: TokenBucket | None,
        counters: LinkCounters | None = None,
    ) -> None:
        super().__init__(
            app,
            latency_ms=latency_ms,
            bucket=bucket,
            unemulated=UNEMULATED_PREFIXES,
            counters=counters,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A body written straight to the socket would bypass the pacing: paced responses take
        # the per-message path (zero-copy messages are paced slice by slice).
        extensions = scope.get("extensions") or {}
        if self.bucket is not None and DIRECT_EXTENSION in extensions:
            extensions = {k: v for k, v in extensions.items() if k != DIRECT_EXTENSION}
            scope = {**scope, "extensions": extensions}
        await super().__call__(scope, receive, send)
