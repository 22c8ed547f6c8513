"""LoRA adapters in the placement problem: an adapter is usable only together with its base model.

A repo with ``adapter_config.json`` (PEFT) is an adapter; its ``base_model_name_or_path`` names
the base model's repo. The route of an adapter names its base (``base_model_id``, from
:func:`base_models`: controller.route_cache) and the SDK fetches both at once
(``client.Client.fetch``), so a request for an adapter is served by edges only when the
adapter's blocks *and* the base's are there. The placement problem counts that by giving an
adapter the block set "adapter blocks plus base blocks" (:func:`with_bases`): solvers,
:func:`~controller.placement.evaluate` and the simulator then see an adapter as a hit only where
both are held (one server holding the union, the problem's model of a hit), and its storage as
what the base does not already bring. Its size for the deadline (reachability) is the adapter's
bytes plus the base's.

Where the base comes from: :func:`read_base_repo` reads ``adapter_config.json`` from the origin
when the adapter is indexed (:func:`controller.indexer.add_model`) and the catalogue entry keeps
it (``CatalogueEntry.base_repo_id``, listed by ``GET /v1/models``); :func:`base_models` maps
adapters to the catalogued model of that repo. An adapter whose base is not catalogued keeps its
own blocks only (logged): no edge can serve the base, so the request reaches the origin whatever
the placement does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import httpx

from core.manifest import ModelManifest

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"


def is_adapter(manifest: ModelManifest) -> bool:
    return any(f.path == ADAPTER_CONFIG for f in manifest.files)


def read_base_repo(origin_url: str, manifest: ModelManifest, *, timeout_s: float = 30.0) -> str:
    """The base model repo an adapter names (``base_model_name_or_path`` of its
    ``adapter_config.json`` at the indexed revision, from the origin).

    Raises:
        ValueError: the file is unreadable or names no base.
        httpx.HTTPError: the origin failed.
    """
    url = (
        f"{origin_url.rstrip('/')}/{manifest.repo_id}/resolve/"
        f"{quote(manifest.revision, safe='')}/{ADAPTER_CONFIG}"
    )
    response = httpx.get(url, timeout=timeout_s, follow_redirects=False)
    response.raise_for_status()
    config = json.loads(response.content)
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    if not isinstance(base, str) or not base:
        raise ValueError(f"{manifest.repo_id}/{ADAPTER_CONFIG} names no base model")
    return base


#: (adapter model id, base repo) pairs already warned about: the route cache and every plan call
#: :func:`base_models`, so a missing base is logged once per process, not at every reload.
_warned_missing: set[tuple[str, str]] = set()


def base_models(rows: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Adapter model id -> the model id of its base, for adapters whose base is catalogued.

    ``rows`` are catalogue rows (:meth:`CatalogueEntry.summary`, the rows of
    ``GET /v1/models``): ``model_id``, ``repo_id`` and ``base_repo_id``. An adapter whose base
    is not catalogued is left out (and logged once).
    """
    by_repo = {str(r["repo_id"]): str(r["model_id"]) for r in rows}
    out: dict[str, str] = {}
    for row in rows:
        base_repo = row.get("base_repo_id")
        if not base_repo:
            continue
        base = by_repo.get(str(base_repo))
        if base is None or base == row["model_id"]:
            key = (str(row["model_id"]), str(base_repo))
            if key not in _warned_missing:
                _warned_missing.add(key)
                logger.warning("adapter model_id=%s: base %s is not in the catalogue", *key)
            continue
        out[str(row["model_id"])] = base
    return out


def with_bases(
    models: Mapping[str, Sequence[str]], bases: Mapping[str, str]
) -> dict[str, tuple[str, ...]]:
    """``models`` (model id -> block ids) with every adapter's blocks followed by its base's
    (no duplicates, order kept). Bases are not expanded further (a base is not an adapter).

    >>> with_bases({"base": ["b0", "b1"], "lora": ["a0", "b1"]}, {"lora": "base"})
    {'base': ('b0', 'b1'), 'lora': ('a0', 'b1', 'b0')}
    """
    out: dict[str, tuple[str, ...]] = {}
    for model_id, blocks in models.items():
        base = bases.get(model_id)
        combined = [*blocks, *(models[base] if base is not None and base in models else ())]
        out[model_id] = tuple(dict.fromkeys(combined))
    return out


def with_base_sizes(sizes: Mapping[str, int], bases: Mapping[str, str]) -> dict[str, int]:
    """Model id -> bytes a request moves: an adapter's plus its base's."""
    return {m: n + (sizes.get(bases[m], 0) if m in bases else 0) for m, n in sizes.items()}
