"""RedisState against a real redis-server: key schema, expiry, decay, atomic updates."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest
import redis

from controller.errors import StateUnavailableError
from controller.state import (
    CatalogueEntry,
    NodeRecord,
    RedisState,
    decayed,
    demand_field,
    node_key,
)
from core.manifest import BlockRef, FileEntry, ModelManifest
from tests.helpers import free_port, wait_until


@pytest.fixture
def state(redis_url: str):
    s = RedisState(redis_url)
    yield s
    s.close()


def node(node_id: str = "edge-1", **kw) -> NodeRecord:
    return NodeRecord(node_id=node_id, url=f"http://{node_id}:1", capacity_bytes=100, **kw)


def test_every_key_has_the_prefix_and_json_carries_schema_version(state: RedisState) -> None:
    state.put_node(node(), ttl_s=10)
    state.put_model(
        CatalogueEntry.of(ModelManifest("m", "o/m", "a" * 40, ()), requested_revision="main")
    )
    state.record_demand(area_id="a", model_id="m", outcome="hit", bytes_by_kind={}, half_life_s=60)
    state.put_topology({"areas": {}})
    state.save_placement({"version": state.next_placement_version(), "servers": {}})
    state.save_plan_attempt({"at": 1.0})
    keys = {str(k) for k in state.client.keys("*")}
    assert keys and all(k.startswith("ctl:") for k in keys)
    for key in keys:
        if state.client.type(key) == "string":
            value = str(state.client.get(key))
            if value.startswith("{"):
                assert json.loads(value)["schema_version"] == 1, key


def test_a_catalogue_entry_holds_a_parsed_manifest_and_stores_its_json(state: RedisState) -> None:
    from core.digest import BlockId, sha256_bytes

    bid = BlockId(sha256_bytes(b"{}"))
    manifest = ModelManifest(
        "m", "o/m", "b" * 40, (FileEntry("config.json", 2, bid, "file", (BlockRef(bid, 0, 2),)),)
    )
    entry = CatalogueEntry.of(manifest, requested_revision="main", indexed_at=5.0)
    assert (entry.total_bytes, entry.blocks, entry.revision) == (2, 1, "b" * 40)
    state.put_model(entry)
    got = state.get_model("m")
    assert got == entry and isinstance(got.manifest, ModelManifest)
    stored = json.loads(str(state.client.get("ctl:model:m")))
    assert stored["manifest"] == manifest.to_dict()  # the wire and Redis form is unchanged


def test_nodes_expire_and_drop_out(state: RedisState) -> None:
    assert state.put_node(node("edge-1"), ttl_s=0.3) is True
    assert state.put_node(node("edge-1"), ttl_s=0.3) is False  # a heartbeat, not a new node
    assert state.put_node(node("edge-2"), ttl_s=30) is True
    assert [n.node_id for n in state.live_nodes()] == ["edge-1", "edge-2"]
    wait_until(lambda: [n.node_id for n in state.live_nodes()] == ["edge-2"], timeout_s=3)
    assert state.get_node("edge-1") is None
    assert state.client.smembers("ctl:nodes") == {"edge-2"}  # pruned
    # A plan response updates confirmed models and keeps the heartbeat's TTL.
    ttl_before = state.client.pttl(node_key("edge-2"))
    assert state.update_node_models("edge-2", ["m1"]) is True
    assert state.get_node("edge-2").models == ("m1",)  # type: ignore[union-attr]
    assert 0 < state.client.pttl(node_key("edge-2")) <= ttl_before
    assert state.update_node_models("edge-1", ["m1"]) is False  # expired: not resurrected
    assert state.get_node("edge-1") is None


def _command_calls(state: RedisState) -> dict[str, int]:
    stats = state.client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


def test_a_heartbeat_is_one_command_and_keeps_what_it_must(state: RedisState) -> None:
    assert state.put_node(node("edge-1", models=("m1",), registered_at=5.25), ttl_s=30) is True
    state.update_node_models("edge-1", dropping=["m1"])
    stamp = state.routing_stamp()
    before = _command_calls(state)
    later = node("edge-1", models=("m1", "m2"), registered_at=99.0, last_seen=99.0)
    assert state.put_node(later, ttl_s=30) is False
    after = _command_calls(state)
    # One round trip: the script (after its first load); what it runs inside Redis counts too,
    # but no transaction (WATCH/MULTI/EXEC) and no second client command.
    delta = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    assert delta.pop("evalsha") == 1 and delta.pop("info") == 1
    assert set(delta) <= {"get", "set", "sadd", "publish"}
    got = state.get_node("edge-1")
    assert got is not None and got.registered_at == 5.25 and got.last_seen == 99.0
    assert got.dropping == ("m1",)  # the report still names m1: the plan is not applied yet
    assert state.routing_stamp() != stamp  # models changed: routes re-read
    # The report no longer names m1: dropping ends; an unchanged report keeps the stamp.
    state.put_node(node("edge-1", models=("m2",), last_seen=100.0), ttl_s=30)
    got = state.get_node("edge-1")
    assert got is not None and got.dropping == () and got.registered_at == 5.25
    stamp = state.routing_stamp()
    state.put_node(node("edge-1", models=("m2",), last_seen=101.0), ttl_s=30)
    assert state.routing_stamp() == stamp
    # Values the Lua side must not round: a large capacity, exact floats, unicode.
    exact = NodeRecord(
        node_id="edge-2",
        url="http://edge-2:1/é",
        capacity_bytes=2**53 - 1,
        position=(0.1 + 0.2, -1e-7),
        registered_at=1764872124.123456789,
    )
    state.put_node(exact, ttl_s=30)
    state.put_node(exact, ttl_s=30)
    assert state.get_node("edge-2") == exact


def test_a_node_models_update_is_one_command_and_keeps_the_rest_exact(
    state: RedisState,
) -> None:
    """update_node_models / record_push: one script call (no WATCH/MULTI/EXEC), only the
    lists replaced (every other stored byte kept: no number re-encoding), the TTL kept, the
    stamp moved only when a list changed; a push status in the same call."""
    tricky = NodeRecord(
        node_id="edge-1",
        url="http://edge-1:1/\\",  # a backslash before the closing quote
        blocks_digest='"models": ["x"], "dropping": [',  # key-like, stored before the keys
        capacity_bytes=2**53 - 1,
        position=(0.1 + 0.2, -1e-7),
        models=("a]", 'b"[', "c"),
        registered_at=1764872124.123456789,
        last_seen=1764872125.987654321,
    )
    state.put_node(tricky, ttl_s=30)
    assert not state.update_node_models("nobody", ["m"])  # not live; loads the script
    ttl_before = state.client.pttl(node_key("edge-1"))
    stamp = state.routing_stamp()
    before = _command_calls(state)
    assert state.update_node_models("edge-1", ["a]", "d"], dropping=['b"['])
    after = _command_calls(state)
    delta = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    assert delta.pop("evalsha") == 1 and delta.pop("info") == 1
    assert set(delta) <= {"get", "set", "publish"}
    got = state.get_node("edge-1")
    assert got is not None
    assert got == dataclasses.replace(tricky, models=("a]", "d"), dropping=('b"[',))
    assert 0 < state.client.pttl(node_key("edge-1")) <= ttl_before
    assert state.routing_stamp() != stamp
    # The same lists again: nothing written, the stamp stays (routes stay cached).
    stamp = state.routing_stamp()
    text = state.client.get(node_key("edge-1"))
    assert state.update_node_models("edge-1", ["a]", "d"], dropping=['b"['])
    assert state.routing_stamp() == stamp and state.client.get(node_key("edge-1")) == text
    # One push step: the node's dropping and its push status together, fenced by version.
    state.save_placement({"version": 4, "servers": {}, "push": {}})
    assert state.record_push(4, "edge-1", {"status": "pushing", "version": 4}, dropping=[])
    assert state.get_node("edge-1").dropping == ()  # type: ignore[union-attr]
    assert state.get_placement()["push"]["edge-1"]["status"] == "pushing"  # type: ignore[index]
    assert not state.record_push(3, "edge-1", {"status": "applied"}, models=["z"])
    assert state.get_node("edge-1").models == ("z",)  # type: ignore[union-attr]
    assert state.get_placement()["push"]["edge-1"]["status"] == "pushing"  # type: ignore[index]
    # A record without the key (an older writer): the list is added.
    state.client.set(
        node_key("old"), json.dumps({"node_id": "old", "url": "u", "capacity_bytes": 1})
    )
    assert state.update_node_models("old", dropping=["m"])
    assert state.get_node("old").dropping == ("m",)  # type: ignore[union-attr]


def test_record_pushes_writes_what_record_push_writes_one_at_a_time(redis_url: str) -> None:
    """record_pushes (the outcomes of pushes that ended together, one pipeline) leaves Redis
    exactly as record_push called once per step: the confirmed models of applied nodes, the
    push statuses, and nothing for a version that is no longer the stored one."""
    steps: list[tuple[str, dict[str, object], list[str] | None]] = [
        ("edge-1", {"status": "applied", "version": 7, "held_models": ["a", "b"]}, ["a", "b"]),
        ("edge-2", {"status": "failed", "version": 7, "attempts": 1, "code": "x"}, None),
        ("gone", {"status": "unreachable", "version": 7}, None),  # not live: status only
    ]

    def stored(s: RedisState) -> tuple[dict[str, object], dict[str, object]]:
        nodes: dict[str, object] = {
            n: s.client.get(node_key(n)) for n in ("edge-1", "edge-2", "gone")
        }
        status = s.client.hgetall("ctl:placement:status")  # decoded: str keys
        return nodes, {str(k): v for k, v in status.items() if str(k).startswith("push:")}

    results: list[tuple[dict[str, object], dict[str, object]]] = []
    for batched in (False, True):
        s = RedisState(redis_url)
        try:
            s.client.flushdb()
            for n in ("edge-1", "edge-2"):
                s.put_node(node(n, models=("old",)), ttl_s=30)
            s.save_placement({"version": 7, "servers": {}, "push": {}})
            stamp = s.routing_stamp()
            if batched:
                assert s.record_pushes(7, steps) == [True, True, True]
                assert s.record_pushes(6, steps[:1]) == [False]  # fenced by the version
                assert s.record_pushes(7, []) == []
            else:
                assert [s.record_push(7, n, st, models=m) for n, st, m in steps] == [True] * 3
                assert not s.record_push(6, *steps[0][:2], models=steps[0][2])
            assert s.routing_stamp() != stamp  # edge-1's models changed: routes re-read
            results.append(stored(s))
            record = s.get_placement()
            assert record is not None
            assert record["push"]["edge-1"]["status"] == "applied"
            assert s.get_node("edge-1").models == ("a", "b")  # type: ignore[union-attr]
            assert s.get_node("edge-2").models == ("old",)  # type: ignore[union-attr]
        finally:
            s.close()
    assert results[0] == results[1]  # the same node records and push statuses


def test_a_heartbeat_sets_the_exact_expiry(state: RedisState) -> None:
    """A node that stops heartbeating expires one expiry after its last heartbeat; one that
    keeps heartbeating never does."""
    ttl_s = 1.0
    beat_started = time.monotonic()  # the stored key's expiry counts from after this
    state.put_node(node("stops"), ttl_s=ttl_s)
    state.put_node(node("keeps"), ttl_s=ttl_s)
    assert 900 < state.client.pttl(node_key("stops")) <= 1000  # the full expiry
    gone_at = None
    while time.monotonic() - beat_started < 2 * ttl_s:
        time.sleep(0.1)
        state.put_node(node("keeps"), ttl_s=ttl_s)
        asked = time.monotonic()
        alive = {n.node_id for n in state.live_nodes()}
        assert "keeps" in alive
        if asked - beat_started < ttl_s - 0.1:
            assert "stops" in alive  # before its expiry: still live
        if "stops" not in alive and gone_at is None:
            gone_at = time.monotonic() - beat_started
    assert gone_at is not None and gone_at >= ttl_s  # gone, and not before its expiry
    assert [n.node_id for n in state.live_nodes()] == ["keeps"]
    assert 0 < state.client.pttl(node_key("keeps")) <= 1000


def test_demand_decays_with_half_life(state: RedisState) -> None:
    t0 = 1_000_000.0
    for _ in range(4):
        state.record_demand(
            area_id="a",
            model_id="m",
            outcome="hit",
            bytes_by_kind={"edge": 10},
            half_life_s=100,
            now_s=t0,
        )
    counts = state.demand_counts(half_life_s=100, now_s=t0 + 100)
    assert counts == {"a": {"m": pytest.approx(2.0)}}
    # A later request decays the stored count first, then adds one.
    value = state.record_demand(
        area_id="a",
        model_id="m",
        outcome="miss",
        bytes_by_kind={},
        half_life_s=100,
        now_s=t0 + 200,
    )
    assert value == pytest.approx(2.0)
    assert str(state.client.hget("ctl:demand", demand_field("a", "m"))).startswith("2 ")
    assert decayed(8.0, 0.0, 300.0, 100.0) == pytest.approx(1.0)
    assert state.outcomes() == {"requests": 5, "hit": 4, "miss": 1, "bytes:edge": 40}


def test_placement_versions_and_push_status(state: RedisState) -> None:
    v1 = state.next_placement_version()
    state.save_placement({"version": v1, "servers": {}, "push": {}})
    assert state.update_push_status(v1, "edge-1", {"status": "applied"}) is True
    assert state.update_push_status(v1 + 7, "edge-1", {"status": "failed"}) is False
    assert state.get_placement()["push"] == {"edge-1": {"status": "applied"}}  # type: ignore[index]
    # The counter is lost (e.g. a partial restore) but the record survives: never go back.
    state.client.delete("ctl:placement:version")
    assert state.next_placement_version() == v1 + 1


def test_plan_lock_is_exclusive(state: RedisState, redis_url: str) -> None:
    other = RedisState(redis_url)
    try:
        with state.plan_lock(timeout_s=5, blocking_timeout_s=0) as got:
            assert got
            with other.plan_lock(timeout_s=5, blocking_timeout_s=0) as got_other:
                assert not got_other
        with other.plan_lock(timeout_s=5, blocking_timeout_s=0) as got_other:
            assert got_other
    finally:
        other.close()


@pytest.mark.timeout(60)  # a hang guard, not a speed check (shared host)
def test_unreachable_redis_raises_state_unavailable() -> None:
    s = RedisState(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)
    with pytest.raises(StateUnavailableError) as info:
        s.live_nodes()
    assert info.value.code == "state_unavailable" and info.value.status_code == 503
    assert isinstance(info.value.__cause__, redis.ConnectionError)
    with pytest.raises(StateUnavailableError):
        s.ping()
    s.close()


def test_dropping_models_are_not_served_until_a_report_shows_them_gone(state: RedisState) -> None:
    state.put_node(node(models=("a", "b")), ttl_s=30)
    state.update_node_models("edge-1", dropping=["b"])
    assert state.get_node("edge-1").serving_models == ("a",)  # type: ignore[union-attr]
    # The plan response: the node holds a and c now.
    state.update_node_models("edge-1", ["a", "c"])
    assert state.get_node("edge-1").serving_models == ("a", "c")  # type: ignore[union-attr]
    # A stale heartbeat (sent before the plan applied) still names b: b stays unserved.
    state.put_node(node(models=("a", "b")), ttl_s=30)
    assert state.get_node("edge-1").serving_models == ("a",)  # type: ignore[union-attr]
    # A fresh report without b clears the guard.
    state.put_node(node(models=("a", "c")), ttl_s=30)
    record = state.get_node("edge-1")
    assert record is not None and record.dropping == () and record.serving_models == ("a", "c")
    # A later plan that brings b back resets the guard before it is pushed.
    state.update_node_models("edge-1", dropping=["b"])
    state.update_node_models("edge-1", dropping=[])
    state.put_node(node(models=("a", "b")), ttl_s=30)
    assert state.get_node("edge-1").serving_models == ("a", "b")  # type: ignore[union-attr]
