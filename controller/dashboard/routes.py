"""The dashboard's routes: ``GET /dashboard`` (the page), ``GET /dashboard/assets/{name}`` and
``GET /v1/dashboard`` (everything the page shows, in one JSON document). All read-only, no token.

The page polls ``/v1/dashboard`` and loads nothing from any other host: its scripts and styles
are served here (Chart.js is copied from the npm registry's package by ``make setup``, see
``controller/dashboard/package.json``). Edge nodes' and the origin's ``/v1/stats`` are read by
the controller, not the browser. The router's lifespan runs :class:`PlanWatcher`, which records
a summary of every placement version into the plan log.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse

from controller.api.deps import PlannerDep, SettingsDep, StateDep
from controller.api.routes.health import demand_view
from controller.api.routes.placement import attempt_view, placement_view
from controller.dashboard.views import (
    fetch_source,
    hit_ratio_series,
    home_node,
    plan_summary,
    storage_view,
)
from controller.errors import ControllerError, StateUnavailableError
from controller.state import RedisState

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
# Every file the page may load, by the name it uses (nothing else is served).
ASSETS: Mapping[str, tuple[str, str]] = {
    "dashboard.js": ("dashboard.js", "text/javascript"),
    "dashboard.css": ("dashboard.css", "text/css"),
    "chart.umd.min.js": ("vendor/chart.umd.min.js", "text/javascript"),
}
PLAN_LOG_KEEP = 50
WATCH_INTERVAL_S = 2.0
STATS_TIMEOUT_S = 1.5


class AssetNotFoundError(ControllerError):
    code = "asset_not_found"
    status_code = 404


class PlanWatcher:
    """A daemon thread that stores :func:`plan_summary` of the current placement whenever its
    version or push status changes (so the plan log has versions nobody was watching)."""

    def __init__(self, state: RedisState, origin_url: str, *, interval_s: float) -> None:
        self.state = state
        self.origin_url = origin_url
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dashboard-plans", daemon=True)
        self._last: dict[str, Any] | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def poll(self) -> None:
        record = self.state.get_placement()
        if record is None or not record.get("version"):
            return
        summary = plan_summary(record, self.origin_url)
        if summary != self._last:
            self.state.put_plan_summary(int(record["version"]), summary, keep=PLAN_LOG_KEEP)
            self._last = summary

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except StateUnavailableError:
                pass  # Redis down: try again next round
            except Exception:  # never let the log thread die silently
                logger.exception("dashboard plan watcher")
            self._stop.wait(self.interval_s)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Runs inside the app's lifespan (``app.state.redis_state`` is set by then)."""
    watcher = PlanWatcher(
        app.state.redis_state, app.state.settings.origin_url, interval_s=WATCH_INTERVAL_S
    )
    watcher.start()
    try:
        yield
    finally:
        watcher.stop()


router = APIRouter(tags=["dashboard"], lifespan=lifespan)


@router.get("/dashboard", include_in_schema=False)
def dashboard_page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


@router.get("/dashboard/assets/{name}", include_in_schema=False)
def dashboard_asset(name: str) -> FileResponse:
    known = ASSETS.get(name)
    path = STATIC_DIR / known[0] if known else None
    if known is None or path is None or not path.is_file():
        hint = " (run `make setup`)" if name in ASSETS else ""
        raise AssetNotFoundError(f"no dashboard asset {name!r}{hint}")
    return FileResponse(path, media_type=known[1], headers={"Cache-Control": "no-cache"})


def _get_stats(http: httpx.Client, url: str) -> dict[str, Any]:
    try:
        response = http.get(f"{url.rstrip('/')}/v1/stats")
        response.raise_for_status()
        doc: dict[str, Any] = response.json()
        return doc
    except (httpx.HTTPError, ValueError) as exc:
        return {"unavailable": str(exc) or type(exc).__name__}


def _stats_of(urls: Sequence[str]) -> list[dict[str, Any]]:
    """``GET {url}/v1/stats`` of each URL in parallel (``{"unavailable": why}`` on failure)."""
    if not urls:
        return []
    with (
        httpx.Client(timeout=STATS_TIMEOUT_S) as http,
        ThreadPoolExecutor(max_workers=min(8, len(urls))) as pool,
    ):
        return list(pool.map(lambda u: _get_stats(http, u), urls))


@router.get("/v1/dashboard")
def dashboard_data(state: StateDep, planner: PlannerDep, settings: SettingsDep) -> dict[str, Any]:
    now = time.time()
    nodes = state.live_nodes()
    catalogue = planner.catalogue()
    view = planner.active_topology(nodes)
    topology = view.topology
    outcomes = state.outcomes()
    fetches = state.recent_fetches()
    placement = placement_view(state.get_placement(), settings.solver)
    placement.pop("problem", None)
    *edge_stats, origin_stats = _stats_of([n.url for n in nodes] + [settings.origin_url])

    storage = []
    for node, stats in zip(nodes, edge_stats, strict=True):
        entry = storage_view(node, catalogue)
        x, y = topology.positions.get(node.node_id, node.position)
        entry["position"] = [x, y]
        entry["planned_models"] = list(
            placement.get("servers", {}).get(node.node_id, {}).get("models", [])
        )
        entry["stats"] = stats
        storage.append(entry)

    homes: dict[str, str | None] = {}
    log = []
    for fetch in fetches:
        area = str(fetch.get("area_id", ""))
        if area not in homes:
            homes[area] = home_node(topology, nodes, area)
        log.append({**fetch, "source": fetch_source(fetch, homes[area])})
    ingested: dict[str, int] = {"from_peers": 0, "from_origin": 0}
    origin = settings.origin_url.rstrip("/")
    for stats in edge_stats:
        for url, nbytes in dict(stats.get("bytes_ingested_by_source", {})).items():
            ingested["from_origin" if url.rstrip("/") == origin else "from_peers"] += int(nbytes)
    channel = topology.channel
    return {
        "at": now,
        "nodes": storage,
        "models": [
            {"model_id": e.model_id, "total_bytes": e.total_bytes, "blocks": e.blocks}
            for e in sorted(catalogue.values(), key=lambda e: e.model_id)
        ],
        "topology": {
            "source": view.source,
            "version": view.version,
            "areas": [
                {"area_id": a, "x_m": area.x_m, "y_m": area.y_m, "weight": area.weight}
                for a, area in sorted(topology.areas.items())
            ],
            "coverage_m": channel.coverage_m,
            "neighbour_m": channel.neighbour_m,
        },
        "placement": placement,
        "last_plan": attempt_view(state.get_plan_attempt()),
        "plans": state.plan_summaries(),
        "demand": {**demand_view(outcomes), "series": hit_ratio_series(fetches, outcomes)},
        "fetches": log,
        "origin": {"url": settings.origin_url, "stats": origin_stats, "edge_ingest": ingested},
    }
