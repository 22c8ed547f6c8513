"""Waiting for a condition: the one polling loop (tests, benchmarks and the testbed launcher).

:func:`wait_until` calls a predicate until it returns something truthy or a deadline passes.
The clock and the sleep are injectable, so callers that test time-dependent logic need not
wait on the wall clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T | None],
    *,
    timeout_s: float = 15.0,
    interval_s: float = 0.05,
    what: str = "condition",
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``predicate`` until it returns a truthy value; return that value.

    Exceptions raised by ``predicate`` count as "not yet" (the last one is named in the error).

    Raises:
        TimeoutError: ``timeout_s`` passed first.

    >>> calls = iter([0, None, 7])
    >>> wait_until(lambda: next(calls), sleep=lambda _s: None)
    7
    """
    deadline = clock() + timeout_s
    last_exc: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last_exc = exc
        if clock() >= deadline:
            break
        sleep(interval_s)
    raise TimeoutError(f"{what} not met within {timeout_s}s (last error: {last_exc!r})")
