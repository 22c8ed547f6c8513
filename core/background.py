"""One way to run a service's background loop: a named daemon thread with a stop event.

The controller's planner loop and origin indexer use it: ``start()`` clears the event and starts
the thread, ``stop()`` sets it and joins (bounded), so a loop that waits on ``stop_event``
(``stop_event.wait(interval)``) ends promptly and a second ``start()`` runs it again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class LoopThread:
    """``target`` on a daemon thread named ``name`` until :meth:`stop`."""

    def __init__(
        self, target: Callable[[], object], *, name: str, join_timeout_s: float = 30.0
    ) -> None:
        self.stop_event = threading.Event()
        self._target = target
        self._name = name
        self._join_timeout_s = join_timeout_s
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.stop_event.clear()
        self._thread = threading.Thread(target=self._target, name=self._name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout=self._join_timeout_s)
            self._thread = None
