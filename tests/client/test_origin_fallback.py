"""Issue #13 item 11 (client half): with the controller down, a new client fetches from the origin.

Real processes: a private redis-server and the controller (``trimcache controller serve``), the
stack's real origin. Redis stopped: the controller answers 503; controller stopped: nothing
answers. Either way a client with a fallback origin gets byte-identical files from the origin,
and one without it still gets the clean ``ControllerUnavailableError``.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from client import ControllerUnavailableError, FetchedModel, fetch_model
from tests.client.services import ORG, TOKEN, Stack, assert_zoo_files
from tests.controller.procs import controller_process
from tests.controller.redis_proc import RedisProcess
from tests.helpers import wait_until

MODEL = "bert-sst2"
REPO = f"{ORG}/{MODEL}"


def _fetch(controller: str, cache: Path, origin: str | None) -> FetchedModel:
    return fetch_model(
        MODEL,
        controller_url=controller,
        fallback_origin_url=origin,
        repo_id=REPO,
        cache_dir=cache,
        load=False,
    )


def _assert_from_origin(model: FetchedModel, stack: Stack) -> None:
    report = model.report
    assert report["fallback_origin"] == stack.origin
    manifest = stack.manifest(MODEL)
    assert report["bytes_by_kind"] == {"local": 0, "edge": 0, "origin": manifest.total_bytes}
    assert_zoo_files(model.path, stack.zoo / "repos" / ORG / MODEL)


def test_controller_down_falls_back_to_the_origin(stack: Stack, tmp_path: Path) -> None:
    with RedisProcess(tmp_path / "redis", appendonly=False) as redis_proc:
        controller = controller_process(
            tmp_path,
            redis_url=redis_proc.url,
            origin_url=stack.origin,
            auto_plan="false",
            auth_token=TOKEN,
        ).start()
        try:
            redis_proc.stop()  # the controller is up but its state is gone: 503
            wait_until(lambda: httpx.get(f"{controller.url}/v1/routes/{MODEL}").status_code == 503)
            _assert_from_origin(_fetch(controller.url, tmp_path / "a", stack.origin), stack)
            with pytest.raises(ControllerUnavailableError, match="failed"):
                _fetch(controller.url, tmp_path / "no-fallback", None)
        finally:
            controller.stop()
    # Nothing listens on the controller's port any more.
    _assert_from_origin(_fetch(controller.url, tmp_path / "b", stack.origin), stack)
    with pytest.raises(ControllerUnavailableError, match="unreachable"):
        _fetch(controller.url, tmp_path / "no-fallback", None)
