"""The leader lease and the placement fence (controller.leader, controller.state) on a real
redis-server: one leader at a time, a lapsed one replaced with a higher term, a stale planner's
placement write refused."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from controller.leader import Leadership
from controller.state import RedisState
from tests.helpers import wait_until


@pytest.fixture
def states(redis_url: str) -> Iterator[tuple[RedisState, RedisState]]:
    """Two clients of one Redis, as two controller replicas have."""
    a, b = RedisState(redis_url), RedisState(redis_url)
    yield a, b
    a.close()
    b.close()


def test_one_lease_holder_and_a_lapsed_one_is_replaced(
    states: tuple[RedisState, RedisState],
) -> None:
    a, b = states
    token_a = a.hold_lease("ctl-a", None, lease_s=0.4)
    assert token_a is not None and token_a.startswith("ctl-a ")
    assert b.hold_lease("ctl-b", None, lease_s=0.4) is None
    assert a.hold_lease("ctl-a", token_a, lease_s=0.4) == token_a  # renewed
    assert b.lease_holder() == ("ctl-a", int(token_a.split()[1]))
    # ctl-a stops renewing (a SIGKILL releases nothing): the key expires and ctl-b takes it.
    token_b = wait_until(
        lambda: b.hold_lease("ctl-b", None, lease_s=5), timeout_s=10, what="ctl-b's lease"
    )
    assert int(token_b.split()[1]) > int(token_a.split()[1])
    assert a.hold_lease("ctl-a", token_a, lease_s=5) is None  # the stale holder cannot renew
    a.release_lease(token_a)  # nor release its successor's lease
    assert a.lease_holder() == ("ctl-b", int(token_b.split()[1]))


def test_a_stopped_leader_hands_over_at_once(states: tuple[RedisState, RedisState]) -> None:
    a, b = states
    first = Leadership(a, "ctl-a", lease_s=30)
    second = Leadership(b, "ctl-b", lease_s=30)
    assert first.hold() and first.leading()
    assert not second.hold() and not second.leading()
    first.stop()  # a clean shutdown deletes the lease: no 30 s wait
    assert not first.leading()
    assert second.hold() and second.term is not None
    second.stop()


def test_a_planner_whose_lock_lapsed_cannot_store_a_placement(
    states: tuple[RedisState, RedisState],
) -> None:
    a, b = states
    stale = a.plan_lock(timeout_s=0.3, blocking_timeout_s=0)
    assert stale.__enter__()  # planner A takes the lock, then stalls past its TTL
    time.sleep(0.5)
    with b.plan_lock(timeout_s=5, blocking_timeout_s=1) as got:
        assert got is True
        assert b.save_placement({"version": 8, "servers": {}}, fence=None)
    # A resumes and tries to store its (older) plan: refused, B's placement stands.
    assert a.save_placement({"version": 7, "servers": {}}, fence=stale) is False
    placement = b.get_placement()
    assert placement is not None and placement["version"] == 8
    with a.plan_lock(timeout_s=5, blocking_timeout_s=1) as got:
        assert got is True
    fresh = a.plan_lock(timeout_s=5, blocking_timeout_s=1)
    assert fresh.__enter__()
    stamp = a.routing_stamp()
    assert a.save_placement({"version": 9, "servers": {}}, fence=fresh) is True
    assert a.routing_stamp() != stamp  # a stored placement moves the route stamp
    fresh.__exit__(None, None, None)
    placement = a.get_placement()
    assert placement is not None and placement["version"] == 9
