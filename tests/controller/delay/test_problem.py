"""The trimcache.delay-problem/v1 format: parsing, round trip, and errors naming the entry."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from controller.delay import delay_problem_from_json, delay_problem_to_json, evaluate_delay

DESIGN_EXAMPLE: dict[str, Any] = {
    "schema": "trimcache.delay-problem/v1",
    "blocks": {"b0": 1048576, "b1": 524288},
    "models": {"m0": ["b0"], "m1": ["b0", "b1"]},
    "servers": {"s0": {"capacity": 2000000, "position": [0, 0]}},
    "users": {"u0": {"position": [30, 40]}},
    "channel": {
        "tx_power_dbm": 30,
        "bandwidth_hz": 20e6,
        "noise_dbm_per_hz": -174,
        "coverage_m": 300,
    },
    "backhaul_bytes_per_s": 12.5e6,
    "migration_bytes_per_s": 125e6,
    "slots": [{"u0": "m0"}, {"u0": "m1"}],
}


def with_change(path: tuple[str, ...], value: object) -> dict[str, Any]:
    doc = copy.deepcopy(DESIGN_EXAMPLE)
    node: Any = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return doc


def test_design_example_parses_and_round_trips():
    p = delay_problem_from_json(DESIGN_EXAMPLE)
    assert p.servers["s0"].capacity == 2000000
    assert p.users["u0"] == (30.0, 40.0)
    again = delay_problem_from_json(delay_problem_to_json(p))
    assert again == p
    assert evaluate_delay(again, {"s0": ["b0"]}) == evaluate_delay(p, {"s0": ["b0"]})


@pytest.mark.parametrize(
    ("path", "value", "needle"),
    [
        (("blocks", "b1"), -5, "block 'b1'"),
        (("models", "m1"), ["b0", "b9"], "model 'm1': unknown block 'b9'"),
        (("servers", "s0", "capacity"), -1, "server 's0': capacity"),
        (("servers", "s0", "position"), [0], "server 's0': position"),
        (("users", "u0", "position"), [900, 900], "user 'u0': out of range of every node"),
        (("slots",), [{"u7": "m0"}], "slot 0: unknown user 'u7'"),
        (("slots",), [{"u0": "m0"}, {"u0": "mx"}], "slot 1: user 'u0' requests unknown model"),
        (("slots",), [], "no request slots"),
        (("backhaul_bytes_per_s",), -1.0, "backhaul_bytes_per_s"),
        (("migration_bytes_per_s",), 0, "migration_bytes_per_s"),
        (("channel", "bandwidth_hz"), -20e6, "channel.bandwidth_hz"),
        (("channel", "beams"), 4, "channel: unknown key 'beams'"),
        (("clusters",), {"c0": ["s0", "s5"]}, "cluster 'c0': unknown node 's5'"),
        (("popularity",), {"u0": {"m0": 1.5}}, "popularity['u0']['m0']"),
        (("popularity",), {"u0": {"m0": -0.1}}, "popularity['u0']['m0']"),
        (("popularity",), {"u0": {"m0": 0.7, "m1": 0.7}}, "popularity['u0']: probabilities"),
        (("deadlines_s",), {"m3": 1.0}, "deadlines_s: unknown model 'm3'"),
        (("schema",), "trimcache.placement-problem/v1", "schema must be"),
        (("extra",), 1, "unknown top-level key 'extra'"),
    ],
)
def test_bad_input_names_the_entry(path, value, needle):
    with pytest.raises(ValueError) as info:
        delay_problem_from_json(with_change(path, value))
    assert needle in str(info.value)


def test_a_node_in_two_clusters_is_rejected():
    doc = with_change(("servers", "s1"), {"capacity": 1, "position": [10, 0]})
    doc["clusters"] = {"c0": ["s0", "s1"], "c1": ["s1"]}
    with pytest.raises(ValueError, match="node 's1' is already in cluster 'c0'"):
        delay_problem_from_json(doc)
