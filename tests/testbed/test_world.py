"""The testbed's world (testbed/world.py, core/world.py): every rate is the delay model's.

The per-pair rates and the CoMP joint rates of a world equal
:meth:`controller.delay.model.DelayInstance.rate_bytes_per_s` on the same geometry, a block's
airtime at that rate is the delay model's airtime, and the simulator's problem for the world
has the testbed's positions, channel and clusters.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.delay.model import DelayInstance, evaluate_delay
from controller.delay.problem import Channel
from core.world import World, transmitter_key
from testbed.topology import grid_topology
from testbed.world import build_world, layout_of, line_clusters, prepare_world, world_problem
from tests.helpers import run_cli


def _close_layout() -> World:
    # 200 m apart: each user area is covered by both edges (coverage 300 m), so CoMP matters.
    layout = grid_topology(2, spacing_m=200.0)
    return World.from_json(build_world(layout, clusters=line_clusters(layout, 2)))


def test_rates_are_the_delay_models() -> None:
    world = _close_layout()
    assert world.cluster_of == {"edge-1": "c1", "edge-2": "c1"}
    near = world.rates["edge-1"]["area-1"]
    far = world.rates["edge-2"]["area-1"]
    assert near > far > 0
    joint = world.joint_rates["c1"]["area-1"][transmitter_key(["edge-1", "edge-2"])]
    assert joint > near  # amplitudes add: the joint SNR beats the best single one
    assert world.rate("area-1", ["edge-2"], serving="edge-1") == joint
    assert world.rate("area-1", [], serving="edge-1") == near
    # The airtime of one block at that rate is what the delay model charges for it.
    problem = world_problem(
        world,
        blocks={"b": 10_000_000},
        models={"m": ["b"]},
        capacities={"edge-1": 10**8, "edge-2": 10**8},
        slots=[{"area-1": "m"}],
    )
    instance = DelayInstance(problem)
    assert instance.rate_bytes_per_s("area-1", ["edge-1", "edge-2"]) == joint
    both = evaluate_delay(problem, {"edge-1": ["b"], "edge-2": ["b"]})
    assert both.mean_s == pytest.approx(10_000_000 / joint, rel=1e-12)
    alone = evaluate_delay(problem, {"edge-1": ["b"]})
    assert alone.mean_s == pytest.approx(10_000_000 / near, rel=1e-12)


def test_the_layout_round_trips_and_bad_worlds_name_the_entry(tmp_path: Path) -> None:
    layout = grid_topology(3)
    doc = build_world(layout)
    assert layout_of(World.from_json(doc)) == layout
    bad = {**doc, "clusters": {"c1": ["edge-9"]}}
    with pytest.raises(ValueError, match="edge-9"):
        World.from_json(bad)
    with pytest.raises(ValueError, match="schema"):
        World.from_json({**doc, "schema": "nope"})
    with pytest.raises(ValueError, match="rates"):
        World.from_json({**doc, "rates": {"edge-1": {"area-1": -1}}})
    # A world for two edges is refused by a three-edge testbed.
    two = tmp_path / "two.json"
    two.write_text(json.dumps(build_world(grid_topology(2))))
    with pytest.raises(ValueError, match="--edges"):
        prepare_world(two, edges=3, cluster_size=1, edge_urls=["a", "b", "c"], path=tmp_path / "w")
    written = prepare_world(
        None, edges=2, cluster_size=2, edge_urls=["http://h:1", "http://h:2"], path=tmp_path / "w"
    )
    assert written.node_of_url == {"http://h:1": "edge-1", "http://h:2": "edge-2"}
    assert World.load(tmp_path / "w").cluster_of == {"edge-1": "c1", "edge-2": "c1"}


def test_the_channel_changes_the_rate() -> None:
    layout = grid_topology(1)
    wide = World.from_json(build_world(layout)).rates["edge-1"]["area-1"]
    narrow = World.from_json(build_world(layout, channel=Channel(bandwidth_hz=5e6)))
    assert narrow.rates["edge-1"]["area-1"] < wide


def test_testbed_up_refuses_a_window_without_a_world(tmp_path: Path) -> None:
    result = run_cli("testbed", "up", "--dir", str(tmp_path), "--broadcast-window-s", "1")
    assert result.returncode != 0
    assert "--world" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
