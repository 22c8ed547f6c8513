"""Fixtures of the client tests: the ``stack`` of real services (origin, controller on the real
Redis, two edge nodes holding pushed plans), started once for the whole tests/client package.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from tests.client.services import (
    AUTH,
    MODELS,
    TOKEN,
    Stack,
    edge_node,
    push_plan,
    route_sources,
)
from tests.client.services import ORG as STACK_ORG
from tests.helpers import live_server, wait_until


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="package")
def stack(
    zoo_dir: Path, redis_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """Origin, controller (real Redis, no auto-plan) and two edge nodes holding pushed plans."""
    import redis

    from controller.app import create_app as create_controller
    from controller.settings import Settings
    from testbed.origin import create_app as create_origin

    tmp = tmp_path_factory.mktemp("client-stack")
    with ExitStack() as stack:
        origin = stack.enter_context(live_server(create_origin(zoo_dir)))
        settings = Settings(
            redis_url=redis_server, origin_url=origin, auto_plan=False, auth_token=TOKEN
        )
        controller = stack.enter_context(live_server(create_controller(settings)))
        for model_id in MODELS:
            body = {"model_id": model_id, "repo_id": f"{STACK_ORG}/{model_id}"}
            httpx.post(
                f"{controller}/v1/models", json=body, timeout=300, headers=AUTH
            ).raise_for_status()
        edges = [
            stack.enter_context(
                edge_node(
                    f"edge-{i}", tmp / f"edge-{i}", origin_url=origin, controller_url=controller
                )
            )
            for i in (1, 2)
        ]
        push_plan(edges[0], controller, origin, list(MODELS))
        push_plan(edges[1], controller, origin, ["bert-sst2"])
        wait_until(lambda: route_sources(controller, "bert-sst2") == [*edges, origin])
        wait_until(lambda: route_sources(controller, "bert-spam")[0] == edges[0])
        yield Stack(zoo_dir, origin, controller, edges, tmp, redis_server)
    redis.Redis.from_url(redis_server).flushdb()
