"""Session fixtures shared by every test package: a clean environment, a real redis-server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("EDGE_", "CONTROLLER_", "TRIMCACHE_", "ORIGIN_")):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a unix socket for the whole session (no persistence); its URL."""
    from tests.controller.redis_proc import RedisProcess

    with RedisProcess(tmp_path_factory.mktemp("redis"), appendonly=False) as proc:
        yield proc.url


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    """The session redis, flushed after each test."""
    import redis

    yield redis_server
    client = redis.Redis.from_url(redis_server)
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def zoo_dir() -> Path:
    """The shared test model zoo (built once, see tests/zoo_fixture.py)."""
    from tests.zoo_fixture import test_zoo_dir

    return test_zoo_dir()
