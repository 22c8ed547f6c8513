"""RoundWaits: an ended push wakes exactly the nodes waiting on it or on a block it now holds;
a lapsed claim wakes exactly the nodes waiting on that fetch."""

from __future__ import annotations

from controller.round_waits import RoundWaits, Wait


def test_an_ended_push_wakes_exactly_the_nodes_waiting_on_it() -> None:
    waits = RoundWaits()
    waits.wait("n1", Wait("f1", "b1", fetch=True))
    waits.wait("n2", Wait("f1", "b2", fetch=True))
    waits.wait("n3", Wait("f2", "b3", fetch=True))
    waits.wait("n4", Wait("p1", "b4", fetch=False))  # a last copy p1 is placed to hold
    assert len(waits) == 4 and waits.waiting() == ["n1", "n2", "n3", "n4"]
    assert waits.ended("f1") == {"n1", "n2"}
    assert waits.waiting() == ["n3", "n4"] and "n1" not in waits
    assert waits.ended("f1") == set()  # woken once: asked again, not twice
    assert waits.ended("someone-else", ["b9"]) == set()
    # A push that ended holding a block wakes the nodes waiting on that block (whoever they
    # waited for): it is no longer a fetch to wait for, nor a last copy.
    assert waits.ended("other", ["b4", "b9"]) == {"n4"}
    assert waits.waiting() == ["n3"]
    assert waits.ended("f2", ["b3"]) == {"n3"}
    assert len(waits) == 0


def test_a_new_wait_replaces_the_old_one() -> None:
    waits = RoundWaits()
    waits.wait("n1", Wait("f1", "b1", fetch=True))
    waits.wait("n1", Wait("f2", "b2", fetch=False))
    assert waits.reason("n1") == Wait("f2", "b2", fetch=False)
    assert waits.ended("f1", ["b1"]) == set()  # no longer indexed by what it waited for
    assert waits.expired(lambda node: True) == set()  # no fetch is waited for now
    assert waits.ended("f2") == {"n1"}
    waits.wait("n1", Wait("f1", "b1", fetch=True))
    waits.discard("n1")
    assert waits.ended("f1", ["b1"]) == set() and len(waits) == 0


def test_a_lapsed_claim_wakes_only_the_nodes_waiting_on_that_fetch() -> None:
    waits = RoundWaits()
    waits.wait("n1", Wait("hung", "b1", fetch=True))
    waits.wait("n2", Wait("hung", "b2", fetch=False))  # a last copy: claims do not end it
    waits.wait("n3", Wait("busy", "b3", fetch=True))
    assert waits.expired(lambda node: node == "hung") == {"n1"}
    assert waits.waiting() == ["n2", "n3"]
    assert waits.expired(lambda node: False) == set()
    assert waits.ended("hung") == {"n2"}
