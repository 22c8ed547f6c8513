"""The batch route's fast path (edge_node.fastbatch) answers exactly as the FastAPI route does.

A body with a key the route ignores takes the route; the same batch without it takes the fast
path: the two answers match byte for byte. Untrusted and corrupt blocks still get the route's
checks (re-hash before any byte; 404 for a corrupt block), and bad input its errors.
"""

from __future__ import annotations

import hashlib
import os

import httpx
import pytest

from core.manifest import ModelManifest
from tests.edge_node.conftest import AUTH, edge_nodes, plan_body
from tests.helpers import apply_plan


@pytest.fixture(scope="module")
def node(tmp_path_factory, manifests, origin_url):
    with edge_nodes(tmp_path_factory.mktemp("fastbatch")) as make:
        url, app = make("edge-f")
        r = apply_plan(url, plan_body([manifests["clf-a"]], origin_url=origin_url), headers=AUTH)
        assert r.applied, r.status
        yield url, app


def _ids(manifest: ModelManifest) -> list[str]:
    return list(manifest.block_sizes())


def _requests(url: str) -> int:
    n: int = httpx.get(f"{url}/v1/stats").json()["requests"]
    return n


def test_fast_path_and_route_give_the_same_answer(node, manifests):
    url, _ = node
    ids = _ids(manifests["clf-a"])
    before = _requests(url)
    fast = httpx.post(f"{url}/v1/blocks:batch", json={"block_ids": ids}, timeout=60)
    routed = httpx.post(f"{url}/v1/blocks:batch", json={"block_ids": ids, "x": 1}, timeout=60)
    assert fast.status_code == routed.status_code == 200
    assert fast.content == routed.content
    for name in ("content-length", "content-type"):
        assert fast.headers[name] == routed.headers[name]
    sizes = manifests["clf-a"].block_sizes()
    offset = 0
    for block_id in ids:
        part = fast.content[offset : offset + sizes[block_id]]
        assert hashlib.sha256(part).hexdigest() == block_id
        offset += sizes[block_id]
    assert offset == len(fast.content)
    assert _requests(url) - before == 3  # both counted (and this stats call)


def test_untrusted_and_corrupt_blocks_get_the_routes_checks(node, manifests):
    url, app = node
    store = app.state.node.store
    ids = _ids(manifests["clf-a"])
    largest = max(ids, key=lambda b: manifests["clf-a"].block_sizes()[b])
    # Touched (signature changed, bytes not): re-hashed, found good, served.
    os.utime(store.path(largest))
    r = httpx.post(f"{url}/v1/blocks:batch", json={"block_ids": [largest]}, timeout=60)
    assert r.status_code == 200
    assert hashlib.sha256(r.content).hexdigest() == largest
    assert app.state.node.is_trusted(largest)
    # Changed: 404 before any byte, quarantined.
    small = min(ids, key=lambda b: manifests["clf-a"].block_sizes()[b])
    with store.path(small).open("r+b") as fh:
        first = fh.read(1)
        fh.seek(0)
        fh.write(bytes([first[0] ^ 0xFF]))
    r = httpx.post(f"{url}/v1/blocks:batch", json={"block_ids": [largest, small]}, timeout=60)
    assert r.status_code == 404 and r.headers["x-error-code"] == "block_not_found"
    assert httpx.get(f"{url}/v1/stats").json()["corrupt_blocks"] == 1  # quarantined (repaired)


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        (b'{"block_ids": ["../x"]}', {}, 400, "invalid_block_id"),
        (b'{"block_ids": "nope"}', {}, 422, None),
        (b'{"block_ids": [', {}, 422, None),
        (b'{"block_ids": []}', {}, 200, None),
        (b'{"block_ids": ["' + b"0" * 64 + b'"], "model_id": 7}', {}, 422, None),
        (b"x" * (33 << 20), {}, 413, "payload_too_large"),
    ],
)
def test_bad_batches_get_the_routes_errors(node, body, headers, status, code):
    url, _ = node
    headers = {"content-type": "application/json", **headers}
    r = httpx.post(f"{url}/v1/blocks:batch", content=body, headers=headers, timeout=60)
    assert r.status_code == status, r.text
    if code is not None:
        assert r.headers["x-error-code"] == code
