"""``GET /v1/routes/{model_id}`` answered from the route cache before FastAPI (plain ASGI).

A cached route body (:meth:`controller.route_cache.RouteCache.cached`: no Redis command) costs a
few microseconds; FastAPI's routing, dependency solving and parameter validation cost several
times that, and were most of a route request's time. :class:`RouteFastPath` is asked first, by
the app's own ``__call__`` (``controller.app.ControllerApp``), before any middleware, and
answers a request itself only when all of these hold, so its answer is byte for byte the one
the FastAPI route (:mod:`controller.api.routes.routing`) would give:

- ``GET``, the path is ``/v1/routes/{model_id}`` with a 1-128 character id and no further ``/``;
- the query has at most one each of ``area_id`` (at most ``MAX_ID_CHARS`` characters), ``x_m``
  and ``y_m`` (both or neither, plain decimal numbers within ``MAX_COORD_M``); other parameters
  are ignored, as FastAPI ignores them; nothing percent-encoded in a parameter name;
- the cache holds the body for that (model, point) under a stamp it may trust now.

Anything else (a miss, an error, anything unusual in the query) goes to FastAPI unchanged. The
fast answers are counted in the same metrics as the route's (``controller_routes``,
``controller_http_requests{route="/v1/routes/{model_id}"}`` and its latency).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from urllib.parse import unquote_plus

from starlette.types import Scope, Send

from controller.metrics import Metrics
from controller.route_cache import RouteCache
from controller.topology import MAX_COORD_M, MAX_ID_CHARS

PREFIX = "/v1/routes/"
TEMPLATE = "/v1/routes/{model_id}"
MAX_MODEL_ID = 128
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?")
_HEADERS = b"application/json"


def _coord(text: str) -> float | None:
    if not _NUMBER.fullmatch(text):
        return None
    value = float(text)
    return value if -MAX_COORD_M <= value <= MAX_COORD_M else None


def parse_query(query: bytes) -> tuple[str | None, tuple[float, float] | None] | None:
    """``(area_id, point)`` of a route query, or None when FastAPI must answer it."""
    if not query:
        return None, None
    try:
        text = query.decode("ascii")
    except UnicodeDecodeError:
        return None
    found: dict[str, str] = {}
    for pair in text.split("&"):
        if not pair:
            continue
        name, _, value = pair.partition("=")
        if "%" in name or "+" in name:
            return None
        if name not in ("area_id", "x_m", "y_m"):
            continue
        if name in found:
            return None
        found[name] = unquote_plus(value) if "%" in value or "+" in value else value
    area_id = found.get("area_id")
    if area_id is not None and len(area_id) > MAX_ID_CHARS:
        return None
    x_text, y_text = found.get("x_m"), found.get("y_m")
    if x_text is None and y_text is None:
        return area_id, None
    if x_text is None or y_text is None:
        return None
    x_m, y_m = _coord(x_text), _coord(y_text)
    if x_m is None or y_m is None:
        return None
    return area_id, (x_m, y_m)


class RouteFastPath:
    """Answers cached route requests before the app (module docstring)."""

    def __init__(self, *, metrics: Metrics, cache: Callable[[], RouteCache | None]) -> None:
        self.cache = cache
        self._routes = metrics.routes
        self._requests = metrics.requests.labels(route=TEMPLATE, status="200")
        self._seconds = metrics.request_seconds.labels(route=TEMPLATE)

    async def answer(self, scope: Scope, send: Send) -> bool:
        """Send the cached answer of this request if there is one; False: the app answers."""
        if scope["type"] != "http" or scope["method"] != "GET":
            return False
        path: str = scope["path"]
        if not path.startswith(PREFIX):
            return False
        started = time.perf_counter()
        body = self._cached(path[len(PREFIX) :], scope["query_string"])
        if body is None:
            return False
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-length", str(len(body)).encode()),
                    (b"content-type", _HEADERS),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
        self._routes.inc()
        self._requests.inc()
        self._seconds.observe(time.perf_counter() - started)
        return True

    def _cached(self, model_id: str, query: bytes) -> bytes | None:
        if not model_id or len(model_id) > MAX_MODEL_ID or "/" in model_id:
            return None
        cache = self.cache()
        parsed = parse_query(query)
        if cache is None or parsed is None:
            return None
        area_id, point = parsed
        return cache.cached(model_id, area_id=area_id, point=point)
