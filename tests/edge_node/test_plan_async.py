"""Plans apply in the background: ``PUT /v1/plan`` answers 202, ``GET /v1/plan`` follows it, and
a newer plan supersedes a running one cleanly (real edge, real origin throttled to be slow)."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import httpx

from core.wire import PlanAccepted, PlanStatus
from tests.edge_node.conftest import AUTH, plan_body
from tests.helpers import apply_plan, live_server, wait_until


def _status(url: str) -> PlanStatus:
    return PlanStatus.model_validate_json(httpx.get(f"{url}/v1/plan", timeout=10).content)


def _put(url: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.put(f"{url}/v1/plan", json=body, headers=AUTH, timeout=30)


def test_put_answers_202_and_the_plan_runs_to_applied(edge_factory, manifests, edge_zoo):
    from testbed.origin import create_app as create_origin

    clf_a = manifests["clf-a"]
    total = sum(clf_a.block_sizes().values())
    with live_server(create_origin(edge_zoo[0], rate_bytes_per_s=8e6)) as slow_origin:
        url, _ = edge_factory("edge-q", fetch_workers=1)
        r = _put(url, plan_body([clf_a], version=3, origin_url=slow_origin))
        assert r.status_code == 202, r.text
        accepted = PlanAccepted.model_validate_json(r.content)
        assert accepted.version == 3 and accepted.plan_id
        running = wait_until(
            lambda: (
                (s := _status(url)).state == "running" and 0 < s.progress.bytes_done < total and s
            ),
            timeout_s=60,
            interval_s=0.02,
            what="plan running with progress",
        )
        assert running.plan_id == accepted.plan_id and running.plan_version == 3
        assert running.progress.bytes_total == total and running.version is None

        def finished() -> PlanStatus | None:
            status = _status(url)
            return status if status.state in ("applied", "failed") else None

        done = wait_until(finished, timeout_s=120, what="plan finished")
    assert done.state == "applied", done.error
    assert done.plan_id == accepted.plan_id and done.version == 3
    assert done.progress.bytes_done == done.progress.bytes_total == total
    assert done.progress.blocks_done == done.progress.blocks_total == len(clf_a.block_sizes())
    assert done.fetched_bytes_by_source == {slow_origin: total}
    assert done.held_models == ["clf-a"] and done.error_code is None


def test_a_newer_plan_supersedes_a_running_one(
    edge_factory, manifests, edge_zoo, origin_url, tmp_path
):
    from testbed.origin import create_app as create_origin

    base, clf_a, clf_b = manifests["minilm-base"], manifests["clf-a"], manifests["clf-b"]
    with live_server(create_origin(edge_zoo[0], rate_bytes_per_s=4e6)) as slow_origin:
        url, _ = edge_factory("edge-s", fetch_workers=1)
        first = _put(url, plan_body([base, clf_a], version=4, origin_url=slow_origin))
        assert first.status_code == 202, first.text
        old_id = first.json()["plan_id"]
        wait_until(
            lambda: (s := _status(url)).state == "running" and s.progress.bytes_done > 0,
            timeout_s=60,
            interval_s=0.02,
            what="first plan transferring",
        )
        # Fencing also holds against the plan being applied: an older version is refused.
        stale = _put(url, plan_body([clf_b], version=3, origin_url=origin_url))
        assert stale.status_code == 409 and stale.headers["x-error-code"] == "stale_plan"
        newer = apply_plan(url, plan_body([clf_b], version=5, origin_url=origin_url), headers=AUTH)
    assert newer.applied, newer.status
    final = newer.result
    assert final["plan_id"] != old_id and final["version"] == 5
    # The newer plan's own progress: its transfer from the fast origin only.
    assert set(final["fetched_bytes_by_source"]) <= {origin_url}
    assert final["held_models"] == ["clf-b"]
    stats = httpx.get(f"{url}/v1/stats").json()
    assert stats["models"] == ["clf-b"]
    assert stats["physical_bytes"] == sum(clf_b.block_sizes().values())
    # Nothing half-written: no temp files, every stored block is whole and verifies.
    data_dir = tmp_path / "edge-s"
    assert os.listdir(data_dir / "tmp") == []
    for path in (data_dir / "blocks" / "sha256").rglob("*"):
        if path.is_file():
            assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name
    # The superseded version never counted as applied: a re-push of it is stale now.
    again = _put(url, plan_body([base, clf_a], version=4, origin_url=origin_url))
    assert again.status_code == 409 and again.headers["x-error-code"] == "stale_plan"
