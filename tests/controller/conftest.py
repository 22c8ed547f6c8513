"""Controller test fixtures: a tiny synthetic zoo served by the real origin app.

Three small models share a "base" tensor set (like fine-tuned task models with frozen layers),
so grouping by sharing gives a shared parameter block plus one private block per model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from tests.helpers import live_server

MINI_MODELS = ("tiny-a", "tiny-b", "tiny-c")
# The bearer token of the mini origin's counter reset.
ORIGIN_TOKEN = "origin-token"


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
