"""Cached routes and many registrations: a real controller on uvicorn, real Redis, real HTTP.

The route cache (controller.route_cache) must answer what a rebuild would: these tests change
each input of a route (placement, a node leaving by heartbeat expiry, the catalogue, the
client's area) after a route was cached and check the next answer follows.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from controller.app import SERVER, create_app
from controller.route_cache import STAMP_TRUST_S, RouteCache
from controller.state import node_key
from core.waiting import wait_until
from tests.controller.conftest import AUTH, MINI_MODELS, controller_settings
from tests.helpers import serve

TOPOLOGY = {"areas": {"near-1": {"x_m": 5, "y_m": 0}, "near-2": {"x_m": 395, "y_m": 0}}}


class Controller:
    """A real controller process-equivalent: uvicorn serving the app, an HTTP client to it."""

    def __init__(self, app: Any, url: str) -> None:
        self.app, self.url = app, url
        self.http = httpx.Client(base_url=url, headers=AUTH, timeout=30.0)

    @property
    def cache(self) -> RouteCache:
        cache: RouteCache = self.app.state.route_cache
        return cache

    def heartbeat(self, node_id: str, **body: Any) -> httpx.Response:
        doc = {"url": f"http://{node_id}.test:8001", "capacity_bytes": 10**9, "position": [0, 0]}
        doc.update(body)
        response = self.http.put(f"/v1/nodes/{node_id}", json=doc)
        assert response.status_code == 200, response.text
        return response

    def route(self, model_id: str, **params: Any) -> httpx.Response:
        return self.http.get(f"/v1/routes/{model_id}", params=params)

    def sources(self, model_id: str, **params: Any) -> list[str | None]:
        response = self.route(model_id, **params)
        assert response.status_code == 200, response.text
        return [s.get("node_id") for s in response.json()["sources"]]


@pytest.fixture
def make_controller(redis_url: str, mini_origin: str) -> Iterator[Any]:
    servers: list[Any] = []

    def make(**extra: Any) -> Controller:
        app = create_app(controller_settings(redis_url, mini_origin, **extra))
        ctx = serve(lambda _url: app, **SERVER)  # httptools on uvloop, as `python -m controller`
        url = ctx.__enter__()
        servers.append(ctx)
        return Controller(app, url)

    yield make
    for ctx in reversed(servers):
        ctx.__exit__(None, None, None)


@pytest.fixture
def ctl(make_controller: Any) -> Controller:
    c: Controller = make_controller()
    for model_id in MINI_MODELS:
        r = c.http.post("/v1/models", json={"model_id": model_id, "repo_id": f"mini/{model_id}"})
        assert r.status_code == 201, r.text
    assert c.http.put("/v1/topology", json=TOPOLOGY).status_code == 200
    return c


def test_cached_routes_repeat_and_differ_by_area(ctl: Controller) -> None:
    ctl.heartbeat("edge-1", position=[0, 0], models=["tiny-a"])
    ctl.heartbeat("edge-2", position=[400, 0], models=["tiny-a"])
    first = ctl.route("tiny-a", area_id="near-1")
    hits = ctl.cache.hits
    again = ctl.route("tiny-a", area_id="near-1")
    assert ctl.cache.hits == hits + 1  # answered from the cache...
    assert again.content == first.content  # ...with the same body
    assert again.headers["content-type"] == "application/json"
    assert [s.get("node_id") for s in first.json()["sources"]] == ["edge-1", "edge-2", None]
    assert ctl.sources("tiny-a", area_id="near-2") == ["edge-2", "edge-1", None]
    # The same point given as x/y is the same route as its area.
    assert ctl.route("tiny-a", x_m=5, y_m=0).content == first.content
    # A heartbeat that changes nothing a route reads keeps the cache.
    ctl.heartbeat("edge-1", position=[0, 0], models=["tiny-a"])
    hits = ctl.cache.hits
    assert ctl.route("tiny-a", area_id="near-1").content == first.content
    assert ctl.cache.hits == hits + 1


def test_a_new_placement_and_new_holdings_invalidate(ctl: Controller) -> None:
    ctl.heartbeat("edge-1", position=[0, 0], models=[])
    assert ctl.sources("tiny-b", area_id="near-1") == [None]
    misses = ctl.cache.misses
    # Planning stores a new placement version (pushes to the unreachable edge fail).
    r = ctl.http.post("/v1/placement:plan")
    assert r.status_code == 200, r.text
    version = r.json()["version"]
    ctl.route("tiny-b", area_id="near-1")
    assert ctl.cache.misses == misses + 1  # re-read under the new placement
    assert ctl.http.get("/v1/status").json()["placement"]["version"] == version
    # The node reports the model it now holds: the next route names it.
    ctl.heartbeat("edge-1", position=[0, 0], models=["tiny-b"])
    assert ctl.sources("tiny-b", area_id="near-1") == ["edge-1", None]


def test_a_node_that_stops_heartbeating_leaves_the_route(
    make_controller: Any, ctl: Controller, redis_url: str
) -> None:
    ctl.heartbeat("edge-1", position=[0, 0], models=["tiny-a"])
    # edge-2's last heartbeat goes to a replica with a 1 s expiry; then it stops.
    short = make_controller(heartbeat_expiry_s=1.0)
    short.heartbeat("edge-2", position=[400, 0], models=["tiny-a"])
    # Another replica's write reaches this one's routes within STAMP_TRUST_S (announced).
    wait_until(
        lambda: ctl.sources("tiny-a", area_id="near-2") == ["edge-2", "edge-1", None],
        what="the other replica's heartbeat reaches the routes",
    )
    assert ctl.sources("tiny-a", area_id="near-2") == ["edge-2", "edge-1", None]  # cached
    client = redis.Redis.from_url(redis_url)
    try:
        wait_until(lambda: not client.exists(node_key("edge-2")), what="edge-2 expires")
    finally:
        client.close()
    # The first request after the expiry no longer names it.
    assert ctl.sources("tiny-a", area_id="near-2") == ["edge-1", None]


def test_a_catalogue_change_invalidates(ctl: Controller) -> None:
    ctl.heartbeat("edge-1", position=[0, 0], models=["tiny-a"])
    assert ctl.sources("tiny-a", area_id="near-1") == ["edge-1", None]
    assert ctl.http.delete("/v1/models/tiny-a").status_code == 200
    gone = ctl.route("tiny-a", area_id="near-1")
    assert gone.status_code == 404 and gone.headers["X-Error-Code"] == "model_not_found"
    r = ctl.http.post("/v1/models", json={"model_id": "tiny-a", "repo_id": "mini/tiny-a"})
    assert r.status_code == 201, r.text
    assert ctl.sources("tiny-a", area_id="near-1") == ["edge-1", None]


def test_a_thousand_registrations_are_listed_and_a_stopped_one_expires(
    make_controller: Any, redis_url: str
) -> None:
    ctl = make_controller(heartbeat_expiry_s=600.0)
    ids = [f"edge-{i:04d}" for i in range(1000)]
    for i, node_id in enumerate(ids):
        r = ctl.heartbeat(node_id, position=[float(i), 0.0], models=[])
        assert r.json()["registered"] is True
    status = ctl.http.get("/v1/status").json()
    assert [n["node_id"] for n in status["nodes"]] == ids
    # A second round of heartbeats registers nobody new.
    assert ctl.heartbeat(ids[0]).json()["registered"] is False
    # edge-0007's last heartbeat has a 1 s expiry (a replica's setting); then it stops.
    make_controller(heartbeat_expiry_s=1.0).heartbeat("edge-0007", position=[7.0, 0.0])
    client = redis.Redis.from_url(redis_url)
    try:
        wait_until(lambda: not client.exists(node_key("edge-0007")), what="edge-0007 expires")
    finally:
        client.close()
    listed = [n["node_id"] for n in ctl.http.get("/v1/status").json()["nodes"]]
    assert listed == [n for n in ids if n != "edge-0007"]
    assert len(ctl.http.get("/v1/nodes").json()["nodes"]) == 999


def test_cached_routes_need_no_redis_command_and_follow_other_replicas(
    make_controller: Any, ctl: Controller, redis_url: str
) -> None:
    ctl.heartbeat("edge-1", position=[0, 0], models=["tiny-a"])
    first = ctl.route("tiny-a", area_id="near-1").content
    client = redis.Redis.from_url(redis_url)

    def gets() -> int:
        return int(client.info("commandstats").get("cmdstat_get", {}).get("calls", 0))

    try:
        wait_until(lambda: ctl.cache.cached("tiny-a", area_id="near-1", point=None) is not None)
        before = gets()
        for _ in range(200):
            assert ctl.route("tiny-a", area_id="near-1").content == first
        # Only the listener's own reads (one per STAMP_CHECK_S), not one GET per request.
        assert gets() - before < 50
        # Another replica's write: this one follows (announced on ctl:routing:changed).
        other = make_controller()
        other.heartbeat("edge-1", position=[0, 0], models=[])
        wait_until(
            lambda: ctl.sources("tiny-a", area_id="near-1") == [None],
            what="the other replica's heartbeat reaches the routes",
        )
        # A write through this replica is seen by the very next request (read your writes).
        ctl.heartbeat("edge-1", position=[0, 0], models=["tiny-a"])
        assert ctl.sources("tiny-a", area_id="near-1") == ["edge-1", None]
        # With no listener (a lost subscription), the trust in its last read runs out after
        # STAMP_TRUST_S and requests read the stamp themselves: another replica's write is
        # still followed.
        task = ctl.cache._listener
        assert task is not None

        def cancelled() -> bool:
            task.get_loop().call_soon_threadsafe(task.cancel)
            return task.done()

        wait_until(cancelled)
        other.heartbeat("edge-1", position=[0, 0], models=[])
        wait_until(
            lambda: ctl.sources("tiny-a", area_id="near-1") == [None],
            what="routes follow without the listener",
        )
        assert ctl.cache.cached("tiny-a", area_id="near-1", point=None) is None
        assert STAMP_TRUST_S <= 1.0  # the documented bound (docs/api.md)
    finally:
        client.close()


def test_the_fast_path_answers_what_fastapi_would(ctl: Controller) -> None:
    """Cached answers come from controller.api.fast_routes before FastAPI; the same request
    made unusual (so FastAPI answers it) gives the same body, and bad input still gets
    FastAPI's errors."""
    ctl.heartbeat("edge-1", position=[0, 0], models=["tiny-a"])
    ctl.heartbeat("edge-2", position=[400, 0], models=["tiny-a"])
    slow = ctl.route("tiny-a", x_m=5, y_m=0)  # a miss: FastAPI's route builds it
    wait_until(lambda: ctl.cache.cached("tiny-a", area_id=None, point=(5.0, 0.0)) is not None)
    requests = ctl.app.state.metrics.requests.labels(route="/v1/routes/{model_id}", status="200")
    before = requests._value.get()
    fast = ctl.route("tiny-a", x_m=5, y_m=0)
    assert requests._value.get() == before + 1  # counted as the route's
    assert fast.content == slow.content
    assert fast.headers["content-type"] == slow.headers["content-type"] == "application/json"
    assert fast.headers["content-length"] == slow.headers["content-length"]
    # The area at that point, and a number FastAPI must parse (5.0e0): the same route.
    assert ctl.route("tiny-a", area_id="near-1").content == slow.content
    assert ctl.http.get("/v1/routes/tiny-a?x_m=5.0e0&y_m=-0").content == slow.content
    assert ctl.http.get("/v1/routes/tiny-a?x_m=+5&y_m=0&other=1").content == slow.content
    # Bad input is FastAPI's to refuse, cached or not.
    assert ctl.route("tiny-a", x_m=5).status_code == 400
    assert ctl.route("tiny-a", x_m="inf", y_m=0).status_code == 422
    assert ctl.route("tiny-a", x_m=5, y_m=1e9).status_code == 422
    assert ctl.route("tiny-a", area_id="a" * 201).status_code == 422
    assert ctl.http.get("/v1/routes/tiny-a?area_id=near-1&area_id=near-2").status_code == 200
    assert ctl.route("nope", x_m=5, y_m=0).status_code == 404
