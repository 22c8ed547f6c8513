"""Controller test fixtures: a tiny synthetic zoo served by the real origin app, the tests'
controller settings and real edge node apps to push plans to.

Three small models share a "base" tensor set (like fine-tuned task models with frozen layers),
so grouping by sharing gives a shared parameter block plus one private block per model.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from tests.helpers import live_server

if TYPE_CHECKING:
    from controller.settings import Settings

MINI_MODELS = ("tiny-a", "tiny-b", "tiny-c")
# The bearer token of the mini origin's counter reset.
ORIGIN_TOKEN = "origin-token"
#: The control-plane token of the tests' controllers and edge nodes.
TOKEN = "controller-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def controller_settings(redis_url: str, origin_url: str, **extra: Any) -> Settings:
    """The tests' controller: this Redis and origin, :data:`TOKEN`, no automatic planning;
    ``extra`` sets or overrides any other setting."""
    from controller.settings import Settings

    base: dict[str, Any] = {
        "redis_url": redis_url,
        "origin_url": origin_url,
        "auth_token": TOKEN,
        "auto_plan": False,
    }
    return Settings(**{**base, **extra})


def _write_model(
    root: Path, name: str, rng: np.random.Generator, base: dict[str, np.ndarray]
) -> None:
    repo = root / "repos" / "mini" / name
    repo.mkdir(parents=True)
    tensors = dict(base)
    tensors[f"head.{name}.weight"] = rng.standard_normal((64, 32)).astype(np.float32)
    save_file(tensors, str(repo / "model.safetensors"))
    (repo / "config.json").write_text(json.dumps({"model_type": "bert", "name": name}))


@pytest.fixture(scope="session")
def mini_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mini-zoo")
    rng = np.random.default_rng(0)
    base = {
        f"layer.{i}.weight": rng.standard_normal((128, 64)).astype(np.float32) for i in range(4)
    }
    for name in MINI_MODELS:
        _write_model(root, name, rng, base)
    return root


@pytest.fixture(scope="session")
def mini_origin(mini_zoo: Path) -> Iterator[str]:
    from testbed.origin import create_app as create_origin

    with live_server(create_origin(mini_zoo, auth_token=ORIGIN_TOKEN)) as url:
        yield url


@pytest.fixture
def edges(tmp_path: Path, mini_origin: str) -> Iterator[Callable[[str, int | None], str]]:
    """``make(node_id, capacity_bytes) -> url``: a real edge node app on a real uvicorn server
    (the tests' token, the mini origin), stopped after the test."""
    from edge_node.app import create_app as create_edge
    from edge_node.settings import Settings as EdgeSettings

    with ExitStack() as stack:

        def make(node_id: str, capacity_bytes: int | None) -> str:
            settings = EdgeSettings(
                node_id=node_id,
                data_dir=tmp_path / node_id,
                capacity_bytes=capacity_bytes,
                auth_token=TOKEN,
                origin_url=mini_origin,
                allowed_hosts="127.0.0.1",  # the peer edges, on OS-assigned loopback ports
                durable=False,
                scrub_on_start=False,
            )
            url: str = stack.enter_context(live_server(create_edge(settings)))
            return url

        yield make
