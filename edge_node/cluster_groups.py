"""Broadcast groups shared by the edges of one CoMP cluster (issue 17 item 2 across edges).

The edges of a cluster are processes on one machine that already share one airtime ledger
(:class:`edge_node.radio.AirtimeLedger`). This module is the one other piece of shared state
they need so that clients fetching the same block from *different* edges of the cluster within
the broadcast window share **one** transmission: a *group registry*, one small JSON file per
block under ``EDGE_MEDIUM_DIR/<cluster>.groups/``, each read-modify-written under ``flock``::

    {"gid": "…", "block": "<block id>", "size": 123, "leader": "edge-1",
     "token": "<leader's liveness token>", "not_before": <monotonic s>, "sent": 0,
     "state": "queued" | "air" | "done" | "abandoned",
     "members": {"edge-2": {"area-2": 1}},   # waiting members of the *other* edges, by area
     "joined": {"edge-2": 1},                # members ever, per other edge
     "prev": {"gid": "…", "state": "done", "sent": 123}}   # the group this one replaced

- **Leader.** The first edge whose request opens the group (no live entry for the block) is
  its leader: its radio queues the block job as it does for a local group, books the airtime on
  the ledger (once for the cluster) and, before every slice, writes its progress (``sent``)
  and reads the other edges' waiting members: their areas enter the group's rate (the weakest
  member, at the joint rate of the transmitters: the leader, every edge with members and the
  plan's holders) and keep the job on air after its own members have left.
- **Followers.** Another edge whose client asks for the block while the entry is live adds
  its member's area and *follows*: it never transmits the block; its members' bytes come from
  its own verified copy at the group's progress (a member joining after ``sent > 0`` gets the
  rest from the group and the missed head as its own unicast job, as in one edge).
- **A leader that goes away** must not stall followers. Every radio holds an exclusive
  ``flock`` on its own token file (``<cluster>.edges/<token>.alive``) for its life; the kernel
  drops it when the process dies, SIGKILL included. A follower whose group stops moving checks
  the leader's token (a lock it can take = a dead leader); a dead leader's entry, or one its
  leader marked ``abandoned`` (its own members left before the end), is *taken over* by the
  first follower that sees it, under the file's lock: it becomes the leader and sends the rest
  from ``sent`` (what the group already had on the air); other followers keep following the
  same entry. A follower whose entry was replaced altogether falls back to sending the rest of
  the block itself (unicast for its members).

Only bookkeeping: no sockets, no sleeping. Every operation is one open file, one lock, one
small read and write (microseconds); the radio calls them from the event loop, like the
ledger's bookings.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LIVE = ("queued", "air")


@dataclass(frozen=True, slots=True)
class Joined:
    """The answer to :meth:`ClusterGroups.join`: lead it (``lead``), or follow ``leader``'s."""

    lead: bool
    gid: str
    sent: int
    not_before: float
    leader: str


@dataclass(frozen=True, slots=True)
class Remote:
    """The other edges' side of a group the caller leads: their waiting members' areas (one
    entry per member), the edges with waiting members, and members ever (theirs)."""

    areas: tuple[str, ...]
    edges: frozenset[str]
    joined: int


def _file_name(block_id: str) -> str:
    return hashlib.sha256(block_id.encode()).hexdigest()[:40] + ".json"


class ClusterGroups:
    """One edge's view of its cluster's group registry (see the module docstring)."""

    def __init__(self, directory: Path, cluster: str, node_id: str) -> None:
        self.node_id = node_id
        self.groups_dir = directory / f"{cluster}.groups"
        self.edges_dir = directory / f"{cluster}.edges"
        self.groups_dir.mkdir(parents=True, exist_ok=True)
        self.edges_dir.mkdir(parents=True, exist_ok=True)
        self.token = f"{node_id}.{os.getpid()}.{secrets.token_hex(6)}"
        self._alive_path = self.edges_dir / f"{self.token}.alive"
        self._alive_fd: int | None = os.open(self._alive_path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._alive_fd, fcntl.LOCK_EX)
        self._fds: dict[str, int] = {}

    # -- the files ---------------------------------------------------------------------------
    def _fd(self, block_id: str) -> int:
        fd = self._fds.get(block_id)
        if fd is None:
            fd = os.open(self.groups_dir / _file_name(block_id), os.O_RDWR | os.O_CREAT, 0o644)
            self._fds[block_id] = fd
        return fd

    @contextlib.contextmanager
    def _entry(self, block_id: str, *, write: bool = True) -> Iterator[dict[str, Any]]:
        """The block's entry under its file's lock (``{}``: none); written back when changed."""
        fd = self._fd(block_id)
        fcntl.flock(fd, fcntl.LOCK_EX if write else fcntl.LOCK_SH)
        try:
            raw = os.pread(fd, 1 << 20, 0)
            try:
                entry: dict[str, Any] = json.loads(raw) if raw.strip() else {}
            except ValueError:
                entry = {}
            yield entry
            if write:
                text = json.dumps(entry, separators=(",", ":")).encode()
                if text != raw:
                    os.pwrite(fd, text, 0)
                    os.ftruncate(fd, len(text))
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def alive(self, token: str | None) -> bool:
        """Whether the radio that owns ``token`` still runs (its token file is still locked)."""
        if not token:
            return False
        if token == self.token:
            return self._alive_fd is not None
        path = self.edges_dir / f"{token}.alive"
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return True
            raise
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            with contextlib.suppress(OSError):
                path.unlink()  # its owner is gone for good
            return False
        finally:
            os.close(fd)

    # -- members -----------------------------------------------------------------------------
    def join(self, block_id: str, size: int, area: str, not_before: float) -> Joined:
        """A member of this edge wants ``block_id`` and this edge has no live group for it:
        follow the cluster's live group of the block (adding the member's area), or open one
        that this edge leads (``not_before``: when it may go on air, the window's end)."""
        with self._entry(block_id) as e:
            if (
                e.get("state") in LIVE
                and e.get("size") == size
                and e.get("token") != self.token
                and self.alive(e.get("token"))
            ):
                members = e.setdefault("members", {}).setdefault(self.node_id, {})
                members[area] = members.get(area, 0) + 1
                joined = e.setdefault("joined", {})
                joined[self.node_id] = joined.get(self.node_id, 0) + 1
                return Joined(False, e["gid"], int(e["sent"]), float(e["not_before"]), e["leader"])
            gid = secrets.token_hex(8)
            # The group it replaces, for its followers that have not seen its end yet.
            prev = {k: e[k] for k in ("gid", "state", "sent") if k in e}
            e.clear()
            e.update(
                gid=gid, block=block_id, size=size, leader=self.node_id, token=self.token,
                not_before=not_before, sent=0, state="queued", members={}, joined={}, prev=prev,
            )  # fmt: skip
            return Joined(True, gid, 0, not_before, self.node_id)

    def add_member(self, block_id: str, gid: str, area: str) -> bool:
        """One more member of this edge follows group ``gid`` (False: the group is over)."""
        with self._entry(block_id) as e:
            if e.get("gid") != gid or e.get("state") not in LIVE:
                return False
            members = e.setdefault("members", {}).setdefault(self.node_id, {})
            members[area] = members.get(area, 0) + 1
            joined = e.setdefault("joined", {})
            joined[self.node_id] = joined.get(self.node_id, 0) + 1
            return True

    def remove_member(self, block_id: str, gid: str, area: str) -> None:
        """A member of this edge that followed group ``gid`` is gone."""
        with self._entry(block_id) as e:
            if e.get("gid") != gid:
                return
            members = e.get("members", {}).get(self.node_id)
            if not members or area not in members:
                return
            members[area] -= 1
            if members[area] <= 0:
                del members[area]
            if not members:
                del e["members"][self.node_id]

    # -- the leader --------------------------------------------------------------------------
    def progress(self, block_id: str, gid: str, sent: int) -> Remote:
        """The leader's report before a slice: ``sent`` bytes are on the air; returns the
        other edges' waiting members (an entry no longer this leader's: none)."""
        with self._entry(block_id) as e:
            if e.get("gid") != gid or e.get("token") != self.token:
                return Remote((), frozenset(), 0)
            e["sent"] = max(int(e.get("sent", 0)), sent)
            e["state"] = "air"
            return _remote(e, self.node_id)

    def finish(self, block_id: str, gid: str, sent: int, *, complete: bool) -> Remote:
        """The leader's job of group ``gid`` ended: all on the air (``complete``), or it gave
        up (its members left): followers then take over. Returns the other edges' members."""
        with self._entry(block_id) as e:
            if e.get("gid") != gid or e.get("token") != self.token:
                return Remote((), frozenset(), 0)
            e["sent"] = max(int(e.get("sent", 0)), sent)
            e["state"] = "done" if complete else "abandoned"
            return _remote(e, self.node_id)

    # -- followers ---------------------------------------------------------------------------
    def poll(self, block_id: str) -> dict[str, Any]:
        """The block's current entry (a copy; ``{}``: none)."""
        with self._entry(block_id, write=False) as e:
            return dict(e)

    def take_over(self, block_id: str, gid: str) -> int | None:
        """Lead group ``gid`` from now on when its leader is gone or gave up; returns the bytes
        already on the air (None: the entry is live under a running leader, or was replaced)."""
        with self._entry(block_id) as e:
            if e.get("gid") != gid:
                return None
            if e.get("state") in LIVE and self.alive(e.get("token")):
                return None if e.get("token") != self.token else int(e["sent"])
            if e.get("state") == "done":
                return None
            # This edge's members now count as the leader's own, not as the others'.
            e.get("members", {}).pop(self.node_id, None)
            e["leader"], e["token"], e["state"] = self.node_id, self.token, "queued"
            return int(e.get("sent", 0))

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        if self._alive_fd is not None:
            with contextlib.suppress(OSError):
                self._alive_path.unlink()
            os.close(self._alive_fd)
            self._alive_fd = None


def _remote(entry: dict[str, Any], me: str) -> Remote:
    areas: list[str] = []
    edges: set[str] = set()
    for node, by_area in (entry.get("members") or {}).items():
        if node == me:
            continue
        for area, count in by_area.items():
            if count > 0:
                areas.extend([area] * int(count))
                edges.add(node)
    joined = sum(int(n) for node, n in (entry.get("joined") or {}).items() if node != me)
    return Remote(tuple(areas), frozenset(edges), joined)
