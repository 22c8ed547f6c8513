"""Routes under the delay model (controller.routing + controller.delay_routing): per-block
delivery (held | migrate | origin) and, with the delay objective, candidates by expected delay."""

from __future__ import annotations

import math
from typing import Any

import pytest

from client._route import parse_route
from controller import delay_routing
from controller.delay.model import snr_linear
from controller.routing import build_route
from controller.state import CatalogueEntry, NodeRecord
from controller.topology import Topology
from core.digest import BlockId
from core.manifest import BlockRef, FileEntry, ModelManifest
from core.wire import RouteDelivery

A, B, S = "a" * 64, "b" * 64, "c" * 64  # A: only far holds it, S: both hold it, B: nobody
SIZE = 10_000_000
NEAR = NodeRecord("near", "http://near", 10**9, position=(0.0, 0.0), models=("m-s",))
FAR = NodeRecord("far", "http://far", 10**9, position=(400.0, 0.0), models=("m-as",))
BLOCKS = {"m-s": frozenset({S}), "m-as": frozenset({A, S})}
CLIENT = (20.0, 0.0)


def _entry(blocks: list[str]) -> CatalogueEntry:
    refs = tuple(BlockRef(BlockId(b), i * SIZE, SIZE) for i, b in enumerate(blocks))
    file = FileEntry("model.bin", SIZE * len(blocks), "0" * 64, "safetensors", refs)
    manifest = ModelManifest("m", "org/m", "main", (file,))
    return CatalogueEntry("m", "org/m", "main", "main", SIZE * len(blocks), 1, manifest)


def _topology(**channel: float) -> Topology:
    return Topology.from_json({"areas": {"a1": {"x_m": 20.0, "y_m": 0.0}}, "channel": channel})


def _route(
    point: tuple[float, float] | None = CLIENT,
    *,
    topology: Topology | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    return build_route(
        _entry([A, S, B]),
        nodes=[NEAR, FAR],
        blocks_by_model=BLOCKS,
        topology=topology or _topology(),
        point=point,
        origin_url="http://origin",
        **kwargs,
    )


def _names(route: dict[str, Any]) -> list[str]:
    return [s.get("node_id", s["kind"]) for s in route["sources"]]


def test_the_serving_edge_migrates_what_only_a_far_neighbour_holds() -> None:
    route = _route(migration=True)
    names = _names(route)
    near, far, origin = names.index("near"), names.index("far"), names.index("origin")
    assert route["delivery"][A]["how"] == "migrate"
    assert route["delivery"][A]["source"] == near and route["delivery"][A]["migrate_from"] == far
    assert route["blocks"][A] == [near, far, origin]  # old clients: near 404s, then far
    assert route["delivery"][S] == {
        "source": near,
        "how": "held",
        "expected_ms": route["delivery"][S]["expected_ms"],
    }
    # B, held by nobody: the cloud path of the model, via the serving edge (then the origin).
    assert route["delivery"][B]["how"] == "origin" and route["delivery"][B]["source"] == near
    assert route["blocks"][B] == [near, origin]
    # The wire model round-trips every entry, and the SDK reads them.
    for doc in route["delivery"].values():
        assert RouteDelivery.model_validate(doc).model_dump(exclude_none=True) == doc
    parsed = parse_route(route)
    assert parsed.migrate_from(BlockId(A), near) == "http://far"
    assert parsed.migrate_from(BlockId(A), far) is None  # far holds A: it does not migrate it
    assert parsed.migrate_from(BlockId(S), near) is None
    assert parsed.via_origin(BlockId(B), near) and not parsed.via_origin(BlockId(A), near)
    assert parsed.pulled(BlockId(B), near) and parsed.pulled(BlockId(A), near)
    assert not parsed.pulled(BlockId(S), near)


def test_without_migration_or_position_routes_are_as_before() -> None:
    plain = _route(migration=False)
    names = _names(plain)
    assert plain["blocks"][A] == [names.index("far"), names.index("origin")]
    assert "delivery" not in plain and "near" in names  # near holds S
    unplaced = _route(None, migration=True)
    assert "delivery" not in unplaced
    assert _route(None) == unplaced


def test_a_user_next_to_the_holder_reads_it_there() -> None:
    route = _route((390.0, 0.0), migration=True)
    assert {d["how"] for b, d in route["delivery"].items() if b != B} == {"held"}
    assert route["sources"][0]["node_id"] == "far"


def test_a_slow_edge_link_makes_the_direct_read_faster_than_migrating() -> None:
    # 1 kbit/s between edges: migrating 10 MB takes a day, the far edge's radio much less.
    route = _route(migration=True, topology=_topology(backhaul_bps=1e3))
    assert route["delivery"][A]["how"] == "held"
    assert route["sources"][route["delivery"][A]["source"]]["node_id"] == "far"
    assert "near" in _names(route)  # still a source: it holds S


def _expected_ms(topology: Topology, how: str, node: tuple[float, float]) -> float:
    """The delay model's per-block time, written out independently of controller.delay_routing."""
    ch = topology.channel
    d = math.hypot(CLIENT[0] - node[0], CLIENT[1] - node[1])
    snr = snr_linear(
        d,
        tx_power_dbm=ch.tx_power_dbm,
        noise_dbm_per_hz=ch.noise_dbm_per_hz,
        bandwidth_hz=ch.bandwidth_hz,
    )
    air = 8 * SIZE / (ch.bandwidth_hz * math.log2(1 + snr)) * 1000
    prep = {"held": 0.0, "migrate": 8 * SIZE / ch.backhaul_bps, "origin": 8 * SIZE / ch.origin_bps}
    return ch.latency_ms + prep[how] * 1000 + air


def test_with_the_delay_objective_candidates_follow_expected_delay() -> None:
    # A fast origin link: the origin beats the far edge for A, but migrating beats both.
    topology = _topology(origin_bps=5e9)
    route = _route(objective="delay", migration=True, topology=topology)
    names = _names(route)
    near, far, origin = names.index("near"), names.index("far"), names.index("origin")
    assert route["blocks"][A] == [near, far, origin]
    migrate = _expected_ms(topology, "migrate", NEAR.position)
    assert route["delivery"][A]["expected_ms"] == pytest.approx(migrate, abs=1e-3)
    assert migrate < _expected_ms(topology, "origin", NEAR.position)
    assert _expected_ms(topology, "origin", NEAR.position) < _expected_ms(
        topology, "held", FAR.position
    )
    # S: both hold it, the near one first; B: nobody holds it, the serving edge pulls it.
    assert route["blocks"][S] == [near, far, origin]
    assert route["blocks"][B] == [near, origin]
    # Without migration A's candidates are its holder, then the origin.
    no_migration = _route(objective="delay", migration=False, topology=topology)
    n2 = _names(no_migration)
    assert no_migration["blocks"][A] == [n2.index("far"), n2.index("origin")]


def test_block_options_order_and_ties() -> None:
    here = {"x": (0.0, 0.0), "w": (0.0, 0.0)}
    costs = delay_routing.route_costs(_topology(), CLIENT, here, "x")
    options = delay_routing.block_options(costs, ["w", "x"])
    # Equal costs: ties by node id; the serving edge holds it, so no migration option.
    # The origin stays the client's last resort for a held block.
    assert [(o.node_id, o.how) for o in options] == [("w", "held"), ("x", "held"), (None, "origin")]
    # Held by nobody: the serving edge fetches it from the origin (the model's cloud path).
    [nobody] = delay_routing.block_options(costs, [])
    assert (nobody.node_id, nobody.how) == ("x", "origin")
    lacking = delay_routing.block_options(costs, ["w"])
    assert [(o.node_id, o.how, o.migrate_from) for o in lacking][:2] == [
        ("w", "held", None),
        ("x", "migrate", "w"),  # the same radio plus the edge link: slower than reading w
    ]
    assert delay_routing.expected_ms(costs, options[0], SIZE) == pytest.approx(
        _expected_ms(_topology(), "held", (0.0, 0.0))
    )
    assert delay_routing.serving_edge({"b": (0.0, 0.0), "a": (0.0, 0.0)}, CLIENT) == "a"
    assert delay_routing.serving_edge({"a": (0.0, 0.0)}, None) is None
