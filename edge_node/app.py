"""``create_app(settings)``: the edge node's FastAPI app.

The lifespan opens the node (block store, index rebuild, temp sweep), starts the background
scrub, the repair worker, the plan worker (:mod:`edge_node.plans`) and (with
``controller_url``) the heartbeat, and keeps everything on ``app.state``: ``settings``,
``node``, ``plan_progress``, ``plan_worker``, ``http_client``, ``pull`` (Hub requests for what
the node lacks), ``ondemand`` (the cache policy with ``EDGE_CACHE_POLICY``, else None),
``agent`` (the decentralised agent with ``EDGE_AGENT_CHECKPOINT``, else None),
``metrics_registry``.

Errors: every ``TrimCacheError`` (the ``EdgeError`` tree and core's errors) becomes
``{"error": {"code", "message"}}`` with ``X-Error-Code``; anything else is a 500 ``internal``
with the traceback logged, never sent.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.asgi import RequestGuard, header_text, validation_error
from core.errors import TrimCacheError
from edge_node import fastbatch
from edge_node.agent import EdgeAgent, load_policy
from edge_node.api.routes import agent as agent_routes
from edge_node.api.routes import blocks, health, hf, models, plan, stats
from edge_node.catalogue import Catalogue
from edge_node.errors import RangeNotSatisfiableError, error_header_code
from edge_node.heartbeat import Heartbeat
from edge_node.ingest import repair_fetcher
from edge_node.link import LinkCounters, LinkEmulationMiddleware, make_bucket
from edge_node.metrics import Counters, make_registry
from edge_node.node import EdgeNode
from edge_node.ondemand import OnDemandCache
from edge_node.plans import PlanProgress, PlanWorker
from edge_node.pull import PullThrough
from edge_node.radio import RadioCollector, RadioMiddleware, make_radio
from edge_node.settings import Settings
from edge_node.zerocopy import zerocopy_send, zerocopy_status

logger = logging.getLogger(__name__)

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


class _RequestCounter:
    """Counts every HTTP request and the error responses (status >= 400)."""

    def __init__(self, app: ASGIApp, *, counters: Counters) -> None:
        self.app = app
        self.counters = counters

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.counters.add_request(status_code=status[0])


# Request bodies are bounded (413 before anything parses them); a plan carries the manifest of
# every planned model, hence more room than the controller's 2 MiB.
MAX_BODY_BYTES = 32 * 1024 * 1024


def _error_response(code: str, message: str, status: int, header_code: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}},
        status_code=status,
        headers={"X-Error-Code": header_code, "X-Error-Message": header_text(message, limit=200)},
    )


class EdgeApp(FastAPI):
    """FastAPI with the zero-copy send extension added where the server allows it.

    It must happen here, at the outermost layer, where ``send`` is still the server's own; so
    does the batch route's fast path (:mod:`edge_node.fastbatch`), which bypasses FastAPI.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope, send = zerocopy_send(scope, send)
        if scope.get("path") == fastbatch.PATH:  # the common case without FastAPI's machinery
            await fastbatch.serve_batch(self.state, scope, receive, send, super().__call__)
            return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings) -> FastAPI:
    """Build the edge node app for ``settings`` (nothing touches disk until the lifespan)."""
    counters = Counters()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        node = EdgeNode(settings, counters=counters)
        client = httpx.Client(
            timeout=httpx.Timeout(settings.fetch_timeout_s, connect=5.0),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
            # Never follow a redirect: a plan's allowed host could send us anywhere else.
            follow_redirects=False,
        )
        node.repair_fetch = repair_fetcher(node, client)
        catalogue = Catalogue(settings, client)
        pull = PullThrough(node, client, catalogue)
        progress = PlanProgress(version=node.plan_record.version)
        worker = PlanWorker(node, client, progress)
        # Decentralised mode: a bad checkpoint stops the start here (edge_node.agent).
        agent = (
            EdgeAgent(
                node,
                load_policy(settings.agent_checkpoint, settings.node_id),
                catalogue=catalogue,
                worker=worker,
                client=client,
            )
            if settings.agent_checkpoint is not None
            else None
        )
        app.state.agent = agent
        app.state.settings = settings
        app.state.node = node
        app.state.http_client = client
        app.state.plan_progress = progress
        app.state.plan_worker = worker
        app.state.pull = pull
        app.state.ondemand = (
            OnDemandCache(node, settings.cache_policy) if settings.cache_policy else None
        )
        app.state.metrics_registry = make_registry(node.stats)
        if radio is not None:
            node.extra_stats["radio"] = radio.snapshot
            app.state.metrics_registry.register(RadioCollector(radio, node.node_id))
        node.start()
        worker.start()
        heartbeat = Heartbeat(node, client) if settings.controller_url else None
        if heartbeat is not None and radio is not None and radio.window_s > 0:
            node.broadcast_report = radio.live_groups  # routing sees the live groups
            radio.on_group = heartbeat.poke
        if heartbeat is not None:
            if agent is not None:  # before the first beat: the controller must never plan it
                heartbeat.policy = lambda: agent.policy_name
                agent.on_change = heartbeat.poke
            heartbeat.start()
            if app.state.ondemand is not None:
                app.state.ondemand.on_change = heartbeat.poke
        app.state.heartbeat = heartbeat
        if agent is not None:
            agent.start()
        zerocopy_on, zerocopy_why = zerocopy_status()
        logger.info("zero-copy sendfile %s: %s", "active" if zerocopy_on else "off", zerocopy_why)
        if not settings.auth_token:
            logger.warning("EDGE_AUTH_TOKEN is not set: plans and deletes will be refused (401)")
        logger.info(
            "edge node node_id=%s data_dir=%s blocks=%d physical_bytes=%d models=%d",
            node.node_id,
            settings.data_dir,
            len(node.store),
            node.store.used_bytes,
            len(node.manifests()),
        )
        try:
            yield
        finally:
            if agent is not None:
                agent.stop()
            if heartbeat is not None:
                heartbeat.stop()
            worker.stop()
            pull.close()
            node.stop()
            client.close()
            if radio is not None:
                await radio.close()

    app = EdgeApp(title=f"TrimCache edge node {settings.node_id}", lifespan=lifespan)
    app.state.settings = settings
    app.state.counters = counters
    app.state.agent = None

    @app.exception_handler(TrimCacheError)
    async def _trimcache_error(request: Request, exc: TrimCacheError) -> JSONResponse:
        counters.add_error_code(exc.code)
        if exc.status_code >= 500:
            logger.warning("%s %s -> %s: %s", request.method, request.url.path, exc.code, exc)
        response = _error_response(exc.code, str(exc), exc.status_code, error_header_code(exc))
        if isinstance(exc, RangeNotSatisfiableError):
            response.headers["Content-Range"] = f"bytes */{exc.size_bytes}"
        return response

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        counters.add_error_code(code)
        response = _error_response(code, str(exc.detail), exc.status_code, code)
        for key, value in (exc.headers or {}).items():
            response.headers[key] = value
        return response

    app.add_exception_handler(RequestValidationError, validation_error)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        counters.add_error_code("internal")
        logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error_response("internal", "internal server error", 500, "internal")

    for router in (
        health.router,
        stats.router,
        blocks.router,
        models.router,
        plan.router,
        agent_routes.router,
        hf.router,
    ):
        app.include_router(router)
    #: The node's radio link, shared by all its responses (None: rate not emulated).
    app.state.link_bucket = link_bucket = make_bucket(settings.link_rate_bytes_per_s)
    app.state.link_counters = link_counters = LinkCounters()
    #: The emulated CoMP downlink (EDGE_WORLD_FILE); it replaces the byte-rate link.
    app.state.radio = radio = make_radio(settings, lambda: getattr(app.state, "node", None))
    if radio is not None:
        app.add_middleware(RadioMiddleware, radio=radio)
    elif settings.link_latency_ms > 0 or link_bucket is not None:
        app.add_middleware(
            LinkEmulationMiddleware,
            latency_ms=settings.link_latency_ms,
            bucket=link_bucket,
            counters=link_counters,
        )
    app.add_middleware(RequestGuard, max_body_bytes=MAX_BODY_BYTES)
    app.add_middleware(_RequestCounter, counters=counters)
    return app
