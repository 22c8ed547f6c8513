"""A shared token bucket that paces bytes onto one emulated link (pure: time/threading/asyncio).

One :class:`TokenBucket` stands for one link. Every sender on that link (threads, asyncio tasks, or
both) books its bytes on the same bucket, so all of them together go no faster than
``rate_bytes_per_s``. The testbed's origin paces its backhaul with one; an edge node paces its radio
link with one.

It is a virtual clock: ``_free_at`` marks when the link is next free. Booking ``n`` bytes moves it
on by ``n / rate`` seconds and tells the sender how long to wait (until its booking ends). Idle time
banks at most ``burst_bytes`` of credit (default none: ``n`` bytes never take less than
``n / rate``), which also absorbs the senders' wake-up jitter on a busy link. A
booking is taken under a :class:`threading.Lock` and never awaits while holding it, so the bucket is
safe from worker threads and from coroutines on any event loop at the same time.
"""

from __future__ import annotations

import asyncio
import threading
import time

#: Largest slice a sender should book at once.
MAX_SLICE_BYTES = 1024 * 1024
#: Smallest slice worth a booking (below this the sleeps cost more than they pace).
MIN_SLICE_BYTES = 16 * 1024


class TokenBucket:
    """All bytes booked here together go no faster than ``rate_bytes_per_s``."""

    def __init__(self, rate_bytes_per_s: float, *, burst_bytes: int = 0) -> None:
        if not rate_bytes_per_s > 0:
            raise ValueError(f"rate_bytes_per_s must be > 0, got {rate_bytes_per_s}")
        if burst_bytes < 0:
            raise ValueError(f"burst_bytes must be >= 0, got {burst_bytes}")
        self.rate_bytes_per_s = float(rate_bytes_per_s)
        self.burst_bytes = burst_bytes
        self._burst_s = burst_bytes / self.rate_bytes_per_s
        self._lock = threading.Lock()
        self._free_at = 0.0

    def slice_bytes(self) -> int:
        """How many bytes to book at a time: ~20 bookings a second, 16 KiB to 1 MiB."""
        return int(max(MIN_SLICE_BYTES, min(MAX_SLICE_BYTES, self.rate_bytes_per_s / 20)))

    def reserve(self, nbytes: int) -> float:
        """Book ``nbytes`` on the link; return the seconds to wait before they count as sent."""
        if nbytes <= 0:
            return 0.0
        with self._lock:
            now = time.monotonic()
            start = max(self._free_at, now - self._burst_s)
            self._free_at = start + nbytes / self.rate_bytes_per_s
            return max(0.0, self._free_at - now)

    def wait(self, nbytes: int) -> None:
        """Book ``nbytes`` and block this thread until the booking ends."""
        delay = self.reserve(nbytes)
        if delay > 0:
            time.sleep(delay)

    async def wait_async(self, nbytes: int) -> None:
        """Book ``nbytes`` and suspend this coroutine until the booking ends."""
        delay = self.reserve(nbytes)
        if delay > 0:
            await asyncio.sleep(delay)
