"""End to end on the process testbed: index, plan, fetch via the SDK and via huggingface_hub.

``trimcache testbed up`` starts Redis, the origin (serving the small test zoo), the controller and
two edge nodes as real processes; the test indexes the zoo, runs the placement, fetches
``bert-sst2`` with ``client.fetch_model`` as a user next to ``edge-1`` (it must come from an edge
node and predict "positive" for "I loved it"), downloads a snapshot from an edge node with an
unmodified ``huggingface_hub.snapshot_download``, checks every file is byte-identical to the zoo,
then ``testbed down`` must leave no process behind.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from core.digest import sha256_file
from tests.helpers import run_cli, start_testbed, still_running, wait_pushed


def _files(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every regular file under ``root`` (hidden ones skipped)."""
    return {
        str(p.relative_to(root)): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    }


@pytest.mark.slow
def test_fetch_and_snapshot_through_the_testbed(tmp_path: Path, zoo_dir: Path) -> None:
    import huggingface_hub

    from client import fetch_model

    state_dir = tmp_path / "testbed"
    state = start_testbed(state_dir, zoo_dir, edges=2, capacity_mb=512, timeout_s=180)
    pids: dict[str, int] = state["pids"]
    try:
        controller = state["controller_url"]
        auth = {"Authorization": f"Bearer {state['auth_token']}"}
        catalogue = json.loads((zoo_dir / "zoo.json").read_text())
        repo_of = {m["model_id"]: m["repo_id"] for m in catalogue["models"]}
        with httpx.Client(base_url=controller, headers=auth, timeout=600) as http:
            for model in catalogue["models"]:
                if model.get("synthetic"):
                    continue
                body = {"model_id": model["model_id"], "repo_id": model["repo_id"]}
                response = http.post("/v1/models", json={**body, "revision": "main"})
                # 200: the testbed's controller had already indexed it from the origin.
                assert response.status_code in (200, 201), response.text
            response = http.post("/v1/placement:plan")
            assert response.status_code == 200, response.text
            # The plan answers once its pushes are dispatched: wait until they ended.
            placement = wait_pushed(http, int(response.json()["version"]), timeout_s=600)
        assert placement["hit_ratio"] > 0, placement

        holders = [
            url
            for url in state["edge_urls"]
            if "bert-sst2"
            in {m["model_id"] for m in httpx.get(f"{url}/v1/models", timeout=30).json()["models"]}
        ]
        assert holders, f"no edge node holds bert-sst2 after the plan: {placement}"

        # The SDK, as a user next to edge-1.
        fetched = fetch_model(
            "bert-sst2",
            controller_url=controller,
            cache_dir=tmp_path / "device",
            area_id=state["edges"][0]["area_id"],
        )
        prediction = fetched.predict(["I loved it"])
        assert prediction[0]["label"] == "positive", prediction
        from_edges = sum(
            n for src, n in fetched.report["bytes_by_source"].items() if src in state["edge_urls"]
        )
        assert from_edges > 0, fetched.report["bytes_by_source"]
        zoo_repo = zoo_dir / "repos" / repo_of["bert-sst2"]
        expected = _files(zoo_repo)
        assert _files(Path(fetched.path)) == expected

        # An unmodified huggingface_hub, pointed at an edge node.
        snapshot = huggingface_hub.snapshot_download(
            repo_of["bert-sst2"], endpoint=holders[0], cache_dir=str(tmp_path / "hf-cache")
        )
        assert _files(Path(snapshot)) == expected
    finally:
        stopped = run_cli("testbed", "down", "--dir", str(state_dir))
    assert stopped.returncode == 0, stopped.stderr
    assert still_running(pids) == []
