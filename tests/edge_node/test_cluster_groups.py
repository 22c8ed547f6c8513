"""Broadcast groups across the edges of one CoMP cluster (edge_node.cluster_groups).

Two real edge servers of one cluster share a medium dir (airtime ledger + group registry);
requests for the same blocks at both edges within the window share one transmission per block
for the whole cluster: the edges' block transmissions sum to the number of blocks, the other
edge follows each (``followed_blocks``), and the block airtime summed over both is the blocks'
bytes at the group's rate (the weakest member, at the joint rate of both edges). The registry's
leader liveness and take-over are checked on the registry itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from controller.delay.problem import Channel
from core.world import World
from edge_node.cluster_groups import ClusterGroups
from testbed.topology import grid_topology
from testbed.world import build_world, write_world
from tests.edge_node.conftest import edge_nodes
from tests.edge_node.test_radio import (
    _batch,
    _big_blocks,
    _manifest,
    _radio,
    _together,
    _write_model,
)


def test_two_edges_of_a_cluster_share_one_transmission_per_block(tmp_path: Path) -> None:
    _write_model(tmp_path / "repo")
    layout = grid_topology(2, spacing_m=200.0)
    doc = build_world(
        layout, clusters={"c1": ["edge-1", "edge-2"]}, channel=Channel(bandwidth_hz=5e6)
    )
    world_file = write_world(tmp_path / "world.json", doc)
    world = World.from_json(doc)
    manifest = _manifest(tmp_path, "edge-1")
    _manifest(tmp_path, "edge-2")
    blocks = _big_blocks(manifest)
    ids = [b for b, _ in blocks]
    with edge_nodes(tmp_path) as make:
        urls = [
            make(n, world_file=world_file, medium_dir=tmp_path / "medium", broadcast_window_s=1.0)[
                0
            ]
            for n in ("edge-1", "edge-2")
        ]
        bodies = _together([_batch(urls[0], ids), _batch(urls[1], ids, area="area-2")])
        radios = [_radio(u) for u in urls]
    total = sum(n for _, n in blocks)
    assert [len(b) for b in bodies] == [total, total]
    assert bodies[0] == bodies[1]
    assert sum(r["block_transmissions"] for r in radios) == len(blocks), radios
    assert sum(r["followed_blocks"] for r in radios) == len(blocks), radios
    assert all(r["mid_joins"] == 0 and r["takeovers"] == 0 for r in radios), radios
    # Every group had both members: group size 2, counted once, by its leader.
    sizes: dict[str, int] = {}
    for r in radios:
        for k, v in r["group_sizes"].items():
            sizes[k] = sizes.get(k, 0) + v
    assert sizes == {"2": len(blocks)}, radios
    both = ("edge-1", "edge-2")
    rate = min(world.rate(a, both, serving="edge-1") for a in ("area-1", "area-2"))
    airtime = sum(r["airtime_by_kind_s"]["block"] for r in radios)
    assert airtime == pytest.approx(total / rate, rel=1e-6)
    assert sum(r["bytes_delivered"] for r in radios) == 2 * total


_HOLD = """
import sys, time
from pathlib import Path
from edge_node.cluster_groups import ClusterGroups
groups = ClusterGroups(Path(sys.argv[1]), "c1", "edge-1")
joined = groups.join("b1", 100, "area-1", time.monotonic() + 60)
assert joined.lead
print("led", flush=True)
time.sleep(600)
"""


def test_a_dead_leaders_group_is_taken_over_by_a_follower(tmp_path: Path) -> None:
    leader = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert leader.stdout is not None and leader.stdout.readline().strip() == "led"
        follower = ClusterGroups(tmp_path, "c1", "edge-2")
        other = ClusterGroups(tmp_path, "c1", "edge-3")
        joined = follower.join("b1", 100, "area-2", 0.0)
        assert not joined.lead and joined.leader == "edge-1"
        entry = follower.poll("b1")
        assert follower.alive(entry["token"])
        assert follower.take_over("b1", joined.gid) is None  # the leader runs: no take-over
        assert other.join("b1", 100, "area-3", 0.0).gid == joined.gid
        leader.kill()  # SIGKILL: the kernel drops its token lock
        leader.wait(timeout=30)
        assert not follower.alive(entry["token"])
        assert follower.take_over("b1", joined.gid) == 0
        # The third edge now follows the new leader, in the same group.
        entry = other.poll("b1")
        assert entry["leader"] == "edge-2" and other.alive(entry["token"])
        assert other.take_over("b1", joined.gid) is None
        remote = follower.progress("b1", joined.gid, 50)
        assert remote.areas == ("area-3",) and remote.edges == {"edge-3"}
        assert follower.finish("b1", joined.gid, 100, complete=True).joined == 1
        assert other.poll("b1")["state"] == "done"
        # A later request opens a new group; the ended one stays readable for late followers.
        assert other.join("b1", 100, "area-3", 0.0).lead
        assert other.poll("b1")["prev"] == {"gid": joined.gid, "state": "done", "sent": 100}
        follower.close()
        other.close()
    finally:
        if leader.poll() is None:
            leader.kill()
            leader.wait(timeout=30)
    assert os.path.isdir(tmp_path / "c1.groups")


def test_the_live_groups_an_edge_reports_validate_as_a_heartbeat(tmp_path: Path) -> None:
    import asyncio

    from core.wire import NodeHeartbeat
    from edge_node.radio import AirtimeLedger, Radio

    world = World.from_json(build_world(grid_topology(1), channel=Channel(bandwidth_hz=5e6)))
    rate = world.rates["edge-1"]["area-1"]

    async def run() -> list[dict[str, Any]]:
        radio = Radio(
            world, "edge-1", window_s=0.5, ledger=AirtimeLedger(None),
            groups=ClusterGroups(tmp_path, "edge-1", "edge-1"),
        )  # fmt: skip
        pokes: list[int] = []
        radio.on_group = lambda: pokes.append(1)
        member = radio.member()
        tickets = radio.announce(member, "area-1", [("a" * 64, 1_000_000), ("b" * 64, 2_000_000)])
        report = radio.live_groups()
        assert len(pokes) == 2  # a heartbeat now for each group opened
        radio.leave(member, tickets)
        await radio.close()
        return report

    report = asyncio.run(run())
    assert [g["block_id"] for g in report] == ["a" * 64, "b" * 64]
    first, second = report
    # Queued behind the window, one after the other at the area's rate.
    assert first["starts_in_s"] == pytest.approx(0.5, abs=0.05)
    assert first["ends_in_s"] == pytest.approx(0.5 + 1_000_000 / rate, abs=0.05)
    assert second["starts_in_s"] == pytest.approx(first["ends_in_s"], abs=1e-3)
    assert second["ends_in_s"] == pytest.approx(first["ends_in_s"] + 2_000_000 / rate, abs=0.05)
    beat = NodeHeartbeat.model_validate({"url": "http://127.0.0.1:1", "broadcast": report})
    assert beat.broadcast is not None and beat.broadcast[1].size_bytes == 2_000_000


def _two_radios(tmp_path: Path, window_s: float) -> tuple[Any, Any, World]:
    from edge_node.radio import AirtimeLedger, Radio

    layout = grid_topology(2, spacing_m=200.0)
    world = World.from_json(
        build_world(
            layout, clusters={"c1": ["edge-1", "edge-2"]}, channel=Channel(bandwidth_hz=5e6)
        )
    )
    radios = [
        Radio(
            world,
            node,
            window_s=window_s,
            ledger=AirtimeLedger(tmp_path / "c1.airtime"),
            groups=ClusterGroups(tmp_path, "c1", node),
        )  # fmt: skip
        for node in ("edge-1", "edge-2")
    ]
    return radios[0], radios[1], world


def test_a_follower_takes_over_a_group_its_leader_gave_up(tmp_path: Path) -> None:
    import asyncio

    size = 2_000_000

    async def run() -> tuple[Any, Any]:
        a, b, _world = _two_radios(tmp_path, 0.3)
        ma, mb = a.member(), b.member()
        [ta] = a.announce(ma, "area-1", [("x" * 64, size)])
        [tb] = b.announce(mb, "area-2", [("x" * 64, size)])
        assert tb.job.leader == "edge-1"  # edge-2 follows edge-1's group
        a.leave(ma, [ta])  # the leader's only member goes before the window ends
        await asyncio.wait_for(b.ready(tb, size), timeout=60)
        b.leave(mb, [tb])
        await a.close()
        await b.close()
        return a, b

    a, b = asyncio.run(run())
    assert a.stats.jobs_abandoned == 1 and a.stats.block_transmissions == 0
    assert b.stats.takeovers == 1 and b.stats.block_transmissions == 1
    assert b.stats.airtime_s["block"] > 0 and a.stats.airtime_s["block"] == 0


def test_a_member_joining_at_another_edge_mid_air_gets_the_rest_then_its_head(
    tmp_path: Path,
) -> None:
    import asyncio

    size = 4_000_000

    async def run() -> tuple[Any, Any, int]:
        a, b, _world = _two_radios(tmp_path, 0.05)
        ma, mb = a.member(), b.member()
        [ta] = a.announce(ma, "area-1", [("y" * 64, size)])
        await asyncio.wait_for(a.ready(ta, size // 4), timeout=60)  # on the air
        [tb] = b.announce(mb, "area-2", [("y" * 64, size)])
        join_at = tb.join_at
        await asyncio.wait_for(asyncio.gather(a.ready(ta, size), b.ready(tb, size)), timeout=60)
        a.leave(ma, [ta])
        b.leave(mb, [tb])
        await a.close()
        await b.close()
        return a, b, join_at

    a, b, join_at = asyncio.run(run())
    assert 0 < join_at < size
    assert a.stats.block_transmissions == 1 and b.stats.followed == 1
    assert b.stats.mid_joins == 1 and b.stats.airtime_s["block"] == 0
    assert b.stats.airtime_s["head"] > 0  # the missed head, from its own edge
