"""PBs from a real model zoo: :func:`zoo_library` turns a zoo directory into a
:class:`~controller.library.ModelLibrary` for the delay scenarios.

The zoo is the layout ``testbed zoo build`` writes (``zoo.json`` with ``models[].model_id`` and
``repo_id``, files under ``repos/<repo_id>/``). Each repo is described as blocks by
:func:`core.build_manifest` (the same manifests the controller's indexer makes) and the blocks
of all models are grouped into parameter blocks by :func:`core.group_by_sharing`, exactly as
the planner groups the catalogue; a model is the PBs its manifest's blocks fall into. No
grouping or hashing is re-implemented here. Reads files, writes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

from controller.library import ModelLibrary
from core import ModelManifest, build_manifest, group_by_sharing

ZOO_SCHEMA = "trimcache.zoo/v1"


def zoo_manifests(zoo_dir: Path) -> list[ModelManifest]:
    """The manifest of every model of the zoo's catalogue, in catalogue order.

    Raises:
        ValueError: no ``zoo.json``, a wrong schema, or a listed repo missing on disk.
    """
    catalogue_path = Path(zoo_dir) / "zoo.json"
    try:
        catalogue = json.loads(catalogue_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"zoo {zoo_dir}: cannot read zoo.json ({exc})") from None
    if not isinstance(catalogue, dict) or catalogue.get("schema") != ZOO_SCHEMA:
        raise ValueError(f"zoo {zoo_dir}: zoo.json is not {ZOO_SCHEMA}")
    manifests: list[ModelManifest] = []
    for entry in catalogue.get("models", []):
        model_id, repo_id = entry["model_id"], entry["repo_id"]
        repo_dir = Path(zoo_dir) / "repos" / repo_id
        if not repo_dir.is_dir():
            raise ValueError(f"zoo {zoo_dir}: model {model_id!r}: missing repo {repo_dir}")
        manifests.append(build_manifest(repo_dir, model_id=model_id, repo_id=repo_id))
    if not manifests:
        raise ValueError(f"zoo {zoo_dir}: zoo.json lists no models")
    return manifests


def library_from_zoo_manifests(manifests: list[ModelManifest]) -> ModelLibrary:
    """PB id -> bytes and model id -> PB ids from :func:`core.group_by_sharing`.

    A model's PBs are listed in group order (the order ``group_by_sharing`` returns).
    """
    groups = group_by_sharing(manifests)
    models: dict[str, list[str]] = {m.model_id: [] for m in manifests}
    for g in groups:
        for model_id in sorted(g.model_ids):
            models[model_id].append(g.pb_id)
    return ModelLibrary(
        blocks={g.pb_id: g.size_bytes for g in groups},
        models={m: tuple(ids) for m, ids in models.items()},
    )


def zoo_library(zoo_dir: Path) -> ModelLibrary:
    """The zoo's models as a library of parameter blocks (see the module docstring).

    Raises:
        ValueError: see :func:`zoo_manifests`.
    """
    return library_from_zoo_manifests(zoo_manifests(zoo_dir))
