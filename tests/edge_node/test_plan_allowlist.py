"""A plan may name only allowed hosts, and no fetch follows a redirect (issue 13 item 9).

Each test runs a real edge node, the real origin, and a second listener that only counts the
requests reaching it: nothing a plan does may reach it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import httpx

from tests.edge_node.conftest import AUTH, plan_body
from tests.helpers import PlanOutcome, apply_plan, live_server


class Counter:
    """A raw ASGI listener that answers 200 and counts every request it gets."""

    def __init__(self) -> None:
        self.requests = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.requests += 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"\x00" * 1024})


def redirect_to(target: str) -> Any:
    """A raw ASGI listener that answers every request with a 302 to ``target`` (same path)."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        location = f"{target}{scope['path']}".encode()
        headers = [(b"location", location), (b"content-length", b"0")]
        await send({"type": "http.response.start", "status": 302, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    return app


def _hostport(url: str) -> str:
    return urlsplit(url).netloc


def _put(url: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.put(f"{url}/v1/plan", json=body, headers=AUTH, timeout=120)


def _apply(url: str, body: dict[str, Any]) -> PlanOutcome:
    return apply_plan(url, body, headers=AUTH)


def test_a_plan_naming_an_unlisted_host_is_refused(edge_factory, manifests, origin_url):
    counter = Counter()
    with live_server(counter) as stranger:
        url, app = edge_factory("edge-a", origin_url=origin_url, allowed_hosts="")
        clf_a = manifests["clf-a"]
        r = _put(url, plan_body([clf_a], origin_url=stranger))
        assert r.status_code == 400, r.text
        assert r.headers["x-error-code"] == "host_not_allowed"
        assert _hostport(stranger) in r.json()["error"]["message"]
        peers = {b: [stranger] for b in clf_a.block_sizes()}
        r = _put(url, plan_body([clf_a], origin_url=origin_url, peers=peers))
        assert r.status_code == 400, r.text
        assert r.headers["x-error-code"] == "host_not_allowed"
        assert counter.requests == 0
        # Nothing applied, nothing kept for repairs.
        assert httpx.get(f"{url}/v1/models").json()["models"] == []
        assert app.state.node.plan_record.origin_url is None
        assert app.state.node.plan_record.peers == {}
        # The configured origin is allowed without being listed.
        assert _apply(url, plan_body([clf_a], origin_url=origin_url)).applied
        assert counter.requests == 0


def test_an_allowed_host_redirecting_elsewhere_is_not_followed(edge_factory, manifests):
    counter = Counter()
    with live_server(counter) as stranger, live_server(redirect_to(stranger)) as redirector:
        url, _ = edge_factory("edge-b", allowed_hosts=_hostport(redirector))
        clf_a = manifests["clf-a"]
        peers = {b: [redirector] for b in clf_a.block_sizes()}
        r = _apply(url, plan_body([clf_a], origin_url=redirector, peers=peers))
        assert r.state == "failed" and r.status is not None, r.status
        assert r.status["error_code"] == "upstream_unavailable"
        assert counter.requests == 0
        assert httpx.get(f"{url}/v1/plan").json()["status"] == "failed"
