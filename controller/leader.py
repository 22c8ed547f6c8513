"""Which controller replica runs the planner's background loop: a leader lease in Redis.

Any number of controller processes may share one Redis; all serve every request, but only the
*leader* runs :meth:`controller.planner.Planner.tick` (re-plans on changes, retries, drift
repair), so the loop's reads and edge polls are not multiplied by the replica count. The lease
is the key ``ctl:planner:leader`` = ``"{replica_id} {term}"`` with a TTL of ``lease_s``
(``CONTROLLER_PLAN_LOCK_TTL_S``): :class:`Leadership` takes it when free and renews it every
third of its lease on a thread of its own (a long solve never lets it lapse). A leader that dies
(SIGKILL: nothing is released) stops renewing; its key expires after ``lease_s`` and the next
replica to ask, within a third of a lease, takes it with the next ``term``. A clean shutdown
deletes the key, so a successor takes over at its next renewal.

The lease only decides whose loop runs. Safety does not depend on it: every plan still takes
the plan lock, and the placement write is fenced by that lock's token
(:meth:`controller.state.RedisState.save_placement`), so a leader that was paused past its
lease and resumes cannot overwrite a successor's placement; pushes are fenced by the version.
"""

from __future__ import annotations

import logging
import threading
import time

from controller.errors import StateUnavailableError
from controller.state import RedisState
from core.background import LoopThread

logger = logging.getLogger(__name__)


class Leadership:
    """This replica's view of the leader lease, kept current by a background thread."""

    def __init__(self, state: RedisState, replica_id: str, *, lease_s: float) -> None:
        self.state, self.replica_id, self.lease_s = state, replica_id, lease_s
        self._lock = threading.Lock()
        self._token: str | None = None
        # time.monotonic() until which this replica may act as leader (a renewal's send time
        # plus the lease: the key cannot have expired before then).
        self._until = 0.0
        self._loop = LoopThread(self._run, name="leader-lease", join_timeout_s=5.0)

    @property
    def term(self) -> int | None:
        """The term of this replica's lease while it leads (None otherwise)."""
        with self._lock:
            token = self._token if time.monotonic() < self._until else None
        return int(token.rpartition(" ")[2]) if token else None

    def leading(self) -> bool:
        """Whether this replica holds the lease right now."""
        return self.term is not None

    def hold(self) -> bool:
        """Take or renew the lease once; whether this replica leads afterwards."""
        sent = time.monotonic()
        with self._lock:
            token = self._token
        try:
            held = self.state.hold_lease(self.replica_id, token, lease_s=self.lease_s)
        except StateUnavailableError:  # Redis gone: lead no longer than the lease allows
            with self._lock:
                return self._token is not None and time.monotonic() < self._until
        with self._lock:
            if held is not None and held != token:
                logger.info("replica %s leads the planner loop (term %s)", self.replica_id, held)
            elif held is None and token is not None:
                logger.warning("replica %s lost the planner lease", self.replica_id)
            self._token = held
            self._until = sent + self.lease_s if held is not None else 0.0
        return held is not None

    def _run(self) -> None:
        while True:
            try:
                self.hold()
            except Exception:  # noqa: BLE001 - the lease loop must survive anything
                logger.exception("leader lease renewal failed")
            if self._loop.stop_event.wait(self.lease_s / 3):
                return

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        """Stop renewing and give the lease up (the next replica need not wait it out)."""
        self._loop.stop()
        with self._lock:
            token, self._token, self._until = self._token, None, 0.0
        if token is not None:
            try:
                self.state.release_lease(token)
            except StateUnavailableError:
                pass  # it expires by itself
