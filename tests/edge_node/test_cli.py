"""``trimcache edge serve`` as a real process: options and env reach the settings."""

from __future__ import annotations

import subprocess
import sys

import httpx

from tests.helpers import REPO_ROOT, apply_plan, free_port, run_cli, wait_until


def test_edge_serve_help():
    result = run_cli("edge", "serve", "--help")
    assert result.returncode == 0
    assert "--capacity-bytes" in result.stdout and "--origin-url" in result.stdout


def test_edge_serve_process(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "testbed.cli",
            "edge",
            "serve",
            "--node-id",
            "edge-cli",
            "--data-dir",
            str(tmp_path / "data"),
            "--port",
            str(port),
            "--capacity-bytes",
            "1000000",
        ],
        cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", "EDGE_AUTH_TOKEN": "t0k"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        health = wait_until(lambda: httpx.get(f"{url}/healthz").json(), timeout_s=30)
        assert health == {"status": "ok", "node_id": "edge-cli"}
        stats = httpx.get(f"{url}/v1/stats").json()
        assert stats["capacity_bytes"] == 1_000_000 and stats["physical_bytes"] == 0
        r = httpx.put(f"{url}/v1/plan", json={}, headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401 and r.headers["x-error-code"] == "unauthorized"
        outcome = apply_plan(
            url,
            {"schema": "trimcache.edge-plan/v1", "version": 1, "manifests": []},
            headers={"Authorization": "Bearer t0k"},
        )
        assert outcome.applied and outcome.result["held_models"] == []
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    assert (tmp_path / "data" / "blocks").is_dir()
