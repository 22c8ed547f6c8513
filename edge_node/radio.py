"""The emulated CoMP downlink of an edge node: shared airtime and broadcast of shared blocks.

On with ``EDGE_WORLD_FILE`` (a ``trimcache.world/v1`` document, :mod:`core.world`); it then
replaces the byte-rate link emulation (:mod:`edge_node.link`). What it owns:

- **Rates from the world.** A client names its user area (``X-TrimCache-Area``; none: the area
  next to this edge). A block goes out at the world's rate for that area and the transmitters:
  this edge plus the edges of its cluster the last plan says hold the block (CoMP: the world's
  joint rate for that set, computed by the delay model).
- **One shared medium per cluster.** Airtime, not bytes, is the scarce resource. Each edge runs
  one transmitter task that sends jobs one after another (which one next, and the broadcast
  window per user: :mod:`edge_node.airorder`), in slices of ~20 ms of airtime; every slice is
  booked on the cluster's :class:`AirtimeLedger` and its bytes go out when its airtime has
  passed: every member's connection gets a block in pieces of at most 1 MiB as they pass
  (``RadioMiddleware._pace``), not the whole block once its airtime is over. The ledger is one
  small file per cluster under ``EDGE_MEDIUM_DIR`` taken with ``flock`` for each booking
  (``busy_until`` on the machine's monotonic clock): the edges of a cluster are processes on one
  machine, and a lock-protected "medium busy until" is the whole state a time-shared channel
  needs, with no extra process to start or to fail. Without ``EDGE_MEDIUM_DIR`` the ledger is
  in-process (a cluster of one edge).
- **Broadcast** (``EDGE_BROADCAST_WINDOW_S`` = W > 0). A response announces every block it will
  send when it starts. The first request for a block queues a *group* job that goes on air no
  earlier than the end of its user's window (W after the user's first request of a fetch);
  every request for that block until the job ends joins it: before the
  job started, it gets the whole block from it; while it is on air, it gets the rest from it
  and the missed head afterwards (a head job at its own rate). The airtime of a group is
  charged once, at the rate of its weakest current member (the delay model's rule); the bytes
  go to every member's connection from this node's verified copy, so each client verifies
  them as today. W = 0: no groups, every (request, block) is its own job (unicast).
  With ``EDGE_MEDIUM_DIR`` a group is the *cluster's*: requests at other edges of the cluster
  join it too (one edge transmits, the others follow; :mod:`edge_node.cluster_groups`,
  :mod:`edge_node.cluster_follow`).
- **No member stalls the others.** The transmitter never waits for a socket: members follow
  the job's progress at their own pace, and a member that goes away is dropped from every job
  it was in (a job nobody waits for any more stops).
- Bytes that are not whole blocks of a batch or block GET (JSON, Hub files, ranges) are sent as
  unicast jobs at the client's rate; blocks this edge pulls for a client (migrated from a peer,
  or via the origin: edge_node.migrate) are whole blocks like held ones. Control paths
  (``edge_node.link.UNEMULATED_PREFIXES``) and peer edges' migration requests
  (``X-TrimCache-Migration``: the edge-to-edge link) are left alone.

Counters (``radio`` in ``GET /v1/stats``, ``edge_radio_*`` in ``/metrics``): airtime used (by
job kind), bytes on the air and bytes delivered to connections, block transmissions, broadcast
groups and their sizes, mid-air joins, members that left early.
"""

from __future__ import annotations

import asyncio
import bisect
import fcntl
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fastapi.responses import JSONResponse
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.asgi import header_text
from core.link import ZEROCOPY_EXTENSION
from core.world import World
from edge_node.airorder import Picker, UserWindows, next_due
from edge_node.cluster_follow import cluster_follow, live_groups
from edge_node.cluster_groups import ClusterGroups, Remote
from edge_node.direct import DIRECT_EXTENSION
from edge_node.ingest import MIGRATION_HEADER
from edge_node.link import UNEMULATED_PREFIXES
from edge_node.node import EdgeNode
from edge_node.settings import Settings

logger = logging.getLogger(__name__)

AREA_HEADER = "x-trimcache-area"
#: The client (user) a request belongs to (the SDK sends one id per client): the unit of the
#: downlink's order and of the broadcast window (edge_node.airorder).
USER_HEADER = "x-trimcache-user"
MIGRATION_HEADER_BYTES = MIGRATION_HEADER.lower().encode()
#: Where a route leaves the block layout of its body for the radio (:class:`RadioScope`).
SCOPE_KEY = "trimcache.radio"
#: Airtime per slice: the granularity of sharing the medium and of mid-air joins.
SLICE_S = 0.02
#: Wake-up jitter a booking absorbs (one slice; edge_node.radio.AirtimeLedger.book).
JITTER_S = SLICE_S
MIN_SLICE_BYTES = 16 * 1024
MAX_SLICE_BYTES = 1 << 20
JobKind = Literal["block", "head", "bytes"]
KINDS: tuple[JobKind, ...] = ("block", "head", "bytes")


class ClientGoneError(OSError):
    """The client of a response left; its remaining bytes are not sent."""


class AirtimeLedger:
    """A cluster's medium: bookings of airtime one after another, across processes.

    ``path`` None: in-process only. Otherwise the file holds ``busy_until`` (monotonic
    seconds); each booking takes an exclusive ``flock`` for its read-modify-write.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._busy_until = 0.0
        self._fd: int | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)

    def book(self, seconds: float) -> float:
        """Reserve ``seconds`` of airtime as soon as the medium is free; return its end.

        A booking may start up to :data:`JITTER_S` in the past when the medium was free then:
        a transmitter that woke up late (a loaded machine) continues where the medium became
        free instead of losing the gap (the airtime charged is the same)."""
        now = time.monotonic() - JITTER_S
        if self._fd is None:
            start = max(now, self._busy_until)
            self._busy_until = start + seconds
            return self._busy_until
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            raw = os.pread(self._fd, 64, 0)
            try:
                busy = float(raw.decode() or 0.0)
            except ValueError:
                busy = 0.0
            end = max(now, busy) + seconds
            text = f"{end!r}".encode().ljust(32)
            os.pwrite(self._fd, text, 0)
            return end
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass(eq=False, slots=True)
class Job:
    """One transmission on the medium: a block (a broadcast group when W > 0), the missed
    head of a mid-air joiner, or unicast bytes."""

    kind: JobKind
    size: int
    not_before: float
    key: str | None = None  # the block id of a block job
    members: dict[int, str] = field(default_factory=dict)  # member id -> area, still waiting
    joined: int = 0  # members ever
    sent: int = 0
    started: bool = False
    done: bool = False
    airtime_s: float = 0.0
    # A cluster group (edge_node.cluster_groups): its id, and the edge that transmits it when
    # that is another one (this edge then follows: its members get its progress, no airtime).
    gid: str | None = None
    leader: str | None = None
    remote: Remote | None = None  # the other edges' members (a group this edge leads)
    waiting: int = 0  # members waiting for it now (followed groups are polled while > 0)


@dataclass(slots=True)
class RadioStats:
    """The radio's counters (plain numbers; the event loop is the only writer)."""

    airtime_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(KINDS, 0.0))
    bytes_on_air: int = 0
    bytes_delivered: int = 0
    block_requests: int = 0
    block_transmissions: int = 0
    broadcast_groups: int = 0
    group_sizes: dict[int, int] = field(default_factory=dict)
    mid_joins: int = 0
    members_left: int = 0
    jobs_abandoned: int = 0
    followed: int = 0  # blocks delivered at another edge's transmission (cluster groups)
    takeovers: int = 0  # cluster groups this edge took over from a gone leader
    air_end: float = 0.0  # when this edge's last booked airtime ends (monotonic s)


@dataclass(slots=True)
class _Ticket:
    job: Job
    join_at: int
    head: Job | None
    gone: bool = False  # the member left: nothing to wait for


class Radio:
    """The downlink of one edge node: its queued jobs and the task that puts them on air.

    Args:
        world: the world (rates, clusters).
        node_id: this edge.
        window_s: the broadcast window W (0: no broadcast).
        ledger: the cluster's medium.
        holders: block id -> node ids of other edges said to hold it (CoMP transmitters).
    """

    def __init__(
        self,
        world: World,
        node_id: str,
        *,
        window_s: float,
        ledger: AirtimeLedger,
        holders: Callable[[str], Collection[str]] = lambda _b: (),
        groups: ClusterGroups | None = None,
    ) -> None:
        if node_id not in world.cluster_of:
            raise ValueError(f"world: this edge {node_id!r} is not in the world's edges")
        self.world = world
        self.node_id = node_id
        self.cluster = world.cluster_of[node_id]
        self.window_s = window_s
        self.ledger = ledger
        self.holders = holders
        #: The cluster's group registry (None: groups form among this edge's requests only).
        self.groups = groups if window_s > 0 else None
        #: Called when this edge opens a group (the app: a heartbeat now, for routing).
        self.on_group: Callable[[], None] | None = None
        self.following: list[Job] = []
        self._follower: asyncio.Task[None] | None = None
        self.default_area = world.near_area.get(node_id)
        self.stats = RadioStats()
        self._queue: deque[Job] = deque()
        self._groups: dict[str, Job] = {}
        self._next_member = 0
        self._user_of: dict[int, str] = {}  # member -> user (edge_node.airorder)
        self._windows = UserWindows(window_s)
        self._opened: set[int] = set()
        self._picker = Picker()
        self._rates: dict[tuple[str | None, tuple[str, ...], tuple[str, ...]], float] = {}
        self._rates_at = 0.0
        self._changed: asyncio.Condition | None = None
        self._work: asyncio.Event | None = None  # set when a job is queued
        self._task: asyncio.Task[None] | None = None

    # -- areas and rates -------------------------------------------------------------------
    def area_for(self, requested: str | None) -> str | None:
        """The area a request is served in; None when ``requested`` is not a world area."""
        if requested is None or requested == "":
            return self.default_area or next(iter(self.world.rates.get(self.node_id, {})), None)
        return requested if requested in self.world.areas else None

    def _rate(self, job: Job) -> float:
        # Memoised for a second (the transmitters follow the last plan): the order is
        # computed over every queued job.
        now = time.monotonic()
        if now - self._rates_at > 1.0:
            self._rates.clear()
            self._rates_at = now
        areas = set(job.members.values())
        edges: tuple[str, ...] = ()
        if job.remote is not None and job.remote.areas:  # a cluster group's other edges
            areas.update(job.remote.areas)
            edges = tuple(sorted(job.remote.edges))
        key = (job.key, tuple(sorted(areas)), edges)
        rate = self._rates.get(key)
        if rate is None:
            rate = self._rates[key] = self._compute_rate(job)
        return rate

    def _compute_rate(self, job: Job) -> float:
        transmitters: Collection[str] = (self.node_id,)
        areas: Collection[str] = job.members.values()
        if job.key is not None:
            transmitters = {self.node_id, *self.holders(job.key)}
        if job.remote is not None and job.remote.areas:
            transmitters = {*transmitters, *job.remote.edges}
            areas = [*areas, *job.remote.areas]
        return min(self.world.rate(area, transmitters, serving=self.node_id) for area in areas)

    # -- the transmitter -------------------------------------------------------------------
    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
            self._work = asyncio.Event()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._transmit())
        if self.groups is not None and (self._follower is None or self._follower.done()):
            self._follower = asyncio.get_running_loop().create_task(
                cluster_follow(self, self.groups, self._changed)
            )
        return self._changed

    async def _notify(self) -> None:
        changed = self._condition()
        async with changed:
            changed.notify_all()

    async def _transmit(self) -> None:
        changed, work = self._changed, self._work
        assert changed is not None and work is not None
        while True:
            now = time.monotonic()
            picked = self._picker.next(
                self._queue, now, broadcast=self.window_s > 0, rate=self._rate, user_of=self._user
            )
            if picked is None:  # nothing due: wait for new work or the next window's end
                work.clear()
                due = next_due(self._queue)
                try:
                    await asyncio.wait_for(work.wait(), None if due is None else max(0, due - now))
                except TimeoutError:
                    pass
                continue
            job = picked
            job.started = True
            try:
                await self._send_job(job, changed)
            except Exception:  # the transmitter must outlive any one job: log, drop the job
                logger.exception("radio node_id=%s: job %s failed", self.node_id, job.kind)
            self._finish(job)
            async with changed:
                changed.notify_all()

    async def _send_job(self, job: Job, changed: asyncio.Condition) -> None:
        """Put ``job`` on the air slice by slice (stops when no member waits for it)."""
        while job.sent < job.size:
            if job.gid is not None and self.groups is not None:
                job.remote = self.groups.progress(str(job.key), job.gid, job.sent)
            if not job.members and not (job.remote and job.remote.areas):
                break
            rate = self._rate(job)
            n = min(
                job.size - job.sent,
                max(MIN_SLICE_BYTES, min(MAX_SLICE_BYTES, int(rate * SLICE_S))),
            )
            tau = n / rate
            end = self.ledger.book(tau)
            self.stats.air_end = max(self.stats.air_end, end)
            wait = end - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            job.sent += n
            job.airtime_s += tau
            self.stats.airtime_s[job.kind] += tau
            self.stats.bytes_on_air += n
            async with changed:
                changed.notify_all()

    def _finish(self, job: Job) -> None:
        job.done = True
        if self._queue and self._queue[0] is job:
            self._queue.popleft()
        elif job in self._queue:
            self._queue.remove(job)
        if job.key is not None and self._groups.get(job.key) is job:
            del self._groups[job.key]
        if job.leader is not None:  # followed: another edge transmitted it
            if job in self.following:
                self.following.remove(job)
            if job.sent >= job.size:
                self.stats.followed += 1
            return
        joined = job.joined
        if job.gid is not None and self.groups is not None:
            complete = job.sent >= job.size
            joined += self.groups.finish(str(job.key), job.gid, job.sent, complete=complete).joined
        if job.sent < job.size:
            self.stats.jobs_abandoned += 1
        if job.kind == "block" and job.sent >= job.size:
            self.stats.block_transmissions += 1
            self.stats.group_sizes[joined] = self.stats.group_sizes.get(joined, 0) + 1
            if joined > 1:
                self.stats.broadcast_groups += 1

    def _queue_job(self, job: Job) -> None:
        self._queue.append(job)
        self._picker.queued()
        if self._work is not None:
            self._work.set()

    # -- members ---------------------------------------------------------------------------
    def member(self, user: str | None = None) -> int:
        self._next_member += 1
        if user:
            self._user_of[self._next_member] = user
        return self._next_member

    def _user(self, member: int) -> str:
        return self._user_of.get(member) or f"request-{member}"

    def announce(self, member: int, area: str, blocks: Sequence[tuple[str, int]]) -> list[_Ticket]:
        """Tickets for the whole blocks a response will send, in body order."""
        now = time.monotonic()
        tickets: list[_Ticket] = []
        hold_until = now
        if blocks and self.window_s > 0:
            hold_until = self._windows.open(self._user(member), now)
            self._opened.add(member)
        for block_id, size in blocks:
            self.stats.block_requests += 1
            job = self._groups.get(block_id) if self.window_s > 0 else None
            head: Job | None = None
            join_at = 0
            if job is None or job.done:
                job = self._open_group(block_id, size, area, hold_until)
            elif job.leader is not None and self.groups is not None:
                if not self.groups.add_member(block_id, str(job.gid), area):
                    job = self._open_group(block_id, size, area, hold_until)  # it just ended
            if job.sent > 0:
                join_at = job.sent
                head = Job("head", join_at, now, members={member: area}, joined=1)
                self._queue_job(head)
                self.stats.mid_joins += 1
            job.members[member] = area
            job.joined += 1
            tickets.append(_Ticket(job, join_at, head))
        return tickets

    def _open_group(self, block_id: str, size: int, area: str, not_before: float) -> Job:
        """A new block job (a group when W > 0) on air no earlier than ``not_before`` (the
        user's window end): queued here, or following the cluster's live group of the block
        led by another edge (:mod:`edge_node.cluster_groups`)."""
        job = Job("block", size, not_before, key=block_id)
        if self.groups is not None:
            joined = self.groups.join(block_id, size, area, job.not_before)
            job.gid = joined.gid
            if not joined.lead:
                job.leader, job.sent, job.not_before = joined.leader, joined.sent, joined.not_before
                self.following.append(job)
        if job.leader is None:
            self._queue_job(job)
            if self.on_group is not None and self.window_s > 0:
                self.on_group()
        if self.window_s > 0:
            self._groups[block_id] = job
        return job

    def lead(self, job: Job, sent: int) -> None:
        """This edge now transmits a block job it followed, from ``sent`` on (its leader is
        gone: :func:`cluster_follow`)."""
        if job in self.following:
            self.following.remove(job)
        job.leader, job.sent, job.not_before = None, max(job.sent, sent), time.monotonic()
        self.stats.takeovers += 1
        self._queue_job(job)

    async def ready(self, ticket: _Ticket, hi: int) -> None:
        """Wait until bytes ``[0, hi)`` of the ticket's block have reached its member."""
        changed = self._condition()
        job, head = ticket.job, ticket.head
        job.waiting += 1
        try:
            async with changed:
                if head is None:
                    await changed.wait_for(lambda: job.sent >= hi or job.done or ticket.gone)
                else:
                    await changed.wait_for(lambda: (head.done and job.done) or ticket.gone)
        finally:
            job.waiting -= 1

    async def unicast(self, area: str, nbytes: int) -> None:
        """Send ``nbytes`` that are not part of a whole block, at ``area``'s rate."""
        member = self.member()
        job = Job("bytes", nbytes, time.monotonic(), members={member: area}, joined=1)
        changed = self._condition()
        self._queue_job(job)
        try:
            async with changed:
                changed.notify_all()
                await changed.wait_for(lambda: job.done)
        finally:
            job.members.pop(member, None)

    def leave(self, member: int, tickets: Sequence[_Ticket]) -> None:
        """``member`` is gone (its response ended or failed): drop it from unfinished jobs."""
        left = False
        for ticket in tickets:
            ticket.gone = True
            for job in (ticket.job, ticket.head):
                if job is None or job.done or member not in job.members:
                    continue
                area = job.members.pop(member)
                if job.leader is not None and self.groups is not None:
                    self.groups.remove_member(str(job.key), str(job.gid), area)
                if job.sent >= job.size:
                    continue  # all on the air already: nothing was left waiting
                left = True
                if not job.members and not job.started:
                    self._finish(job)  # nobody waits for it: never goes on air
        if left:
            self.stats.members_left += 1
        if member in self._opened:
            self._opened.discard(member)
            self._windows.close(self._user(member), time.monotonic())
        self._user_of.pop(member, None)

    async def disconnected(self, member: int, tickets: Sequence[_Ticket]) -> None:
        """The member's client went away mid-response: leave now and wake its waits."""
        self.leave(member, tickets)
        await self._notify()

    async def close(self) -> None:
        for task in (self._task, self._follower):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        self.ledger.close()
        if self.groups is not None:
            self.groups.close()

    # -- stats -----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        s = self.stats
        return {
            "cluster": self.cluster,
            "broadcast_window_s": self.window_s,
            "airtime_s": round(sum(s.airtime_s.values()), 6),
            "airtime_by_kind_s": {k: round(v, 6) for k, v in s.airtime_s.items()},
            "bytes_on_air": s.bytes_on_air,
            "bytes_delivered": s.bytes_delivered,
            "block_requests": s.block_requests,
            "block_transmissions": s.block_transmissions,
            "broadcast_groups": s.broadcast_groups,
            "group_sizes": {str(k): v for k, v in sorted(s.group_sizes.items())},
            "mid_joins": s.mid_joins,
            "air_end_monotonic_s": round(s.air_end, 6),
            "windows": self._windows.windows,
            "members_left": s.members_left,
            "jobs_abandoned": s.jobs_abandoned,
            "queued_jobs": len(self._queue),
            "cluster_groups": self.groups is not None,
            "followed_blocks": s.followed,
            "takeovers": s.takeovers,
            "live_groups": len(self.live_groups()),
        }

    def live_groups(self) -> list[dict[str, Any]]:
        """The block jobs this edge has queued or on air, with their expected start and end
        (seconds from now, at the current rates): ``[{block_id, size_bytes, sent_bytes,
        starts_in_s, ends_in_s}]`` (the heartbeat's ``broadcast``). Safe from another thread."""
        return live_groups(self, tuple(self._queue))


@dataclass(slots=True)
class RadioScope:
    """Put in the request scope under :data:`SCOPE_KEY`; a route that sends whole blocks sets
    ``blocks`` to the body's layout, in order (``[(block_id, size), ...]``)."""

    blocks: list[tuple[str, int]] | None = None


def declare_blocks(scope: Scope, blocks: Sequence[tuple[str, int]]) -> None:
    """Tell the radio (when on) that this response's body is ``blocks``, whole, in order."""
    holder = scope.get(SCOPE_KEY)
    if isinstance(holder, RadioScope):
        holder.blocks = [(str(b), int(n)) for b, n in blocks]


def _segments(
    layout: Sequence[tuple[str, int]], starts: Sequence[int], lo: int, hi: int
) -> Iterator[tuple[int, int, int]]:
    """(block index, start in body, end in body) pieces of body bytes ``[lo, hi)``."""
    i = max(0, bisect.bisect_right(starts, lo) - 1)
    while lo < hi and i < len(layout):
        end = starts[i] + layout[i][1]
        if end > lo:
            take = min(hi, end)
            yield i, lo, take
            lo = take
        i += 1


class RadioMiddleware:
    """Sends every emulated response through the node's :class:`Radio` (see the module)."""

    def __init__(self, app: ASGIApp, *, radio: Radio) -> None:
        self.app = app
        self.radio = radio

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path", "").startswith(UNEMULATED_PREFIXES):
            await self.app(scope, receive, send)
            return
        requested = None
        user: str | None = None
        for key, value in scope.get("headers") or ():
            if key.lower() == MIGRATION_HEADER_BYTES:
                # A peer edge migrating blocks: the edge-to-edge link, not this downlink.
                await self.app(scope, receive, send)
                return
            if key.lower() == AREA_HEADER.encode():
                requested = value.decode("latin-1").strip()
            elif key.lower() == USER_HEADER.encode():
                user = value.decode("latin-1").strip()[:128]
        area = self.radio.area_for(requested)
        if area is None:
            message = f"unknown user area {requested!r} in {AREA_HEADER}"
            response = JSONResponse(
                {"error": {"code": "invalid_request", "message": message}},
                status_code=400,
                headers={
                    "X-Error-Code": "invalid_request",
                    "X-Error-Message": header_text(message, limit=200),
                },
            )
            await response(scope, receive, send)
            return
        latency = self.radio.world.radio_latency_ms / 1000.0
        if latency > 0:
            await asyncio.sleep(latency)
        extensions = {
            k: v for k, v in (scope.get("extensions") or {}).items() if k != DIRECT_EXTENSION
        }
        holder = RadioScope()
        scope = {**scope, "extensions": extensions, SCOPE_KEY: holder}
        radio = self.radio
        member = radio.member(user)
        state: dict[str, Any] = {"tickets": [], "offset": 0, "starts": [], "layout": []}

        async def paced(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                if holder.blocks and 200 <= message["status"] < 300:
                    state["tickets"] = radio.announce(member, area, holder.blocks)
                    state["layout"] = holder.blocks
                    starts, pos = [], 0
                    for _b, n in holder.blocks:
                        starts.append(pos)
                        pos += n
                    state["starts"] = starts
                await send(message)
                return
            if kind == "http.response.body":
                body: bytes = message.get("body", b"")
                more = message.get("more_body", False)
                view = memoryview(body)
                pos = 0
                async for lo, hi in self._pace(state, area, len(body)):
                    chunk = bytes(view[pos : pos + (hi - lo)])
                    pos += hi - lo
                    await send({"type": kind, "body": chunk, "more_body": more or pos < len(body)})
                    radio.stats.bytes_delivered += len(chunk)
                if not body:
                    await send(message)
                return
            if kind == ZEROCOPY_EXTENSION:
                count: int = message["count"]
                offset: int = message["offset"]
                more = message.get("more_body", False)
                done = 0
                async for lo, hi in self._pace(state, area, count):
                    n = hi - lo
                    await send(
                        {
                            **message,
                            "offset": offset + done,
                            "count": n,
                            "more_body": more or done + n < count,
                        }
                    )
                    done += n
                    radio.stats.bytes_delivered += n
                return
            await send(message)

        async def watch() -> None:
            # The request body is read by now: the next message is the client going away.
            while (await receive())["type"] != "http.disconnect":
                pass
            await radio.disconnected(member, state["tickets"])

        watcher: asyncio.Task[None] | None = None

        async def paced_and_watched(message: Message) -> None:
            nonlocal watcher
            if message["type"] == "http.response.start" and holder.blocks:
                watcher = asyncio.get_running_loop().create_task(watch())
            await paced(message)

        try:
            await self.app(scope, receive, paced_and_watched)
        finally:
            if watcher is not None:
                watcher.cancel()
            radio.leave(member, state["tickets"])

    async def _pace(
        self, state: dict[str, Any], area: str, nbytes: int
    ) -> AsyncIterator[tuple[int, int]]:
        """The body spans of the next ``nbytes`` of the body, each once its airtime has passed:
        pieces of at most :data:`MAX_SLICE_BYTES` within one block, in order, so a member gets
        a block's bytes as they go on the air, not the whole block after its airtime (a burst
        per block to K connections falls behind the medium's pace)."""
        tickets: list[_Ticket] = state["tickets"]
        if tickets and tickets[0].gone:
            # The response's own send path takes an OSError as "the client went away".
            raise ClientGoneError("the client went away mid-broadcast")
        lo = state["offset"]
        hi = lo + nbytes
        state["offset"] = hi
        if tickets:
            starts: list[int] = state["starts"]
            for index, a, b in _segments(state["layout"], starts, lo, hi):
                for p in range(a, b, MAX_SLICE_BYTES):
                    q = min(b, p + MAX_SLICE_BYTES)
                    await self.radio.ready(tickets[index], q - starts[index])
                    if tickets[index].gone:
                        raise ClientGoneError("the client went away mid-broadcast")
                    yield p, q
                lo = b
        # Bytes outside whole blocks (no layout, or past it): unicast at the client's rate.
        for a in range(lo, hi, MAX_SLICE_BYTES):
            b = min(hi, a + MAX_SLICE_BYTES)
            await self.radio.unicast(area, b - a)
            yield a, b


class RadioCollector(Collector):
    """``edge_radio_*`` metric families from :meth:`Radio.snapshot`."""

    def __init__(self, radio: Radio, node_id: str) -> None:
        self.radio = radio
        self.node_id = node_id

    def collect(self) -> Iterator[Metric]:
        s = self.radio.snapshot()
        labels = [self.node_id, s["cluster"]]

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc, labels=["node_id", "cluster"])
            c.add_metric(labels, value)
            return c

        airtime = CounterMetricFamily(
            "edge_radio_airtime_seconds", "Airtime used on the cluster medium, by job kind",
            labels=["node_id", "cluster", "kind"],
        )  # fmt: skip
        for kind, value in s["airtime_by_kind_s"].items():
            airtime.add_metric([*labels, kind], value)
        yield airtime
        yield counter(
            "edge_radio_bytes_on_air", "Bytes transmitted on the medium", s["bytes_on_air"]
        )
        yield counter(
            "edge_radio_bytes_delivered", "Bytes delivered to connections", s["bytes_delivered"]
        )
        yield counter("edge_radio_block_requests", "Whole blocks requested", s["block_requests"])
        yield counter(
            "edge_radio_block_transmissions", "Whole blocks sent on air", s["block_transmissions"]
        )
        yield counter(
            "edge_radio_broadcast_groups", "Block transmissions shared by 2+ requests",
            s["broadcast_groups"],
        )  # fmt: skip
        yield counter("edge_radio_mid_joins", "Requests that joined a block on air", s["mid_joins"])
        sizes = CounterMetricFamily(
            "edge_radio_group_size", "Block transmissions by the requests sharing them",
            labels=["node_id", "cluster", "size"],
        )  # fmt: skip
        for size, count in s["group_sizes"].items():
            sizes.add_metric([*labels, size], count)
        yield sizes
        window = GaugeMetricFamily(
            "edge_radio_broadcast_window_seconds", "EDGE_BROADCAST_WINDOW_S", labels=["node_id"]
        )
        window.add_metric([self.node_id], s["broadcast_window_s"])
        yield window


def make_radio(settings: Settings, node: Callable[[], EdgeNode | None]) -> Radio | None:
    """The node's radio when ``settings.world_file`` is set (else None).

    CoMP transmitters of a block: the edges of this cluster that the last plan names as its
    peers (plan URLs matched to the world's ``edges[].url``).

    Raises:
        ValueError: an unusable world file, or one that does not list this node.
    """
    if settings.world_file is None:
        return None
    world = World.load(settings.world_file)
    cluster = world.cluster_of.get(settings.node_id)
    if cluster is None:
        raise ValueError(f"world file {settings.world_file}: no edge {settings.node_id!r}")
    ledger_path = (
        None if settings.medium_dir is None else settings.medium_dir / f"{cluster}.airtime"
    )

    def holders(block_id: str) -> tuple[str, ...]:
        current = node()
        if current is None:
            return ()
        urls = current.plan_record.peers.get(block_id, ())
        return tuple(world.node_of_url[u] for u in urls if u in world.node_of_url)

    groups = (
        None
        if settings.medium_dir is None or settings.broadcast_window_s <= 0
        else ClusterGroups(settings.medium_dir, cluster, settings.node_id)
    )
    return Radio(
        world,
        settings.node_id,
        window_s=settings.broadcast_window_s,
        ledger=AirtimeLedger(ledger_path),
        holders=holders,
        groups=groups,
    )
