"""The controller with real processes: redis-server, origin, controller, three edge nodes.

One scenario, in order (each step builds on the previous one's state):

1. index six zoo models through the origin; three edge nodes register by heartbeat; the
   controller plans by itself and pushes: every edge holds what the placement says, the origin
   served each unique block at most once, routes only name sources that hold the blocks;
2. kill one edge node (SIGKILL): within the heartbeat expiry routes stop naming it, and a new
   placement covers its models on the others where capacity allows (peers before the origin);
3. kill and restart the controller: nothing lost;
4. kill Redis (AOF on): the API answers 503 ``state_unavailable``; restart it: the controller
   recovers by itself with its state intact, and nodes re-register by heartbeat.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.controller.procs import ServiceProcess, controller_process, edge_process
from tests.controller.redis_proc import RedisProcess
from tests.helpers import live_server, wait_until

pytestmark = pytest.mark.slow

TOKEN = "system-token"
EXPIRY_S = 2.0
HEARTBEAT_S = 0.4
AUTH = {"Authorization": f"Bearer {TOKEN}"}
POSITIONS = {"edge-1": (0.0, 0.0), "edge-2": (200.0, 0.0), "edge-3": (400.0, 0.0)}


# Task models derived from the zoo's base when the zoo has fewer than six: (name, encoder layers
# rewritten, classifier labels). Everything else keeps the base's bytes, as fine-tuning with
# frozen layers does, so they share blocks with the base and the zoo's models.
DERIVED: tuple[tuple[str, list[int], int], ...] = (
    ("task-frozen5", [5], 2),
    ("task-frozen4", [4, 5], 3),
    ("task-head", [], 5),
)
ZOO_MODELS = 6


def _link_tree(src: Path, dest: Path) -> None:
    for path in sorted(src.rglob("*")):
        if path.is_file() and not any(p.startswith(".") for p in path.relative_to(src).parts):
            target = dest / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path.resolve())


@pytest.fixture(scope="module")
def system_zoo(
    zoo_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[tuple[str, str]]]:
    """Six models: the shared test zoo's (linked, not copied; fine-tuned classifiers with
    different frozen depths, a LoRA adapter, the base) topped up with task models derived
    from its base with numpy."""
    from safetensors.numpy import load_file, save_file

    catalogue = json.loads((zoo_dir / "zoo.json").read_text())
    root = tmp_path_factory.mktemp("system-zoo")
    models: list[tuple[str, str]] = []
    for model in catalogue["models"][:ZOO_MODELS]:
        _link_tree(zoo_dir / "repos" / model["repo_id"], root / "repos" / model["repo_id"])
        models.append((model["model_id"], model["repo_id"]))
    base_repo = next(m["repo_id"] for m in catalogue["models"] if m["kind"] == "base")
    base = zoo_dir / "repos" / base_repo
    tensors = load_file(str(base / "model.safetensors"))
    for seed, (name, layers, labels) in enumerate(DERIVED[: max(0, ZOO_MODELS - len(models))]):
        dest = root / "repos" / "trimcache-zoo" / name
        _link_tree(base, dest)
        (dest / "model.safetensors").unlink()
        rng = np.random.default_rng(seed)
        out = dict(tensors)
        for key, value in tensors.items():
            if any(key.startswith(f"encoder.layer.{i}.") for i in layers):
                noise = rng.standard_normal(value.shape).astype(value.dtype) * 0.01
                out[key] = (value + noise).astype(value.dtype)
        out["classifier.weight"] = rng.standard_normal((labels, 384)).astype(np.float32)
        out["classifier.bias"] = np.zeros(labels, dtype=np.float32)
        save_file(out, str(dest / "model.safetensors"), metadata={"format": "pt"})
        models.append((name, f"trimcache-zoo/{name}"))
    assert len(models) == ZOO_MODELS
    return root, models


class Cluster:
    """Handles on every process of the scenario plus small query helpers."""

    def __init__(self, tmp: Path, origin_url: str, redis: RedisProcess) -> None:
        self.tmp = tmp
        self.origin_url = origin_url
        self.redis = redis
        self.http = httpx.Client(timeout=60.0, headers={"Authorization": f"Bearer {TOKEN}"})
        self.controller: ServiceProcess | None = None
        self.edges: dict[str, ServiceProcess] = {}

    def start_controller(self, port: int | None = None) -> str:
        self.controller = controller_process(
            self.tmp,
            port=port,
            redis_url=self.redis.url,
            origin_url=self.origin_url,
            auth_token=TOKEN,
            heartbeat_expiry_s=EXPIRY_S,
            plan_interval_s=0,
            check_interval_s=0.2,
            settle_s=2.0,
            retry_interval_s=1.0,
            redis_timeout_s=0.5,
        ).start()
        return self.controller.url

    @property
    def url(self) -> str:
        assert self.controller is not None
        return self.controller.url

    def index_models(
        self, models: list[tuple[str, str]]
    ) -> tuple[dict[str, Any], dict[str, dict[str, int]], dict[str, int]]:
        """Add ``(model_id, repo_id)`` pairs to the catalogue; return their manifests, each
        one's block sizes, and the sizes of all their distinct blocks."""
        for model_id, repo_id in models:
            body = {"model_id": model_id, "repo_id": repo_id}
            r = self.http.post(f"{self.url}/v1/models", json=body)
            assert r.status_code == 201, r.text
        manifests = {m: self.get(f"/v1/models/{m}")["manifest"] for m, _ in models}
        sizes = {m: block_sizes(doc) for m, doc in manifests.items()}
        unique: dict[str, int] = {}
        for s in sizes.values():
            unique.update(s)
        return manifests, sizes, unique

    def launch_edge(self, node_id: str, capacity_bytes: int) -> ServiceProcess:
        x, y = POSITIONS[node_id]
        edge = edge_process(
            self.tmp,
            node_id,
            data_dir=self.tmp / node_id,
            capacity_bytes=capacity_bytes,
            controller_url=self.url,
            origin_url=self.origin_url,
            auth_token=TOKEN,
            heartbeat_interval_s=HEARTBEAT_S,
            position_x_m=x,
            position_y_m=y,
            durable="false",
            scrub_on_start="false",
        ).launch()
        self.edges[node_id] = edge
        return edge

    def get(self, path: str, **params: Any) -> Any:
        response = self.http.get(f"{self.url}{path}", params=params)
        assert response.status_code == 200, response.text
        return response.json()

    def placement(self) -> dict[str, Any]:
        doc: dict[str, Any] = self.get("/v1/placement")
        return doc

    def edge_models(self, node_id: str) -> set[str]:
        doc = self.http.get(f"{self.edges[node_id].url}/v1/models").json()
        return {m["model_id"] for m in doc["models"]}

    def settled(self, node_ids: set[str]) -> dict[str, Any] | None:
        """The placement once it covers exactly ``node_ids`` and every push is applied."""
        placement = self.placement()
        if set(placement["servers"]) != node_ids:
            return None
        if any(placement["push"].get(n, {}).get("status") != "applied" for n in node_ids):
            return None
        return placement

    def origin_bytes(self) -> int:
        served: int = self.http.get(f"{self.origin_url}/v1/stats").json()["bytes_served"]
        return served

    def close(self) -> None:
        for edge in self.edges.values():
            edge.stop()
        if self.controller is not None:
            self.controller.stop()
        self.http.close()


@pytest.fixture
def cluster(tmp_path: Path, system_zoo: tuple[Path, list[tuple[str, str]]]) -> Iterator[Cluster]:
    from testbed.origin import create_app as create_origin

    with (
        RedisProcess(tmp_path / "redis", appendonly=True) as redis,
        live_server(create_origin(system_zoo[0], auth_token=TOKEN)) as origin_url,
    ):
        c = Cluster(tmp_path, origin_url, redis)
        try:
            yield c
        finally:
            c.close()


def block_sizes(manifest: dict[str, Any]) -> dict[str, int]:
    return {row[0]: int(row[2]) for f in manifest["files"] for row in f["blocks"]}


def test_system(cluster: Cluster, system_zoo: tuple[Path, list[tuple[str, str]]]) -> None:
    c = cluster
    c.start_controller()
    # -- 1. index six models (no edges yet: nothing is pushed while the catalogue fills) -------
    manifests, sizes, unique = c.index_models(system_zoo[1])
    total_unique = sum(unique.values())
    c.http.post(f"{c.origin_url}/v1/stats/reset")

    # Each edge fits its largest model and half of the rest: no edge holds everything.
    largest = max(sum(s.values()) for s in sizes.values())
    capacity = (largest + total_unique) // 2
    # Started together, so they register within one settle period: one plan for all three.
    for node_id in POSITIONS:
        c.launch_edge(node_id, capacity)
    for edge in c.edges.values():
        edge.wait_healthy()
    placement = wait_until(lambda: c.settled(set(POSITIONS)), timeout_s=90, interval_s=0.2)
    assert placement["hit_ratio"] > 0
    held: dict[str, set[str]] = {}
    for node_id in POSITIONS:
        held[node_id] = c.edge_models(node_id)
        assert held[node_id] == set(placement["servers"][node_id]["models"]), node_id
    placed = set().union(*held.values())
    assert len(placed) >= min(4, len(manifests))
    placed_unique = {b: n for m in placed for b, n in sizes[m].items()}
    origin_after_plan = c.origin_bytes()
    # Every unique block of the placed models came from the origin at most once; the rest moved
    # between edges.
    assert 0 < origin_after_plan <= sum(placed_unique.values())
    fetched = {n: placement["push"][n]["fetched_bytes_by_source"] for n in POSITIONS}
    from_origin = sum(f.get(c.origin_url, 0) for f in fetched.values())
    assert from_origin == origin_after_plan
    edge_urls = {c.edges[n].url for n in POSITIONS}
    from_peers = sum(v for f in fetched.values() for k, v in f.items() if k in edge_urls)
    print(
        f"plan 1: unique={total_unique} placed_unique={sum(placed_unique.values())} "
        f"origin={origin_after_plan} peers={from_peers} placement={placement['servers']}"
    )

    def check_routes(live: dict[str, set[str]]) -> None:
        """Every edge a route names for a block really holds that block."""
        edge_blocks = {
            c.edges[n].url: {b for m in models for b in sizes[m]} for n, models in live.items()
        }
        for model_id in manifests:
            for area in ("area-edge-1", "area-edge-3"):
                route = c.get(f"/v1/routes/{model_id}", area_id=area)
                sources = route["sources"]
                assert sources[-1] == {"url": c.origin_url, "kind": "origin"}
                assert set(route["blocks"]) == set(sizes[model_id])
                for block_id, indexes in route["blocks"].items():
                    assert indexes[-1] == len(sources) - 1
                    for i in indexes[:-1]:
                        assert sources[i]["kind"] == "edge"
                        assert block_id in edge_blocks[sources[i]["url"]]
                holders = [n for n, models in live.items() if model_id in models]
                named = {s.get("node_id") for s in sources if s["kind"] == "edge"}
                assert set(holders) <= named

    check_routes(held)
    # A real HEAD against an edge a route names, for one block.
    model_id = next(iter(held["edge-1"]))
    route = c.get(f"/v1/routes/{model_id}", area_id="area-edge-1")
    block_id, indexes = next(iter(route["blocks"].items()))
    head = c.http.head(f"{route['sources'][indexes[0]]['url']}/v1/blocks/{block_id}")
    assert head.status_code == 200

    # -- 2. kill the edge whose loss hurts most --------------------------------------------
    victim = max(
        POSITIONS,
        key=lambda n: (len(held[n] - set().union(*(held[o] for o in POSITIONS if o != n))), n),
    )
    only_victim = held[victim] - set().union(*(held[o] for o in POSITIONS if o != victim))
    victim_url = c.edges[victim].url
    c.edges[victim].kill()
    killed_at = time.monotonic()

    def victim_gone() -> bool:
        for m in held[victim]:
            route = c.get(f"/v1/routes/{m}")
            if any(s["url"] == victim_url for s in route["sources"]):
                return False
        return True

    wait_until(victim_gone, timeout_s=EXPIRY_S + 5, interval_s=0.1)
    gone_after_s = time.monotonic() - killed_at  # printed below, not asserted
    # It left the routes because its heartbeats expired (not a wall-clock bound: shared host).
    assert victim not in {n["node_id"] for n in c.get("/v1/nodes")["nodes"]}
    survivors = set(POSITIONS) - {victim}
    old_version = placement["version"]
    placement2 = wait_until(
        lambda: (p := c.settled(survivors)) and p["version"] > old_version and p,
        timeout_s=90,
        interval_s=0.2,
    )
    held2 = {n: c.edge_models(n) for n in survivors}
    for n in survivors:
        assert held2[n] == set(placement2["servers"][n]["models"])
    placed2 = set().union(*held2.values())
    for m in only_victim:
        if m in placed2:
            continue
        # Not re-placed: then no survivor had room for it next to what it holds now.
        for n in survivors:
            have = {b for x in held2[n] for b in sizes[x]}
            used = sum(unique[b] for b in have)
            missing = sum(n_ for b, n_ in sizes[m].items() if b not in have)
            assert used + missing > capacity, (m, n)
    check_routes(held2)
    origin_total = c.origin_bytes()
    # Blocks a survivor already held moved between edges; only blocks whose every copy died
    # with the victim came from the origin again, once.
    held_before = {b for n in survivors for m in held[n] for b in sizes[m]}
    refetchable = {b: n_ for m in placed2 for b, n_ in sizes[m].items() if b not in held_before}
    origin_phase2 = origin_total - origin_after_plan
    assert origin_phase2 <= sum(refetchable.values())
    fetched2 = [placement2["push"][n]["fetched_bytes_by_source"] for n in survivors]
    assert sum(f.get(c.origin_url, 0) for f in fetched2) == origin_phase2
    print(
        f"kill {victim}: routes clean after {gone_after_s:.2f}s; only-victim models {only_victim}"
        f" re-placed {only_victim & placed2}; origin phase 2={origin_phase2} (bound "
        f"{sum(refetchable.values())}); placement={placement2['servers']}"
    )

    # -- 3. restart the controller: nothing lost -------------------------------------------
    first_model = next(iter(manifests))
    report = {"model_id": first_model, "area_id": "area-edge-2", "outcome": "hit", "seconds": 1.0}
    assert c.http.post(f"{c.url}/v1/demand", json=report).status_code == 202
    demand_before = c.get("/v1/status")["demand"]
    assert demand_before["requests"] == 1
    models_before = c.get("/v1/models")
    placement_before = c.placement()
    topology_before = c.get("/v1/topology")
    port = c.controller.port if c.controller else None
    assert c.controller is not None
    c.controller.kill()
    c.start_controller(port=port)  # same port: the edges keep heartbeating to it
    assert c.get("/v1/models") == models_before
    assert c.placement()["version"] == placement_before["version"]
    # The nodes' heartbeats failed while it was down (they may have expired): they are back.
    wait_until(lambda: {n["node_id"] for n in c.get("/v1/nodes")["nodes"]} == survivors)
    assert c.get("/v1/topology") == topology_before
    assert c.get("/v1/status")["demand"] == demand_before

    # -- 4. Redis dies (kill -9, AOF on) and comes back ------------------------------------
    c.redis.stop()
    r = c.http.get(f"{c.url}/v1/models")
    assert r.status_code == 503 and r.headers["X-Error-Code"] == "state_unavailable"
    assert c.http.get(f"{c.url}/healthz").status_code == 503
    c.redis.start()
    wait_until(lambda: c.http.get(f"{c.url}/healthz").status_code == 200, timeout_s=20)
    assert c.get("/v1/models") == models_before
    assert c.placement()["version"] >= placement_before["version"]
    assert c.get("/v1/status")["demand"] == demand_before
    wait_until(lambda: {n["node_id"] for n in c.get("/v1/nodes")["nodes"]} == survivors)
    for m in held2[next(iter(survivors))]:
        route = c.get(f"/v1/routes/{m}")
        assert any(s["kind"] == "edge" for s in route["sources"])
    # Heartbeats every 0.4 s against a 2 s expiry: on a loaded machine a survivor may lapse for
    # a beat, so the status must list them again, not at one instant.
    status = wait_until(
        lambda: (s := c.get("/v1/status")) and {n["node_id"] for n in s["nodes"]} == survivors and s
    )
    print(json.dumps({"status": status["placement"]["push"]}, default=str)[:2000])


def byte_counters(c: Cluster) -> dict[str, int]:
    """Every byte counter that a moved block bumps: the origin's served bytes and each live
    edge's served and ingested bytes."""
    out = {"origin": c.origin_bytes()}
    for node_id, edge in c.edges.items():
        if edge.proc is None:
            continue
        stats = c.http.get(f"{edge.url}/v1/stats").json()
        out[f"{node_id}.served"] = int(stats["bytes_served"])
        out[f"{node_id}.ingested"] = sum(stats["bytes_ingested_by_source"].values())
    return out


def test_steady_replans_move_nothing_and_a_dead_edge_is_still_covered(
    cluster: Cluster, system_zoo: tuple[Path, list[tuple[str, str]]]
) -> None:
    """Issue 11 item 4: with steady demand, re-plans keep the placement (no byte moves); a
    node that dies still gets a re-plan at once that covers what it held."""
    c = cluster
    c.start_controller()
    manifests, sizes, unique = c.index_models(system_zoo[1])
    # One user area that every edge reaches: the hit ratio counts each model held anywhere.
    # No edge fits the whole catalogue, any two do: the catalogue is covered before and after
    # one edge dies (a re-plan that restores coverage is then the optimum's doing).
    topology = {"areas": {"area-mid": {"x_m": 200.0, "y_m": 0.0}}, "deadlines_s": {"default": 60}}
    assert c.http.put(f"{c.url}/v1/topology", json=topology).status_code == 200
    capacity = sum(unique.values()) - 1
    for node_id in POSITIONS:
        c.launch_edge(node_id, capacity)
    for edge in c.edges.values():
        edge.wait_healthy()
    first = wait_until(lambda: c.settled(set(POSITIONS)), timeout_s=120, interval_s=0.2)
    models = [m for m, _ in system_zoo[1]]

    def report_demand(step: int) -> None:
        # Steady demand: the same handful of fetches before every re-plan.
        for i, area in enumerate(("area-mid", "area-mid", "elsewhere")):
            body = {"model_id": models[(step + i) % len(models)], "area_id": area}
            assert c.http.post(f"{c.url}/v1/demand", json={**body, "outcome": "hit"}).is_success

    def ingested() -> int:  # every moved byte lands in some edge (from a peer or the origin)
        return sum(v for k, v in byte_counters(c).items() if k.endswith(".ingested"))

    report_demand(0)
    before = byte_counters(c)
    moved: list[int] = []
    versions = []
    for step in range(5):
        report_demand(step + 1)
        start = ingested()
        r = c.http.post(f"{c.url}/v1/placement:plan", headers=AUTH)
        assert r.status_code == 200, r.text
        versions.append(r.json()["version"])
        moved.append(ingested() - start)
    total = byte_counters(c)
    print(f"5 re-plans: versions={versions} bytes moved={moved} total={sum(moved)}")
    assert total == before, {k: total[k] - before[k] for k in total}
    assert versions == [first["version"]] * 5
    last_plan = c.placement()["last_plan"]
    assert last_plan["outcome"] == "kept" and last_plan["version"] == first["version"]
    assert last_plan["decision"]["decision"] == "keep" and last_plan["decision"]["reason"]

    # -- an edge dies: a re-plan at once restores coverage of every placed model -----------
    held = {n: c.edge_models(n) for n in POSITIONS}
    placed = set().union(*held.values())
    assert placed == set(models)
    victim = max(
        POSITIONS,
        key=lambda n: (len(held[n] - set().union(*(held[o] for o in POSITIONS if o != n))), n),
    )
    c.edges[victim].kill()
    survivors = set(POSITIONS) - {victim}
    second = wait_until(
        lambda: (p := c.settled(survivors)) and p["version"] > first["version"] and p,
        timeout_s=EXPIRY_S + 90,
        interval_s=0.2,
    )
    held2 = {n: c.edge_models(n) for n in survivors}
    for n in survivors:
        assert held2[n] == set(second["servers"][n]["models"])
    assert placed <= set().union(*held2.values()), (placed, held2)
    print(f"killed {victim}: held before {held}, after {held2}")
