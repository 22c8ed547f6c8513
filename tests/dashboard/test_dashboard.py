"""The dashboard as a person sees it: the process testbed, the SDK, headless Chromium.

``trimcache testbed up`` (test profile, three edge nodes, a random controller port) starts every
service; the SDK fetches one model, Chromium opens ``/dashboard`` and the test waits for the
live data and reads the page: three edge nodes, each listing exactly the models that edge node's
own ``/v1/models`` lists, the measured hit ratio the controller reports, a non-empty fetch-time
chart. A second model fetched while the page is open must appear without a reload. The page
must load nothing from any host but the controller (every request Chromium's page target sent
is checked). A PNG screenshot is saved (``$DASHBOARD_SCREENSHOT`` names an extra copy,
how the README's figure is made).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.dashboard.browser import Browser, chromium_binary
from tests.helpers import run_cli, still_running

NODE_MODELS_JS = """JSON.stringify(Object.fromEntries([...document.querySelectorAll('.edge-node')]
  .map(n => [n.dataset.nodeId,
    [...n.querySelectorAll('.model[data-model-id]')].map(m => m.dataset.modelId).sort()])))"""
# Pixels of the fetch-time chart's canvas that are not blank (Chart.js drew something).
INKED_JS = """(() => { const c = document.querySelector('#fetch-time-chart');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
  for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; })()"""


def _held(edge_url: str) -> list[str]:
    models = httpx.get(f"{edge_url}/v1/models", timeout=30).json()["models"]
    return sorted(m["model_id"] for m in models)


def _text(browser: Browser, selector: str) -> str:
    return str(browser.evaluate(f"document.querySelector({json.dumps(selector)}).textContent"))


@pytest.mark.slow
def test_dashboard_in_headless_chromium(tmp_path: Path, zoo_dir: Path) -> None:
    if chromium_binary() is None:
        pytest.skip("Debian's chromium is not installed (make setup installs it as root)")
    from client import fetch_model

    state_dir = tmp_path / "testbed"
    result = run_cli(
        "testbed", "up", "--dir", str(state_dir), "--edges", "3", "--zoo", str(zoo_dir),
        "--profile", "test", "--timeout-s", "180", "--controller-port", "0",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    state: dict[str, Any] = json.loads((state_dir / "testbed.json").read_text())
    controller = state["controller_url"]
    assert f"dashboard   {controller}/dashboard" in result.stdout.splitlines()
    node_of_url = {e["url"]: e["node_id"] for e in state["edges"]}
    browser: Browser | None = None
    try:

        def fetch(model_id: str, edge: int) -> dict[str, Any]:
            fetched = fetch_model(
                model_id,
                controller_url=controller,
                cache_dir=tmp_path / f"device-{edge}",
                area_id=state["edges"][edge]["area_id"],
                auth_token=state["auth_token"],
                load=False,
            )
            report: dict[str, Any] = fetched.report
            return report

        first = fetch("bert-sst2", 0)

        browser = Browser(tmp_path / "chromium-profile")
        browser.navigate(f"{controller}/dashboard")
        browser.wait_for("document.querySelectorAll('.edge-node').length === 3")
        browser.wait_for("Number(document.querySelector('#fetch-time').dataset.points) === 1")
        assert browser.evaluate("document.querySelectorAll('#map .map-node').length") == 3

        # A second model fetched while the page is open shows up by itself.
        second = fetch("bert-spam", 1)
        browser.wait_for("Number(document.querySelector('#fetch-time').dataset.points) === 2")
        browser.wait_for(
            "[...document.querySelectorAll('#fetches td')]"
            ".some(td => td.textContent === 'bert-spam')"
        )
        browser.pump(2.5)  # one more poll: the edge nodes' reports are current

        # Each node lists exactly what that edge node says it holds (its own HTTP API).
        on_page = json.loads(browser.evaluate(NODE_MODELS_JS))
        truth = {e["node_id"]: _held(e["url"]) for e in state["edges"]}
        assert on_page == truth
        for report in (first, second):
            model_id = report["model_id"]
            served = {
                node_of_url[u]
                for u, n in report["bytes_by_source"].items()
                if n and u in node_of_url
            }
            assert any(model_id in truth[n] for n in served), (model_id, served, truth)

        # The measured hit ratio is the controller's, as a percentage.
        demand = httpx.get(f"{controller}/v1/status", timeout=30).json()["demand"]
        assert demand["requests"] == 2
        assert _text(browser, "#measured-hit-ratio") == f"{100 * demand['hit_ratio']:.1f} %"
        assert _text(browser, "#version") == str(
            httpx.get(f"{controller}/v1/placement", timeout=30).json()["version"]
        )
        assert browser.evaluate(INKED_JS) > 1000

        png = browser.screenshot(tmp_path / "dashboard.png")
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000
        if target := os.environ.get("DASHBOARD_SCREENSHOT"):
            shutil.copyfile(tmp_path / "dashboard.png", target)

        # Every request the page sent went to the controller, and it polled more than once.
        host = urlsplit(controller).netloc
        foreign = [
            u
            for u in browser.requests
            if urlsplit(u).scheme != "data" and urlsplit(u).netloc != host
        ]
        assert foreign == []
        polls = [u for u in browser.requests if urlsplit(u).path == "/v1/dashboard"]
        assert len(polls) >= 2, browser.requests
        assert f"{controller}/dashboard/assets/chart.umd.min.js" in browser.requests
    finally:
        if browser is not None:
            browser.close()
        stopped = run_cli("testbed", "down", "--dir", str(state_dir))
    assert stopped.returncode == 0, stopped.stderr
    assert still_running(state["pids"]) == []
