"""Ready on arrival: after `trimcache testbed up`, with no other step, the SDK's defaults work.

The one test here that may take port 8080 (the SDK's default controller URL): every other test
starts its testbed with ``--controller-port 0``. It uses the test-profile zoo from the shared
zoo cache (the full profile takes ~7 min to build on 2 shared cores, too long for the suite);
its own XDG cache home holds the "last testbed" pointer, so the user's is left alone.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from testbed.zoo import load_zoo
from tests.helpers import run_cli

DEFAULT_URL = "http://127.0.0.1:8080"


@pytest.mark.slow
def test_up_then_fetch_model_with_the_default_controller_url(
    tmp_path: Path, zoo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from client import fetch_model

    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg"), "TRIMCACHE_ZOO_CACHE": str(zoo_dir.parent)}
    state_dir = tmp_path / "tb"
    started = time.monotonic()
    up = run_cli(
        "testbed", "up", "--dir", str(state_dir), "--profile", "test", "--edges", "2",
        env=env, timeout_s=900,
    )  # fmt: skip
    up_seconds = time.monotonic() - started
    assert up.returncode == 0, up.stderr[-3000:]
    try:
        # The zoo came from the shared cache, already built: nothing was trained.
        assert f"model zoo (test profile): {zoo_dir}" in up.stderr
        assert "building" not in up.stderr
        assert "ready in" in up.stderr
        exports = re.findall(r"^export TRIMCACHE_CONTROLLER_URL=(\S+)$", up.stdout, re.M)
        state = json.loads((state_dir / "testbed.json").read_text())
        assert exports == [state["controller_url"]]
        if exports[0] != DEFAULT_URL:
            # 8080 was taken: `up` said so, and the documented export line points at the
            # controller.
            assert "port 8080 is taken" in up.stderr
            monkeypatch.setenv("TRIMCACHE_CONTROLLER_URL", exports[0])
        # The second export line carries the testbed's token: the SDK's demand reports need it.
        tokens = re.findall(r"^export TRIMCACHE_AUTH_TOKEN=(\S+)$", up.stdout, re.M)
        assert tokens == [state["auth_token"]]
        monkeypatch.setenv("TRIMCACHE_AUTH_TOKEN", tokens[0])

        fetched = fetch_model("bert-sst2", cache_dir=tmp_path / "device")
        assert fetched.predict(["I loved it"])[0]["label"] == "positive"
        from_edges = sum(
            n for src, n in fetched.report["bytes_by_source"].items() if src in state["edge_urls"]
        )
        assert from_edges > 0, fetched.report["bytes_by_source"]

        # The CLI finds the testbed with no flag (the "last testbed" pointer).
        listed = run_cli("models", "ls", env=env)
        assert listed.returncode == 0, listed.stderr
        repos = {m["repo_id"] for m in load_zoo(zoo_dir)["models"]}
        shown = set(re.findall(r"trimcache-zoo/\S+", listed.stdout))
        assert shown == repos

        status = run_cli("testbed", "status", "--json", env=env)
        assert status.returncode == 0, status.stdout + status.stderr
        view = json.loads(status.stdout)
        assert {m["repo_id"] for m in view["models"]} == repos
        placement = view["placement"]
        assert placement["version"] >= 1
        assert {p["status"] for p in placement["push"].values()} == {"applied"}
        held = set().union(*(set(s["models"]) for s in view["edges"].values()))
        assert "bert-sst2" in held
        assert view["demand"]["requests"] >= 1 and view["demand"]["hit"] >= 1
        text = run_cli("testbed", "status", env=env)
        assert "hit ratio   1.000 measured over 1 client fetch" in text.stdout, text.stdout
    finally:
        down = run_cli("testbed", "down", env=env)
    assert down.returncode == 0, down.stderr
    assert not (state_dir / "testbed.json").exists()
    assert (tmp_path / "xdg" / "trimcache-testbed").is_dir()  # where the pointer lived
    assert not (tmp_path / "xdg" / "trimcache-testbed" / "last").exists()
    # Measured, not asserted (a wall-clock bound would fail on a loaded machine).
    print(f"testbed up with the zoo built: {up_seconds:.1f} s")  # noqa: T201
