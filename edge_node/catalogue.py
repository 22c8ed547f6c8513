"""What the controller knows about models this node does not hold: manifests and block sources.

A Hub request for a repo the node has no manifest of is answered from the controller's
catalogue (docs/api.md "Controller"):

- ``GET {controller}/v1/models?repo_id=R&revision=V`` lists the entries that answer it, best
  first; none is RepoNotFound (RevisionNotFound when the repo has other revisions);
- ``GET {controller}/v1/routes/{model_id}`` gives the manifest and, per block, the edges that hold
  it (this node left out), best first, before the origin.

Both answers are reused for ``EDGE_CATALOGUE_TTL_S`` (a snapshot download asks once per file).
A controller that is down, slow (``EDGE_CONTROLLER_TIMEOUT_S``) or answers something that does
not parse is :class:`UpstreamUnavailableError` (502), never a 500. With several controller
replicas (``EDGE_CONTROLLER_URL`` comma-separated), a lookup goes to one that answers
(:class:`core.failover.Endpoints`); the error comes only when none did.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from core.digest import BlockId, is_block_id
from core.errors import ManifestError
from core.failover import Endpoints
from core.manifest import ModelManifest
from edge_node.errors import RepoNotFoundError, RevisionNotFoundError, UpstreamUnavailableError
from edge_node.settings import Settings

logger = logging.getLogger(__name__)

_MAX_CACHED = 1024


@dataclass(frozen=True, slots=True)
class Sources:
    """Where one model's blocks can be fetched: peer edges per block (best first), the origin."""

    peers: Mapping[BlockId, tuple[str, ...]]
    origin_url: str | None


@dataclass(frozen=True, slots=True)
class CatalogueModel:
    """A catalogued model as the controller routes it to this node."""

    manifest: ModelManifest
    sources: Sources


def parse_route(doc: Mapping[str, Any], *, self_node_id: str) -> CatalogueModel:
    """A ``GET /v1/routes/{model_id}`` document -> manifest and sources (raises ValueError,
    KeyError, TypeError or ManifestError when it does not have that shape)."""
    manifest = ModelManifest.from_dict(doc["manifest"])
    sources = doc["sources"]
    origin_url: str | None = None
    peer_urls: dict[int, str] = {}
    for index, source in enumerate(sources):
        if source.get("kind") == "origin":
            origin_url = str(source["url"]).rstrip("/")
        elif source.get("kind") == "edge" and source.get("node_id") != self_node_id:
            peer_urls[index] = str(source["url"]).rstrip("/")
    peers: dict[BlockId, tuple[str, ...]] = {}
    for block_id, indexes in doc["blocks"].items():
        if not is_block_id(block_id):
            raise ValueError(f"route names a bad block id {block_id!r}")
        urls = tuple(peer_urls[i] for i in indexes if i in peer_urls)
        if urls:
            peers[BlockId(block_id)] = urls
    return CatalogueModel(manifest, Sources(peers, origin_url))


class Catalogue:
    """Cached lookups in the controller's catalogue (thread-safe; ``enabled`` needs a
    controller URL)."""

    def __init__(
        self,
        settings: Settings,
        client: httpx.Client,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.client = client
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, ...], tuple[float, Any]] = {}
        self.controllers = Endpoints(settings.controller_urls) if settings.controller_url else None

    @property
    def enabled(self) -> bool:
        return self.controllers is not None

    def _cached(self, key: tuple[str, ...], load: Callable[[], Any]) -> Any:
        now = self._clock()
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        value = load()
        with self._lock:
            if len(self._cache) >= _MAX_CACHED:
                self._cache.clear()
            self._cache[key] = (now + self.settings.catalogue_ttl_s, value)
        return value

    def _get(self, path: str, params: Mapping[str, str] | None = None) -> httpx.Response:
        url = f"{self.settings.controller_url}{path}"
        if self.controllers is None:
            raise UpstreamUnavailableError("no controller is configured (EDGE_CONTROLLER_URL)")
        timeout = self.settings.controller_timeout_s
        try:
            return self.controllers.call(
                lambda base: self.client.get(f"{base}{path}", params=params, timeout=timeout),
                errors=(httpx.TransportError,),
                retry_on=lambda r: r.status_code >= 500,
            )
        except httpx.HTTPError as exc:
            raise UpstreamUnavailableError(f"controller {url} did not answer: {exc}") from exc

    def controller_json(self, path: str) -> Any:
        """``GET {controller}{path}`` as JSON, uncached (UpstreamUnavailableError when no
        controller answers; httpx.HTTPStatusError on a 4xx)."""
        response = self._get(path)
        response.raise_for_status()
        return response.json()

    def _entries(self, repo_id: str, revision: str | None) -> list[dict[str, Any]]:
        params = {"repo_id": repo_id}
        if revision is not None:
            params["revision"] = revision
        response = self._get("/v1/models", params)
        try:
            response.raise_for_status()
            entries = response.json()["models"]
            if not isinstance(entries, list):
                raise TypeError("models is not a list")
            return entries
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            raise UpstreamUnavailableError(
                f"controller catalogue lookup of {repo_id!r} failed: {exc}"
            ) from exc

    def model_id(self, repo_id: str, revision: str) -> str:
        """The catalogue model that answers ``repo_id`` at ``revision`` (404s as the Hub's)."""

        def load() -> str | None:
            entries = self._entries(repo_id, revision)
            return str(entries[0]["model_id"]) if entries else None

        found: str | None = self._cached(("repo", repo_id, revision), load)
        if found is not None:
            return found
        if self._cached(("repo", repo_id, ""), lambda: bool(self._entries(repo_id, None))):
            raise RevisionNotFoundError(
                f"revision {revision!r} of {repo_id!r} is not in the catalogue"
            )
        raise RepoNotFoundError(f"repository {repo_id!r} is not in the catalogue")

    def route(self, model_id: str) -> CatalogueModel:
        """The manifest and block sources of a catalogued model (RepoNotFound if it left)."""

        def load() -> CatalogueModel:
            response = self._get(f"/v1/routes/{quote(model_id, safe='')}")
            if response.status_code == 404:
                raise RepoNotFoundError(f"model {model_id!r} is no longer in the catalogue")
            try:
                response.raise_for_status()
                return parse_route(response.json(), self_node_id=self.settings.node_id)
            except (httpx.HTTPError, ValueError, KeyError, TypeError, ManifestError) as exc:
                raise UpstreamUnavailableError(
                    f"controller route of {model_id!r} failed: {exc}"
                ) from exc

        model: CatalogueModel = self._cached(("route", model_id), load)
        return model

    def find(self, repo_id: str, revision: str) -> CatalogueModel:
        """Manifest and sources of ``repo_id`` at ``revision`` from the catalogue."""
        return self.route(self.model_id(repo_id, revision))

    def repo_ids(self) -> list[str]:
        """Every catalogued repo id (empty when the controller does not answer)."""

        def load() -> list[str]:
            try:
                response = self._get("/v1/models")
                response.raise_for_status()
                return sorted({str(m["repo_id"]) for m in response.json()["models"]})
            except (UpstreamUnavailableError, httpx.HTTPError, ValueError, KeyError, TypeError):
                logger.warning("catalogue listing from %s failed", self.settings.controller_url)
                return []

        ids: list[str] = self._cached(("repos",), load)
        return ids
