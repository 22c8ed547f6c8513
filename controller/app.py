"""The controller's FastAPI app: ``create_app(settings)``.

The lifespan opens the one Redis client (:class:`controller.state.RedisState`), builds the
planner and, with ``auto_plan``, starts its background loop; with ``index_from_origin`` it starts
the :class:`~controller.indexer.OriginIndexer` (fills the catalogue from the origin, then plans).
Shutdown stops both and closes the client. Redis may be down at startup: requests then answer
503 ``state_unavailable`` and everything recovers when it returns. Errors follow docs/api.md: any
:class:`~core.errors.TrimCacheError` becomes ``{"error": {"code", "message"}}`` with an
``X-Error-Code`` header; anything else is a logged 500 ``internal``.
"""

from __future__ import annotations

import gc
import importlib.util
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from controller.api.fast_routes import RouteFastPath
from controller.api.routes import (
    demand,
    health,
    models,
    nodes,
    placement,
    replicas,
    routing,
    topology,
)
from controller.api.status_view import StatusView
from controller.dashboard import routes as dashboard
from controller.errors import StateUnavailableError
from controller.indexer import OriginIndexer
from controller.metrics import Metrics
from controller.planner import Planner, load_topology_file
from controller.route_cache import RouteCache
from controller.settings import Settings
from controller.state import RedisState
from core.asgi import RequestGuard, validation_error
from core.errors import TrimCacheError

logger = logging.getLogger(__name__)

#: How the controller's entry points run it (core.serving): the C HTTP parser on uvloop
#: (asyncio's loop where uvloop is not installed: it has no Windows build).
SERVER = {
    "http": "httptools",
    "loop": "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio",
}


def freeze_startup_objects() -> None:
    """Keep what startup built (modules, the app's routes, pydantic schemas: ~110,000
    objects) out of every later garbage collection: the entry points call it once the app is
    built. A full collection then walks the live data only (measured during a 1,000-node push
    round: 147 full collections of 45-377 ms, 22 s in all over 70 s, before; a fraction after;
    README scale rows)."""
    gc.collect()
    gc.freeze()


def create_app(settings: Settings, *, transport: httpx.BaseTransport | None = None) -> FastAPI:
    """Build the controller app. ``transport`` replaces the HTTP transport to edge nodes
    (tests only; production talks to real nodes)."""
    metrics = Metrics()
    file_topology = load_topology_file(settings.topology_file)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = RedisState(settings.redis_url, timeout_s=settings.redis_timeout_s)
        planner = Planner(
            state, settings, metrics=metrics, file_topology=file_topology, transport=transport
        )
        app.state.settings = settings
        app.state.redis_state = state
        app.state.planner = planner
        app.state.metrics = metrics
        route_cache = RouteCache(state, planner, settings.origin_url)
        app.state.route_cache = route_cache
        app.state.status_view = StatusView()
        route_cache.start()
        if settings.auto_plan:
            planner.start()
        indexer = None
        if settings.index_from_origin:
            indexer = OriginIndexer(
                state,
                metrics,
                planner,
                origin_url=settings.origin_url,
                manifest_cache_dir=settings.manifest_cache_dir,
            )
            app.state.origin_indexer = indexer
            indexer.start()
        try:
            yield
        finally:
            if indexer is not None:
                indexer.stop()
            await route_cache.aclose()
            planner.close()
            state.close()
            await state.aclose()

    app = ControllerApp(title="TrimCache controller", version="1", lifespan=lifespan)

    @app.exception_handler(TrimCacheError)
    async def _trimcache_error(_request: Request, exc: TrimCacheError) -> JSONResponse:
        if isinstance(exc, StateUnavailableError):
            metrics.state_errors.inc()
        return JSONResponse(
            {"error": {"code": exc.code, "message": str(exc)}},
            status_code=exc.status_code,
            headers={"X-Error-Code": exc.code},
        )

    app.add_exception_handler(RequestValidationError, validation_error)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        logger.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(
            {"error": {"code": "internal", "message": "internal server error"}},
            status_code=500,
            headers={"X-Error-Code": "internal"},
        )

    for module in (
        nodes,
        models,
        demand,
        topology,
        placement,
        routing,
        health,
        replicas,
        dashboard,
    ):
        app.include_router(module.router)
    app.add_middleware(
        RequestGuard, max_body_bytes=settings.max_body_bytes, read_timeout_s=settings.read_timeout_s
    )
    app.add_middleware(_CountRequests, metrics=metrics)
    app.fast_path = RouteFastPath(
        metrics=metrics, cache=lambda: getattr(app.state, "route_cache", None)
    )
    return app


class ControllerApp(FastAPI):
    """FastAPI with the route fast path asked first (:mod:`controller.api.fast_routes`):
    a cached route is answered before any middleware or routing runs."""

    fast_path: RouteFastPath | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fast = self.fast_path
        if fast is not None and await fast.answer(scope, send):
            return
        await super().__call__(scope, receive, send)


class _CountRequests:
    """Request count and latency per route template and status (a plain ASGI middleware:
    Starlette's ``BaseHTTPMiddleware`` costs more than a cached route answer)."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            # The router writes the matched route into the scope it was given.
            name = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route=name, status=str(status)).inc()
            self.metrics.request_seconds.labels(route=name).observe(time.perf_counter() - started)
