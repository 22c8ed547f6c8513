"""The downlink's order and per-user window (edge_node.airorder), on the radio's own jobs."""

from __future__ import annotations

from edge_node.airorder import Picker, UserWindows, next_due, pick
from edge_node.radio import Job

RATE = 1e6  # bytes/s for every job


def _rate(_job: Job) -> float:
    return RATE


def _jobs(users: dict[str, list[int]]) -> tuple[list[Job], dict[int, str]]:
    """Unicast jobs in arrival order: each user's blocks (sizes), users interleaved."""
    jobs: list[Job] = []
    owner: dict[int, str] = {}
    member = 0
    longest = max(len(v) for v in users.values())
    for i in range(longest):
        for user, sizes in users.items():
            if i < len(sizes):
                member += 1
                owner[member] = user
                jobs.append(Job("block", sizes[i], 0.0, key=f"{user}-{i}", members={member: "a"}))
    return jobs, owner


def _drain(jobs: list[Job], owner: dict[int, str], *, picker: Picker | None = None) -> list[str]:
    order: list[str] = []
    while jobs:
        if picker is not None:
            job = picker.next(jobs, 1.0, broadcast=False, rate=_rate, user_of=owner.__getitem__)
        else:
            job = pick(jobs, 1.0, broadcast=False, rate=_rate, user_of=owner.__getitem__)
        assert job is not None
        order.append(owner[next(iter(job.members))])
        jobs.remove(job)
    return order


def test_unicast_serves_the_shortest_user_first_whole() -> None:
    # Arrival interleaves the users; the order serves each user whole, least airtime first.
    jobs, owner = _jobs({"big": [5, 5, 5], "small": [1, 1], "mid": [3, 3]})
    assert _drain(jobs, owner) == ["small"] * 2 + ["mid"] * 2 + ["big"] * 3
    jobs, owner = _jobs({"big": [5, 5, 5], "small": [1, 1], "mid": [3, 3]})
    assert _drain(jobs, owner, picker=Picker()) == ["small"] * 2 + ["mid"] * 2 + ["big"] * 3


def test_the_kept_decision_yields_to_new_work() -> None:
    jobs, owner = _jobs({"big": [5, 5, 5]})
    picker = Picker()
    first = picker.next(jobs, 1.0, broadcast=False, rate=_rate, user_of=owner.__getitem__)
    assert first is jobs[0]
    jobs.remove(first)
    owner[99] = "tiny"
    jobs.append(Job("block", 1, 0.0, key="t", members={99: "a"}))
    picker.queued()
    nxt = picker.next(jobs, 1.0, broadcast=False, rate=_rate, user_of=owner.__getitem__)
    assert nxt is not None and owner[next(iter(nxt.members))] == "tiny"


def test_broadcast_prefers_most_requesters_per_airtime_and_waits_for_windows() -> None:
    shared = Job("block", 4, 0.0, key="s", members={1: "a", 2: "a", 3: "a"})
    alone = Job("block", 1, 0.0, key="o", members={4: "a"})
    later = Job("block", 1, 5.0, key="l", members={5: "a", 6: "a", 7: "a", 8: "a"})
    queue = [alone, shared, later]
    # Requesters per second of airtime: alone 1 / 1 > shared 3 / 4, so alone goes first; the
    # four-member block is not due before its window ends at t = 5.
    assert pick(queue, 1.0, broadcast=True, rate=_rate, user_of=str) is alone
    queue.remove(alone)
    assert pick(queue, 1.0, broadcast=True, rate=_rate, user_of=str) is shared
    assert next_due([later]) == 5.0
    assert pick([later], 1.0, broadcast=True, rate=_rate, user_of=str) is None
    assert pick([later], 5.0, broadcast=True, rate=_rate, user_of=str) is later


def test_a_users_window_covers_its_fetch_until_it_is_idle_for_w() -> None:
    windows = UserWindows(0.5)
    assert windows.open("u", 10.0) == 10.5
    windows.close("u", 11.0)  # the adapter's answer ended
    assert windows.open("u", 11.2) == 10.5  # its base, 0.2 s later: same window, no new hold
    windows.close("u", 12.0)
    assert windows.open("u", 13.0) == 13.5  # idle for 1 s >= W: a new fetch, a new window
    assert windows.open("v", 13.0) == 13.5  # users are independent
