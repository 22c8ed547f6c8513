"""raise_for_error's code table and route parsing (pure: no servers)."""

from __future__ import annotations

import httpx
import pytest

from client import (
    BlockNotFoundError,
    ClientError,
    EdgeUnavailableError,
    ModelNotFoundError,
    NoSourceError,
    raise_for_error,
)
from client._route import parse_route
from core.digest import sha256_bytes
from core.errors import TrimCacheError
from core.manifest import BlockRef, FileEntry, ModelManifest


def _response(status: int, code: str | None, message: str = "boom") -> httpx.Response:
    headers = {"X-Error-Code": code} if code else {}
    body = {"error": {"code": code or "x", "message": message}}
    request = httpx.Request("GET", "http://edge/v1/blocks/x")
    return httpx.Response(status, json=body, headers=headers, request=request)


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (404, "model_not_found", ModelNotFoundError),
        (404, "RepoNotFound", ModelNotFoundError),
        (404, "block_not_found", BlockNotFoundError),
        (503, "state_unavailable", EdgeUnavailableError),
        (500, None, EdgeUnavailableError),
        (400, "invalid_block_id", ClientError),
        (418, None, ClientError),
    ],
)
def test_raise_for_error_maps_codes(status, code, cls):
    with pytest.raises(cls) as info:
        raise_for_error(_response(status, code))
    err = info.value
    assert type(err) is cls
    assert isinstance(err, ClientError) and isinstance(err, TrimCacheError)
    assert err.exit_code == 1
    assert err.http_status == status and err.remote_code == code
    assert "boom" in str(err) and "http://edge/v1/blocks/x" in str(err)


def test_builtin_bases_and_success():
    assert issubclass(ModelNotFoundError, LookupError)
    assert issubclass(EdgeUnavailableError, ConnectionError)
    raise_for_error(_response(200, None))  # no error on success
    err = NoSourceError("m", {"b" * 64: [("http://a", "refused"), ("http://o", "500")]})
    assert "http://a (refused)" in str(err) and "http://o (500)" in str(err)


def test_route_puts_the_origin_last_for_every_block():
    data = b"{}"
    bid = sha256_bytes(data)
    manifest = ModelManifest(
        "m", "org/m", "main", (FileEntry("config.json", 2, bid, "file", (BlockRef(bid, 0, 2),)),)
    )
    sources = [
        {"url": "http://origin/", "kind": "origin"},
        {"url": "http://e1", "kind": "edge"},
    ]
    route = parse_route(
        {"manifest": manifest.to_dict(), "sources": sources, "blocks": {bid: [0, 1]}}
    )
    assert route.candidates(bid) == (1, 0)
    assert route.sources[0].url == "http://origin"
    with pytest.raises(ClientError, match="malformed"):
        parse_route({"manifest": manifest.to_dict(), "sources": sources, "blocks": {bid: [7]}})
