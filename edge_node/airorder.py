"""Which job the emulated downlink sends next, and when a user's broadcast window ends.

:class:`edge_node.radio.Radio` owns the medium and its jobs; this module owns two rules it
applies (pure: no I/O, no clock of its own):

- **Order** (:func:`pick`), at job boundaries (a block on the air is finished first):
  - unicast (W = 0): *shortest user first*: the job of the user (``X-TrimCache-User``, the
    SDK's client; none: the request) with the least airtime left over all its queued jobs,
    ties by arrival. A unicast downlink that serves one user's request at a time, shortest
    first, minimises the mean delay (SPT); it is the delay model's unicast schedule at model
    granularity (docs/delay-model.md section 5: one job per (user, model), airtime ascending).
    FCFS makes every user wait for the ones that happened to arrive first; the model's
    per-(user, PB) airtime order interleaves users so that everyone ends late.
  - broadcast (W > 0): among the jobs whose window has passed, the most requesters per
    second of airtime left first (the model's ``|G_b| / tau_b`` descending), ties by arrival.
- **Window per user** (:class:`UserWindows`): a user's window starts at its first request
  and covers every request it makes until it has been idle for W (an adapter and its
  base model, a model in several batches): a group job waits for its creator's window only,
  so a user pays the hold once per fetch, not once per request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar


class _Job(Protocol):
    @property
    def size(self) -> int: ...
    @property
    def sent(self) -> int: ...
    @property
    def not_before(self) -> float: ...
    @property
    def done(self) -> bool: ...
    @property
    def members(self) -> dict[int, str]: ...


J = TypeVar("J", bound=_Job)


def pick(
    queue: Iterable[J],
    now: float,
    *,
    broadcast: bool,
    rate: Callable[[J], float],
    user_of: Callable[[int], str],
) -> J | None:
    """The job to put on the air now (None: none is due yet)."""
    due = [j for j in queue if not j.done and j.members and j.not_before <= now]
    if not due:
        return None
    left = {id(j): (j.size - j.sent) / rate(j) for j in due}
    if broadcast:
        return min(
            enumerate(due),
            key=lambda ij: (-len(ij[1].members) / max(left[id(ij[1])], 1e-12), ij[0]),
        )[1]
    per_user: dict[str, float] = {}
    for job in due:
        for member in job.members:
            user = user_of(member)
            per_user[user] = per_user.get(user, 0.0) + left[id(job)]

    def user_left(job: J) -> float:
        return min(per_user[user_of(m)] for m in job.members)

    return min(enumerate(due), key=lambda ij: (user_left(ij[1]), ij[0]))[1]


class Picker:
    """:func:`pick` with the unicast decision kept between picks: the user picked stays the one
    with the least airtime left (its own only shrinks) until new jobs are queued, so picks do
    not rescan the whole queue at every block (K users x their blocks)."""

    def __init__(self) -> None:
        self._user: str | None = None
        self._stale = True

    def queued(self) -> None:
        """New jobs were queued: the next pick decides again."""
        self._stale = True

    def next(
        self,
        queue: Iterable[J],
        now: float,
        *,
        broadcast: bool,
        rate: Callable[[J], float],
        user_of: Callable[[int], str],
    ) -> J | None:
        if not broadcast and not self._stale and self._user is not None:
            user = self._user
            for job in queue:
                if (
                    not job.done
                    and job.members
                    and job.not_before <= now
                    and any(user_of(m) == user for m in job.members)
                ):
                    return job
        picked = pick(queue, now, broadcast=broadcast, rate=rate, user_of=user_of)
        self._stale = False
        self._user = None if picked is None else user_of(next(iter(picked.members)))
        return picked


def next_due(queue: Iterable[J]) -> float | None:
    """When the earliest waiting job's window ends (None: nothing waits)."""
    times = [j.not_before for j in queue if not j.done and j.members]
    return min(times) if times else None


class UserWindows:
    """Per user, the end of its current broadcast window: a new window starts with a request
    when the user has no response under way and has been idle for W or more."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._end: dict[str, float] = {}
        self._live: dict[str, int] = {}
        self._idle_since: dict[str, float] = {}
        self.windows = 0  # windows opened (one per fetch)

    def open(self, user: str, now: float) -> float:
        """A request of ``user`` starts: the end of its window."""
        live = self._live.get(user, 0)
        idle = self._idle_since.get(user)
        if live == 0 and (idle is None or now - idle >= self.window_s):
            self._end[user] = now + self.window_s
            self.windows += 1
        self._live[user] = live + 1
        self._idle_since.pop(user, None)
        return self._end[user]

    def close(self, user: str, now: float) -> None:
        """A request of ``user`` that :meth:`open` counted has ended."""
        live = self._live.get(user, 0) - 1
        if live > 0:
            self._live[user] = live
            return
        self._live.pop(user, None)
        self._idle_since[user] = now
        if len(self._idle_since) > 10_000:  # forget users idle for long
            stale = [u for u, t in self._idle_since.items() if now - t > self.window_s + 60]
            for u in stale:
                self._idle_since.pop(u, None)
                self._end.pop(u, None)
