"""Schemathesis against the OpenAPI of every service, with and without the token.

Each service runs as a real uvicorn server (real Redis for the controller, the real test zoo for
the origin); schemathesis generates requests from the service's own ``/openapi.json``, a bounded
number per operation. Every answer must be a non-5xx, and a documented status's body must match
its schema. The controller runs with short push timeouts: generated heartbeats register nodes at
generated URLs, and generated plans push to them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
)

from tests.helpers import live_server

TOKEN = "contract-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    content_type_conformance,
    response_headers_conformance,
]
# Examples per operation and token setting: ~30 operations in all, < 60 s on 2 cores.
EXAMPLES = 12
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def controller_url(redis_server: str, origin_url: str) -> Iterator[str]:
    from controller.app import create_app
    from controller.settings import Settings

    settings_ = Settings(
        redis_url=redis_server,
        origin_url=origin_url,
        auth_token=TOKEN,
        auto_plan=False,
        push_timeout_s=2.0,
        push_stall_s=1.0,
        redis_timeout_s=1.0,
    )
    with live_server(create_app(settings_)) as url:
        yield url


@pytest.fixture(scope="module")
def edge_url(
    origin_url: str, controller_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    from edge_node.app import create_app
    from edge_node.settings import Settings

    settings_ = Settings(
        node_id="edge-1",
        data_dir=tmp_path_factory.mktemp("contract-edge"),
        auth_token=TOKEN,
        origin_url=origin_url,
        controller_url=controller_url,
        durable=False,
        scrub_on_start=False,
        fetch_timeout_s=5.0,
    )
    with live_server(create_app(settings_)) as url:
        yield url


@pytest.fixture(scope="module")
def origin_url(zoo_dir: Path) -> Iterator[str]:
    from testbed.origin import create_app

    with live_server(create_app(zoo_dir, auth_token=TOKEN)) as url:
        yield url


def fuzz(base_url: str, headers: dict[str, str]) -> list[str]:
    """Run every operation of the service's OpenAPI for ``EXAMPLES`` generated cases; returns
    one line per failing operation (empty: zero 5xx, zero schema violations)."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    failures: list[str] = []
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # every operation of the document is usable
        operations.append(result.ok())
    assert operations
    for operation in operations:

        @given(case=operation.as_strategy())
        @SETTINGS
        def run(case: Any) -> None:
            case.call_and_validate(headers=headers, checks=CHECKS, timeout=30)

        try:
            run()
        except Exception as exc:  # noqa: BLE001 - collected, reported together below
            first = str(exc).strip().splitlines()[:12]
            failures.append(f"{operation.label}: " + " | ".join(first))
    return failures


def test_controller_without_token(controller_url: str) -> None:
    assert fuzz(controller_url, {}) == []


def test_controller_with_token(controller_url: str) -> None:
    assert fuzz(controller_url, AUTH) == []


def test_origin_without_token(origin_url: str) -> None:
    assert fuzz(origin_url, {}) == []


def test_origin_with_token(origin_url: str) -> None:
    assert fuzz(origin_url, AUTH) == []


def test_edge_without_token(edge_url: str) -> None:
    assert fuzz(edge_url, {}) == []


def test_edge_with_token(edge_url: str) -> None:
    assert fuzz(edge_url, AUTH) == []
