"""The radio's side of cluster groups: following another edge's transmission, and the live
groups an edge reports (issue 17 items 2 and 4).

- :func:`cluster_follow` is one task per radio (with ``EDGE_MEDIUM_DIR`` and W > 0): every
  :data:`POLL_S` it reads the registry entry (:mod:`edge_node.cluster_groups`) of each block
  job this edge follows and members wait for (the others every :data:`IDLE_EVERY` polls),
  moves the job's progress to the group's, and ends it when the group is done. When the leader
  is gone (its token lock is free) or gave up, it takes the group over (this edge then sends
  the rest from what is on the air); when the entry was replaced, it sends the rest alone.
- :func:`live_groups` lists the block jobs an edge transmits (queued or on air) with their
  expected start and end, from its FIFO at the current rates: what the heartbeat reports for
  the controller's routing (``controller/live_groups.py``). Other edges' bookings of the shared
  ledger are not in the estimate.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from edge_node.cluster_groups import LIVE, ClusterGroups

if TYPE_CHECKING:
    from edge_node.radio import Job, Radio

logger = logging.getLogger(__name__)

#: Seconds between polls of the followed groups members wait for (one slice of airtime).
POLL_S = 0.02
#: Followed groups nobody waits for right now are polled every this many polls.
IDLE_EVERY = 10
#: At most this many live groups in one report.
MAX_REPORTED = 2000


def _follow_one(radio: Radio, groups: ClusterGroups, job: Job) -> bool:
    """Bring one followed job up to its group; True when it moved (or changed hands)."""
    key, gid = str(job.key), str(job.gid)
    entry = groups.poll(key)
    moved = False
    if entry.get("gid") == gid:
        sent = min(job.size, int(entry.get("sent", 0)))
        if sent > job.sent:
            job.sent, moved = sent, True
        if entry.get("state") == "done":
            job.sent = job.size
            radio._finish(job)
            return True
        if entry.get("state") in LIVE and groups.alive(entry.get("token")):
            return moved
        taken = groups.take_over(key, gid)
        if taken is not None:
            logger.info("radio node_id=%s: took over the group of block %s", radio.node_id, key)
            radio.lead(job, taken)
            return True
        again = groups.poll(key)
        if again.get("gid") == gid and again.get("state") in LIVE:
            return moved  # another follower took it over first: follow it
    prev = entry.get("prev") or {}
    if prev.get("gid") == gid and prev.get("state") == "done":
        job.sent = job.size  # it ended; a newer group of the block replaced it since
        radio._finish(job)
        return True
    # The entry is gone or a newer group replaced it: send the rest of the block alone.
    logger.info("radio node_id=%s: group of block %s lost; sending the rest", radio.node_id, key)
    job.gid = None
    radio.lead(job, job.sent)
    return True


async def cluster_follow(radio: Radio, groups: ClusterGroups, changed: asyncio.Condition) -> None:
    """The follower task of ``radio`` (see the module docstring); runs until cancelled."""
    tick = 0
    while True:
        await asyncio.sleep(POLL_S)
        tick += 1
        moved = False
        for job in list(radio.following):
            if job.done or (job.waiting == 0 and tick % IDLE_EVERY):
                continue
            try:
                moved = _follow_one(radio, groups, job) or moved
            except Exception:  # the follower must outlive any one group: log, retry next poll
                logger.exception("radio node_id=%s: following block %s", radio.node_id, job.key)
        if moved:
            async with changed:
                changed.notify_all()


def live_groups(radio: Radio, queue: Sequence[Job]) -> list[dict[str, Any]]:
    """The block jobs of ``queue`` (the radio's FIFO, copied) that ``radio`` transmits, with
    their expected start and end in seconds from now (negative start: on air since)."""
    now = time.monotonic()
    clock = now
    out: list[dict[str, Any]] = []
    for job in queue:
        if job.done:
            continue
        try:
            rate = radio._rate(job)
        except (RuntimeError, ValueError):  # members changed under us (another thread): skip
            continue
        start = now - job.airtime_s if job.started else max(clock, job.not_before)
        end = max(clock, now if job.started else start) + (job.size - job.sent) / rate
        clock = end
        if job.kind == "block" and job.key is not None and len(out) < MAX_REPORTED:
            out.append(
                {
                    "block_id": job.key,
                    "size_bytes": job.size,
                    "sent_bytes": job.sent,
                    "starts_in_s": round(start - now, 4),
                    "ends_in_s": round(end - now, 4),
                }
            )
    return out
