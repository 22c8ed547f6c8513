"""LoRA adapters count their base model: a small placement problem, then the catalogue path
(a real origin serving a base model and an adapter naming it, the controller indexing both and
building its placement problem)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from safetensors.numpy import save_file

from controller.adapters import base_models, with_base_sizes, with_bases
from controller.placement import SOLVERS, PlacementProblem, evaluate
from tests.controller.conftest import AUTH, controller_settings
from tests.helpers import live_server


def _problem(models: dict[str, tuple[str, ...]], capacity: int) -> PlacementProblem:
    return PlacementProblem(
        blocks={"base": 10, "head": 1, "lora": 1},
        models=models,
        servers={"s": capacity},
        requests={"u": {"lora-m": 1.0}},
        reachable={"u": {"s": list(models)}},
    )


def test_an_adapter_is_a_hit_only_with_its_base() -> None:
    own = {"base-m": ("base", "head"), "lora-m": ("lora",)}
    expanded = with_bases(own, {"lora-m": "base-m"})
    assert expanded["lora-m"] == ("lora", "base", "head")
    assert expanded["base-m"] == own["base-m"]
    # Without the accounting, the adapter's own block alone is a "hit"; with it, it is not.
    assert evaluate(_problem(own, 12), {"s": ["lora"]}) == 1.0
    problem = _problem(expanded, 12)
    assert evaluate(problem, {"s": ["lora"]}) == 0.0
    assert evaluate(problem, {"s": ["lora", "base", "head"]}) == 1.0
    # A solver places the base along with the adapter when both fit, and nothing useful if not.
    for name in ("trimcaching-gen", "independent"):
        assert SOLVERS[name](problem).hit_ratio == 1.0
        assert SOLVERS[name](_problem(expanded, 11)).hit_ratio == 0.0
    assert with_base_sizes({"base-m": 11, "lora-m": 1}, {"lora-m": "base-m"})["lora-m"] == 12


def test_base_models_needs_the_base_in_the_catalogue(caplog: pytest.LogCaptureFixture) -> None:
    rows: list[dict[str, Any]] = [
        {"model_id": "b", "repo_id": "org/b", "base_repo_id": None},
        {"model_id": "l", "repo_id": "org/l", "base_repo_id": "org/b"},
        {"model_id": "orphan", "repo_id": "org/o", "base_repo_id": "org/missing"},
    ]
    with caplog.at_level(logging.WARNING, logger="controller.adapters"):
        assert base_models(rows) == {"l": "b"}
        assert base_models(rows) == {"l": "b"}  # every route-cache reload calls it again
    missing = [r for r in caplog.records if "org/missing" in r.getMessage()]
    assert len(missing) == 1


@pytest.fixture
def adapter_origin(tmp_path: Path) -> Iterator[str]:
    """A real origin with ``mini/base`` and ``mini/lora`` (PEFT files naming ``mini/base``)."""
    from testbed.origin import create_app as create_origin

    rng = np.random.default_rng(1)
    base = tmp_path / "repos" / "mini" / "base"
    base.mkdir(parents=True)
    save_file(
        {f"layer.{i}.weight": rng.standard_normal((64, 32)).astype(np.float32) for i in range(3)},
        str(base / "model.safetensors"),
    )
    (base / "config.json").write_text(json.dumps({"model_type": "bert"}))
    lora = tmp_path / "repos" / "mini" / "lora"
    lora.mkdir(parents=True)
    save_file(
        {"lora_A.weight": rng.standard_normal((4, 32)).astype(np.float32)},
        str(lora / "adapter_model.safetensors"),
    )
    (lora / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": "mini/base", "peft_type": "LORA", "r": 4})
    )
    with live_server(create_origin(tmp_path)) as url:
        yield url


def test_the_catalogue_records_the_base_and_the_planner_counts_it(
    redis_url: str, adapter_origin: str
) -> None:
    from controller.app import create_app

    settings = controller_settings(redis_url, adapter_origin)
    with TestClient(create_app(settings), headers=AUTH) as client:
        for model_id in ("base", "lora"):
            r = client.post(
                "/v1/models", json={"model_id": model_id, "repo_id": f"mini/{model_id}"}
            )
            assert r.status_code == 201, r.text
        rows = {m["model_id"]: m for m in client.get("/v1/models").json()["models"]}
        assert rows["lora"]["base_repo_id"] == "mini/base"
        assert rows["base"]["base_repo_id"] is None
        # The adapter's route names its base (the SDK fetches both at once); the base's none.
        assert client.get("/v1/routes/lora").json()["base_model_id"] == "base"
        assert "base_model_id" not in client.get("/v1/routes/base").json()
        body = {"url": "http://127.0.0.1:9", "capacity_bytes": None, "position": [0, 0]}
        assert client.put("/v1/nodes/edge-1", json=body, headers=AUTH).status_code == 200
        planner = client.app.state.planner  # type: ignore[attr-defined]
        nodes = planner.state.live_nodes()
        view = planner.active_topology(nodes)
        problem = planner.build_problem(nodes, planner.state.list_models(), view)
    assert problem.requests, f"no user areas in the {view.source} topology: {view.topology}"
    # The adapter's block set holds the base's; the base's does not hold the adapter's.
    assert set(problem.models["base"]) < set(problem.models["lora"])
    assert problem.model_bytes("lora") > problem.model_bytes("base")
    lora_only = sorted(set(problem.models["lora"]) - set(problem.models["base"]))
    server = next(iter(problem.servers))
    # Holding the adapter's own blocks is worth nothing; with the base's it is a hit.
    assert evaluate(problem, {server: lora_only}) == evaluate(problem, {})
    assert evaluate(problem, {server: list(problem.models["lora"])}) > evaluate(problem, {})
