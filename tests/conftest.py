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
    """The session redis, empty when the test starts and flushed after it (a thread an earlier
    test left behind may still write after that test's flush)."""
    import redis

    client = redis.Redis.from_url(redis_server)
    client.flushdb()
    client.close()
    yield redis_server
    client = redis.Redis.from_url(redis_server)
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def zoo_dir() -> Path:
    """The shared test model zoo (built once, see tests/zoo_fixture.py)."""
    from tests.zoo_fixture import test_zoo_dir

    return test_zoo_dir()


# -- scheduling under pytest-xdist (pyproject: ``--dist loadgroup --no-loadscope-reorder``) -------
# Two rules keep `pytest -n 2` short:
# 1. Tests that share a module- or package-scoped fixture (a testbed, a stack of services, a set
#    of manifests) run on one worker, so that fixture is built once per run, not once per worker.
# 2. The heaviest units go first (slow-marked tests and those fixture groups), the quick ones
#    after, so the two workers finish together instead of one idling while the other runs a
#    long test it picked up last (longest-first scheduling).
SHARED_SCOPES = ("module", "package")


def _shared_scope_group(item: pytest.Item) -> str | None:
    """The module (or package) whose scoped fixture ``item`` uses, if any."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return None
    group: str | None = None
    for name in info.names_closure:
        defs = info.name2fixturedefs.get(name)
        if not defs:
            continue
        scope = defs[-1].scope
        if scope == "package":
            return f"package:{defs[-1].baseid}"
        if scope == "module":
            group = f"module:{item.nodeid.split('::', 1)[0]}"
    return group


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    groups: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        group = _shared_scope_group(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
            groups.setdefault(group, []).append(index)
    slow_groups = {
        group
        for group, members in groups.items()
        if any(items[i].get_closest_marker("slow") for i in members)
    }

    def rank(index: int) -> int:
        item = items[index]
        group = _shared_scope_group(item)
        if group in slow_groups or (group is None and item.get_closest_marker("slow")):
            return 0  # slow: first
        return 1 if group is not None else 2  # then shared-fixture groups, then the rest

    # A stable sort keeps every group contiguous and collection order within a rank.
    order = sorted(range(len(items)), key=rank)
    items[:] = [items[i] for i in order]
