"""The SDK entry points: :class:`Client` and :func:`fetch_model`.

Configuration: every setting is an explicit argument. The environment is read in exactly one
place, :func:`resolve_settings` (and :func:`resolve_token`), only for arguments left as ``None``:

- ``TRIMCACHE_CONTROLLER_URL`` (default ``http://127.0.0.1:8080``): one controller, or its
  replicas comma-separated
- ``TRIMCACHE_CACHE_DIR`` (default ``~/.cache/trimcache``)
- ``TRIMCACHE_AUTH_TOKEN`` (default none): the bearer token demand reports carry; without it the
  controller refuses them (a fetch never fails for that)

Internal logic of a fetch (:meth:`Client.fetch`):

1. route: ask the controller for ``GET /v1/routes/{model_id}`` (or build a one-source route from
   an edge node's manifest, or index the repo from the origin); keep the manifest in the cache;
2. verify (local blocks): open the model's partial dir (preallocated files, header from the
   manifest; a resumed one keeps its verified blocks) and copy in, with ``copy_file_range``,
   the blocks that complete cached models already hold (``_files``);
3. download: the missing blocks, written in place at their manifest offsets, each verified,
   with per-block fallback (``_download``);
4. assemble: copy repeated blocks to their other places, fsync when durable, rename the dir
   to ``cache_dir/models/<model_id>/`` (the files' sha256 follow from the verified blocks);
5. load: transformers (and peft for a LoRA adapter, whose base model is fetched the same way:
   when the controller's route names it (``base_model_id``), in a second thread as soon as the
   adapter's route is known, so both models' blocks are requested together; otherwise after
   the adapter, from its ``adapter_config.json``);
6. report the request and timings to the controller (best effort: never fails the fetch).

Controller replicas: ``controller_url`` may list several (a comma-separated string or a
sequence); every controller request goes to one that answers (:class:`core.failover.Endpoints`:
connection refused, a timeout or a 5xx tries the next, and the one that answered is asked first
next time). Errors of the controller itself (none answered, or all with a 5xx) are
:class:`ControllerUnavailableError`, never an edge error. When the source of the route
(controller, edge node or origin) fails but the device cache holds the complete model, the
cached copy is served: the fetch logs one ``WARNING`` record on the ``client`` logger (printed
as one stderr line when the application has not configured logging) and sets
``report["offline"] = True``.

Origin fallback: a controller-mode client given ``fallback_origin_url`` (or
``TRIMCACHE_ORIGIN_URL``) fetches a model that is not cached from that origin when the
controller is unreachable or answers 5xx (e.g. 503 with its Redis down): the repo is indexed
from the origin as in origin-only mode (files checked against the Hub's sha256, block ids
computed from their bytes), with one ``WARNING`` and ``report["fallback_origin"]`` set to the
origin's URL. The repo id is ``repo_id=`` if given, else the one of the model's cached manifest.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import httpx

from core.auth import bearer_header
from core.digest import BlockId
from core.errors import ManifestError
from core.failover import Endpoints, parse_urls
from core.manifest import ModelManifest, check_model_id

from ._cache import DeviceCache
from ._download import Downloader, DownloadOptions, DownloadResult
from ._errors import (
    ClientError,
    ControllerUnavailableError,
    EdgeUnavailableError,
    ModelNotFoundError,
    controller_unavailable,
    raise_for_error,
    transport_error,
)
from ._files import ModelWriter
from ._model import FetchedModel, _adapter_base
from ._origin import index_from_origin, repo_info
from ._route import Route, Source, parse_route, single_source_route
from ._wire import Wire, tls_context

logger = logging.getLogger(__name__)

DEFAULT_CONTROLLER_URL = "http://127.0.0.1:8080"
DEFAULT_CACHE_DIR = "~/.cache/trimcache"
LOCAL = "local"
#: The user area on data requests to edge nodes (edge_node.radio).
AREA_HEADER = "X-TrimCache-Area"
#: One random id per client, on data requests: an emulated downlink orders and groups its
#: transmissions per user (edge_node.airorder).
USER_HEADER = "X-TrimCache-User"
PHASES = ("route", "verify", "download", "assemble", "load")

Mode = Literal["controller", "edge", "origin"]


def resolve_settings(
    controller_url: str | Sequence[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[str, Path]:
    """The only place the SDK reads its environment: fill in arguments left as None.

    Args:
        controller_url: explicit controller URL (or replicas: comma-separated, or a sequence),
            or None for ``TRIMCACHE_CONTROLLER_URL``.
        cache_dir: explicit cache directory, or None for ``TRIMCACHE_CACHE_DIR``.

    Returns:
        ``(controller_url, cache_dir)`` with defaults applied; several controllers come back
        comma-separated.

    Raises:
        ValueError: a controller URL that is not http(s).
    """
    url = controller_url or os.environ.get("TRIMCACHE_CONTROLLER_URL") or DEFAULT_CONTROLLER_URL
    directory = cache_dir or os.environ.get("TRIMCACHE_CACHE_DIR") or DEFAULT_CACHE_DIR
    return ",".join(parse_urls(url)), Path(directory).expanduser()


def resolve_fallback_origin(fallback_origin_url: str | None = None) -> str | None:
    """The origin a controller-mode client falls back to (None: ``TRIMCACHE_ORIGIN_URL``)."""
    url = fallback_origin_url or os.environ.get("TRIMCACHE_ORIGIN_URL") or None
    return url.rstrip("/") if url else None


def resolve_token(auth_token: str | None = None) -> str | None:
    """The control-plane token: ``auth_token``, else ``TRIMCACHE_AUTH_TOKEN``, else None."""
    return auth_token or os.environ.get("TRIMCACHE_AUTH_TOKEN") or None


class FetchProgress(Protocol):
    """Hooks a UI can implement to follow a fetch (the CLI draws rich progress bars)."""

    def on_phase(self, model_id: str, phase: str) -> None: ...

    def on_plan(
        self, model_id: str, *, total_bytes: int, local_bytes: int, sources: list[str]
    ) -> None: ...

    def on_bytes(self, source_url: str, nbytes: int) -> None: ...


@dataclass(slots=True)
class _Timer:
    seconds: dict[str, float]

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


class Client:
    """A TrimCache client: routes, the device cache, downloads and model loading.

    Exactly one way to find blocks is used: ``edge_url`` (one edge node, no controller),
    ``origin_url`` (the origin alone; pass ``repo_id`` to :meth:`fetch`), else the controller.

    Args:
        controller_url: the controller, or its replicas (comma-separated or a sequence; tried
            in turn) (None: ``TRIMCACHE_CONTROLLER_URL`` or the default).
        cache_dir: the device cache (None: ``TRIMCACHE_CACHE_DIR`` or ``~/.cache/trimcache``).
        edge_url: fetch from this edge node only.
        origin_url: fetch from this HF-compatible origin only.
        fallback_origin_url: in controller mode, the origin to fetch from when the controller
            is down (None: ``TRIMCACHE_ORIGIN_URL``, else no fallback).
        area_id: the user area sent with route queries and demand reports.
        position: the device's ``(x_m, y_m)``, sent with route queries instead of the area.
        timeout_s: per-request connect/read timeout.
        transport: an httpx transport for the control requests (routes, manifests, reports);
            block bytes travel on the data path (:mod:`client._wire`).
        options: download tuning (parallelism, batching, retries).
        durable: fsync each file once, when its model is complete.
        auth_token: bearer token of demand reports (None: ``TRIMCACHE_AUTH_TOKEN``, else none).

    >>> with Client(edge_url="http://127.0.0.1:9", cache_dir="/tmp/tc") as c:  # doctest: +SKIP
    ...     c.fetch("bert-sst2").predict(["I loved it"])[0]["label"]
    'positive'
    """

    def __init__(
        self,
        *,
        controller_url: str | Sequence[str] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        edge_url: str | None = None,
        origin_url: str | None = None,
        fallback_origin_url: str | None = None,
        area_id: str | None = None,
        position: tuple[float, float] | None = None,
        timeout_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        options: DownloadOptions | None = None,
        durable: bool = False,
        auth_token: str | None = None,
    ) -> None:
        self.controller_url, cache_path = resolve_settings(controller_url, cache_dir)
        self._controllers = Endpoints(parse_urls(self.controller_url))
        # Demand reports are a control-plane write: they carry the token (core.auth's policy).
        self.auth_token = resolve_token(auth_token)
        self.edge_url = edge_url.rstrip("/") if edge_url else None
        self.origin_url = origin_url.rstrip("/") if origin_url else None
        self.mode: Mode = "edge" if self.edge_url else "origin" if self.origin_url else "controller"
        self.fallback_origin_url = (
            resolve_fallback_origin(fallback_origin_url) if self.mode == "controller" else None
        )
        self.area_id = area_id
        self.position = position
        self.cache = DeviceCache(cache_path, durable=durable)
        self.options = options or DownloadOptions()
        self._origin_urls: set[str] = set()
        self._local = threading.local()
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
            transport=transport,
            follow_redirects=True,
            verify=tls_context(),
        )
        # The user area goes to the edges too: their emulated radio serves that area's rate.
        headers = {USER_HEADER: uuid.uuid4().hex}
        if area_id:
            headers[AREA_HEADER] = area_id
        self._wire = Wire(timeout_s, headers=headers)

    def close(self) -> None:
        self._http.close()
        self._wire.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- HTTP helpers ----------------------------------------------------------------------
    def _get_json(
        self,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        send: Callable[[], httpx.Response] | None = None,
    ) -> Any:
        """GET, retried on transport errors and 503 (:meth:`DownloadOptions.retry_policy`);
        ``send`` replaces the one GET of ``url`` (the controller's failover)."""
        get = send or (lambda: self._http.get(url, params=params))
        failure: httpx.TransportError | httpx.Response | None = None
        for _attempt in self.options.retry_policy().attempts():
            try:
                response = get()
            except httpx.TransportError as exc:
                failure = exc
                continue
            if response.status_code == 503:
                failure = response
                continue
            raise_for_error(response)
            try:
                return response.json()
            except ValueError:
                raise ClientError(
                    f"{url} answered {response.status_code} without JSON"
                    f" ({response.headers.get('content-type', 'no content type')})",
                    http_status=response.status_code,
                    url=url,
                ) from None
        if isinstance(failure, httpx.TransportError):
            raise transport_error(failure, url) from failure
        assert failure is not None, "a retry policy makes at least one attempt"
        raise_for_error(failure)
        raise AssertionError("unreachable")  # pragma: no cover

    def _controller_json(self, path: str, *, params: Mapping[str, str] | None = None) -> Any:
        """GET ``path`` from the controller; no answer or a 5xx is ControllerUnavailableError."""

        def send() -> httpx.Response:
            return self._controller_call(
                lambda base: self._http.get(f"{base}{path}", params=params)
            )

        try:
            return self._get_json(f"{self._controllers.current}{path}", params=params, send=send)
        except EdgeUnavailableError as exc:
            # Chained from the transport error itself (None for a 5xx): no edge error in between.
            raise controller_unavailable(self.controller_url, exc) from exc.__cause__

    def _controller_call(self, send: Callable[[str], httpx.Response]) -> httpx.Response:
        """``send(base_url)`` to the controller replicas in turn (:mod:`core.failover`)."""
        return self._controllers.call(
            send, errors=(httpx.TransportError,), retry_on=lambda r: r.status_code >= 500
        )

    # -- routing ---------------------------------------------------------------------------
    def _route(self, model_id: str, repo_id: str | None, revision: str) -> tuple[Route, int]:
        """The route and the bytes already moved to get it (origin indexing only)."""
        if self.mode == "controller":
            params: dict[str, str] = {}
            if self.position is not None:
                params = {"x_m": str(self.position[0]), "y_m": str(self.position[1])}
            elif self.area_id:
                params = {"area_id": self.area_id}
            data = self._controller_json(f"/v1/routes/{model_id}", params=params or None)
            route = parse_route(data)
            if route.manifest.model_id != model_id:
                raise ClientError(f"controller answered for {route.manifest.model_id}")
            return route, 0
        if self.mode == "edge":
            assert self.edge_url is not None
            data = self._get_json(f"{self.edge_url}/v1/models/{model_id}/manifest")
            try:
                manifest = ModelManifest.from_dict(data)
            except ManifestError as exc:
                raise ClientError(f"bad manifest from {self.edge_url}: {exc}") from exc
            return single_source_route(manifest, Source(self.edge_url, "edge")), 0
        assert self.origin_url is not None
        if repo_id is None:
            raise ValueError("origin_url fetches need repo_id= (the Hub repo to index)")
        return self._origin_route(self.origin_url, model_id, repo_id, revision)

    def _origin_route(
        self, origin_url: str, model_id: str, repo_id: str, revision: str
    ) -> tuple[Route, int]:
        """A one-source route to ``origin_url``, indexing the repo there the first time."""
        sha, files = repo_info(origin_url, repo_id, revision)
        store = self.cache.store
        if store.has_manifest(model_id):
            known = store.get_manifest(model_id)
            if known.repo_id == repo_id and known.revision == sha:
                return single_source_route(known, Source(origin_url, "origin")), 0
        on_bytes = self._progress.on_bytes if self._progress is not None else None
        manifest, moved = self.cache.index_into(
            lambda dest: index_from_origin(
                self._http,
                dest,
                origin_url=origin_url,
                model_id=model_id,
                repo_id=repo_id,
                revision=sha,
                files=files,
                on_bytes=on_bytes,
            )
        )
        return single_source_route(manifest, Source(origin_url, "origin")), moved

    def _fallback_route(
        self, model_id: str, repo_id: str | None, revision: str, cause: ClientError
    ) -> tuple[Route, int] | None:
        """The origin route when the controller is down (None: no fallback origin or repo)."""
        origin_url = self.fallback_origin_url
        if origin_url is None or not isinstance(cause, ControllerUnavailableError):
            return None
        store = self.cache.store
        if repo_id is None and store.has_manifest(model_id):
            repo_id = store.get_manifest(model_id).repo_id
        if repo_id is None:
            return None
        logger.warning(
            "controller %s %s: fetching %s (%s) from the origin %s",
            self.controller_url,
            f"failed with {cause.http_status}" if cause.http_status else "is unreachable",
            model_id,
            repo_id,
            origin_url,
        )
        return self._origin_route(origin_url, model_id, repo_id, revision)

    def list_remote_models(self) -> list[dict[str, Any]]:
        """The models the controller (or edge node) knows: ``[{"model_id", "repo_id", ...}]``."""
        if self.mode == "edge":
            data = self._get_json(f"{self.edge_url}/v1/models")
        else:
            data = self._controller_json("/v1/models")
        models = data.get("models", []) if isinstance(data, dict) else data
        return [m for m in models if isinstance(m, dict)]

    def _base_model_id(self, base_repo: str) -> str:
        if self.mode == "origin":
            return base_repo.rsplit("/", 1)[-1]
        try:
            entries = self.list_remote_models()
        except (ControllerUnavailableError, EdgeUnavailableError):
            # Offline: the base of a cached adapter is cached too, under its manifest's repo.
            entries = [
                {"model_id": m.model_id, "repo_id": m.repo_id} for m in self.cache.store.manifests()
            ]
            if not any(e["repo_id"] == base_repo for e in entries):
                raise
        for entry in entries:
            if entry.get("repo_id") == base_repo or entry.get("model_id") == base_repo:
                return str(entry["model_id"])
        raise ModelNotFoundError(f"base model {base_repo} of the adapter is not registered")

    # -- fetching --------------------------------------------------------------------------
    @property
    def _progress(self) -> FetchProgress | None:
        """The UI hooks of the fetch running in this thread (an adapter's base is fetched in
        another thread, without hooks)."""
        progress: FetchProgress | None = getattr(self._local, "progress", None)
        return progress

    @_progress.setter
    def _progress(self, progress: FetchProgress | None) -> None:
        self._local.progress = progress

    def fetch(
        self,
        model_id: str,
        *,
        repo_id: str | None = None,
        revision: str = "main",
        load: bool = True,
        progress: FetchProgress | None = None,
    ) -> FetchedModel:
        """Bring a model onto the device and (by default) load it.

        Args:
            model_id: the TrimCache model id (``bert-sst2``).
            repo_id: the Hub repo to index (origin-only mode).
            revision: the Hub revision (origin-only mode).
            load: load model and tokenizer now (timed as the ``load`` phase).
            progress: UI hooks.

        Returns:
            The fetched model with its ``report``.

        Raises:
            ModelNotFoundError: the model is unknown.
            NoSourceError: some block could not be fetched from any source.
            ControllerUnavailableError: the controller is unreachable (or 5xx) and the model is
                not in the device cache.
            EdgeUnavailableError: the only source (``edge_url``/``origin_url``) is unreachable
                and the model is not in the device cache.
            DiskFullError: the device cache is out of space.
        """
        return self._fetch_model(
            model_id, repo_id=repo_id, revision=revision, load=load, progress=progress
        )

    def _fetch_model(
        self,
        model_id: str,
        *,
        repo_id: str | None,
        revision: str,
        load: bool,
        progress: FetchProgress | None,
        defer: frozenset[BlockId] = frozenset(),
        after: threading.Event | None = None,
    ) -> FetchedModel:
        """:meth:`fetch`; ``defer``: blocks to copy from another model's files once ``after``
        is set (the adapter this base is fetched alongside) rather than download twice."""
        check_model_id(model_id)
        self._progress = progress
        start = time.perf_counter()
        timer = _Timer(dict.fromkeys(PHASES, 0.0))
        try:
            # A LoRA adapter's route names its base: the base is fetched in a second thread
            # from then on, so its blocks go out together with the adapter's (one broadcast
            # window of this user), not after them; the blocks both share (tokenizer files)
            # it copies from the adapter's files when the adapter is done. The pool's exit
            # waits for the base's fetch.
            adapter_done = threading.Event()
            with ThreadPoolExecutor(1, thread_name_prefix="trimcache-base") as pool:
                base_fetch: list[Future[FetchedModel]] = []

                def routed(route: Route) -> None:
                    if route.base_model_id is None:
                        return
                    job = functools.partial(
                        self._fetch_model,
                        route.base_model_id,
                        repo_id=None,
                        revision=revision,
                        load=False,
                        progress=None,
                        defer=frozenset(route.manifest.block_sizes()),
                        after=adapter_done,
                    )
                    base_fetch.append(pool.submit(job))

                try:
                    fetched = self._fetch(
                        model_id,
                        repo_id,
                        revision,
                        timer,
                        on_route=routed,
                        defer=defer,
                        after=after,
                    )
                finally:
                    adapter_done.set()
                if fetched.is_adapter:
                    if base_fetch:
                        base = base_fetch[0].result()
                    else:  # no controller route (edge, origin, offline): the base after
                        base_repo = _adapter_base(fetched.path)
                        assert base_repo is not None
                        base_id = self._base_model_id(base_repo)
                        base = self.fetch(base_id, repo_id=base_repo, revision=revision, load=False)
                        self._progress = progress
                    fetched.base_path = base.path
                    _merge_base_report(fetched.report, base.report, timer)
            if load:
                if progress is not None:
                    progress.on_phase(model_id, "load")
                with timer.phase("load"):
                    fetched.load()
        except ControllerUnavailableError:
            raise  # nobody to report to
        except ClientError:
            self._report_demand(model_id, "error", time.perf_counter() - start, {})
            raise
        fetched.report["phase_seconds"] = dict(timer.seconds)
        fetched.report["seconds"] = time.perf_counter() - start
        by_kind = {LOCAL: 0, "edge": 0, "origin": 0}
        for url, n in fetched.report["bytes_by_source"].items():
            kind = LOCAL if url == LOCAL else "origin" if url in self._origin_urls else "edge"
            by_kind[kind] += n
        fetched.report["bytes_by_kind"] = by_kind
        if fetched.report["offline"] or fetched.report.get("fallback_origin"):
            return fetched  # the controller was unreachable a moment ago: do not wait on it
        self._report_demand(
            model_id,
            "miss" if by_kind["origin"] or fetched.report.get("bytes_pulled_by_edges") else "hit",
            fetched.report["seconds"],
            fetched.report["bytes_by_source"],
        )
        return fetched

    def _fetch(
        self,
        model_id: str,
        repo_id: str | None,
        revision: str,
        timer: _Timer,
        *,
        on_route: Callable[[Route], None] | None = None,
        defer: frozenset[BlockId] = frozenset(),
        after: threading.Event | None = None,
    ) -> FetchedModel:
        progress = self._progress
        cache = self.cache
        with cache.lock(model_id):
            if progress is not None:
                progress.on_phase(model_id, "route")
            with timer.phase("route"):
                fallback_origin: str | None = None
                try:
                    route, indexed_bytes = self._route(model_id, repo_id, revision)
                    offline = False
                except (ControllerUnavailableError, EdgeUnavailableError) as exc:
                    route_or_none = self._offline_route(model_id, exc)
                    if route_or_none is not None:
                        route, indexed_bytes, offline = route_or_none, 0, True
                    else:
                        fallback = self._fallback_route(model_id, repo_id, revision, exc)
                        if fallback is None:
                            raise
                        (route, indexed_bytes), offline = fallback, False
                        fallback_origin = self.fallback_origin_url
                manifest = route.manifest
                cache.put_manifest(manifest)
                self._origin_urls.update(s.url for s in route.sources if s.kind == "origin")
            if on_route is not None:
                on_route(route)
            sizes = manifest.block_sizes()
            report: dict[str, Any] = {
                "model_id": model_id,
                "repo_id": manifest.repo_id,
                "revision": manifest.revision,
                "manifest_id": manifest.manifest_id,
                "mode": self.mode,
                "offline": offline,
                "fallback_origin": fallback_origin,
                "sources": [s.url for s in route.sources],
                "origin_urls": [s.url for s in route.sources if s.kind == "origin"],
                "total_bytes": manifest.total_bytes,
                "block_bytes": sum(sizes.values()),
                "blocks": len(sizes),
            }
            download = DownloadResult()
            path = cache.model_dir(model_id)
            if indexed_bytes:
                download.bytes_by_source[route.sources[0].url] = indexed_bytes
                download.blocks_by_source[route.sources[0].url] = len(sizes)
                local_ids: set[BlockId] = set()
            elif cache.is_assembled(manifest):
                local_ids = set(sizes)
            else:
                local_ids, download = self._write_files(route, timer, defer=defer, after=after)
        local_bytes = sum(sizes[b] for b in local_ids)
        report["bytes_by_source"] = {LOCAL: local_bytes, **download.bytes_by_source}
        report["blocks_by_source"] = {LOCAL: len(local_ids), **download.blocks_by_source}
        report["bytes_pulled_by_edges"] = dict(download.pulled_by_source)
        report["bytes_local"] = local_bytes
        report["bytes_fetched"] = sum(download.bytes_by_source.values())
        report["blocks_cached"] = len(local_ids)
        report["blocks_fetched"] = sum(download.blocks_by_source.values())
        report["failures"] = [
            {"source": url, "block_id": bid, "reason": reason}
            for url, bid, reason in download.failures
        ]
        return FetchedModel(model_id, path, report)

    def _write_files(
        self,
        route: Route,
        timer: _Timer,
        *,
        defer: frozenset[BlockId] = frozenset(),
        after: threading.Event | None = None,
    ) -> tuple[set[BlockId], DownloadResult]:
        """Verify/copy local blocks, download the rest in place, publish the files.

        Blocks in ``defer`` are not downloaded at first: once ``after`` is set they are copied
        from the cache's complete models (another fetch brings them), and what is still
        missing then is downloaded.

        Returns:
            The blocks that came from the device itself, and what the download moved.
        """
        progress = self._progress
        manifest = route.manifest
        sizes = manifest.block_sizes()
        if progress is not None:
            progress.on_phase(manifest.model_id, "verify")
        with timer.phase("verify"):
            writer = self.cache.writer(manifest)
        try:
            with timer.phase("verify"):
                writer.copy_in(self.cache.block_index())
                missing = writer.missing()
            local_ids = set(sizes) - set(missing)
            if progress is not None:
                progress.on_plan(
                    manifest.model_id,
                    total_bytes=sum(missing.values()),
                    local_bytes=sum(sizes[b] for b in local_ids),
                    sources=[s.url for s in route.sources],
                )
                progress.on_phase(manifest.model_id, "download")
            with timer.phase("download"):
                download = self._download(route, writer, [b for b in missing if b not in defer])
            if any(b in defer for b in missing):
                if after is not None:
                    after.wait()  # not a phase of this model: the other fetch's time
                with timer.phase("verify"):
                    local_ids |= set(writer.copy_in(self.cache.block_index()))
                    rest = writer.missing()
                with timer.phase("download"):
                    download.add(self._download(route, writer, list(rest)))
            if progress is not None:
                progress.on_phase(manifest.model_id, "assemble")
            with timer.phase("assemble"):
                self.cache.publish(writer)
        finally:
            writer.close()
        return local_ids, download

    def _download(
        self, route: Route, writer: ModelWriter, missing: list[BlockId]
    ) -> DownloadResult:
        if not missing:
            return DownloadResult()
        on_bytes: Callable[[str, int], None] | None = (
            self._progress.on_bytes if self._progress is not None else None
        )
        downloader = Downloader(self._wire, writer, route, options=self.options, on_bytes=on_bytes)
        return downloader.run(missing)

    def _offline_route(self, model_id: str, cause: ClientError) -> Route | None:
        """A local-only route when the route's source failed but the model is cached.

        Logs the one warning line that says the cached copy is served, and why.
        """
        store = self.cache.store
        if not store.has_manifest(model_id):
            return None
        manifest = store.get_manifest(model_id)
        if not self.cache.is_assembled(manifest):
            return None
        source = {
            "controller": f"controller {self.controller_url}",
            "edge": f"edge node {self.edge_url}",
            "origin": f"origin {self.origin_url}",
        }[self.mode]
        state = f"failed with {cause.http_status}" if cause.http_status else "is unreachable"
        logger.warning(
            "%s %s: serving %s from the device cache (revision %s, may be out of date)",
            source,
            state,
            model_id,
            manifest.revision[:12],
        )
        return Route(model_id, manifest, (), {})

    def _report_demand(
        self, model_id: str, outcome: str, seconds: float, bytes_by_source: Mapping[str, int]
    ) -> None:
        if self.mode != "controller":
            return
        body: dict[str, Any] = {
            "model_id": model_id,
            "outcome": outcome,
            "seconds": seconds,
            "bytes_by_source": dict(bytes_by_source),
        }
        if self.area_id:
            body["area_id"] = self.area_id
        try:
            headers = bearer_header(self.auth_token)
            response = self._controller_call(
                lambda base: self._http.post(
                    f"{base}/v1/demand", json=body, timeout=2.0, headers=headers
                )
            )
            if response.status_code >= 400:
                logger.info("demand report refused: %s %s", response.status_code, response.text)
        except httpx.HTTPError as exc:  # reporting is best effort: never fail the fetch
            logger.info("demand report failed: %s", exc)


def _merge_base_report(report: dict[str, Any], base: Mapping[str, Any], timer: _Timer) -> None:
    report["base"] = dict(base)
    for key in ("bytes_by_source", "blocks_by_source", "bytes_pulled_by_edges"):
        merged = dict(report.get(key, {}))
        for url, n in base.get(key, {}).items():
            merged[url] = merged.get(url, 0) + n
        report[key] = merged
    for key in ("bytes_local", "bytes_fetched", "blocks_cached", "blocks_fetched"):
        report[key] = report[key] + base[key]
    for name, seconds in base.get("phase_seconds", {}).items():
        if name != "load":
            timer.seconds[name] = timer.seconds.get(name, 0.0) + seconds


def fetch_model(
    model_id: str,
    *,
    controller_url: str | Sequence[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    edge_url: str | None = None,
    origin_url: str | None = None,
    repo_id: str | None = None,
    fallback_origin_url: str | None = None,
    area_id: str | None = None,
    load: bool = True,
    progress: FetchProgress | None = None,
    auth_token: str | None = None,
) -> FetchedModel:
    """Fetch a model onto this device and load it: the TrimCache SDK in one call.

    Blocks already in the device cache are reused; the others come in parallel from the best
    source of the route, each verified against its sha256, with fallback to the next source and
    finally the origin. Each block is written in place, at its offset in the model's files, so
    the byte-identical files appear under ``cache_dir/models/<model_id>`` without a second copy.

    Args:
        model_id: the TrimCache model id, e.g. ``"bert-sst2"``.
        controller_url: the controller, or its replicas (comma-separated or a sequence: each
            request goes to one that answers) (None: ``TRIMCACHE_CONTROLLER_URL``, default
            ``http://127.0.0.1:8080``).
        cache_dir: the device cache (None: ``TRIMCACHE_CACHE_DIR``, default
            ``~/.cache/trimcache``).
        edge_url: fetch from this one edge node, without a controller.
        origin_url: fetch from this HF-compatible origin alone (with ``repo_id``).
        repo_id: the Hub repo id, for ``origin_url`` fetches (and an origin fallback).
        fallback_origin_url: the origin to fetch from when the controller is down (None:
            ``TRIMCACHE_ORIGIN_URL``, else none; see the module docstring).
        area_id: the user's area, sent with the route query and the demand report.
        load: load model and tokenizer before returning.
        progress: UI hooks (see :class:`FetchProgress`).
        auth_token: bearer token of the demand report (None: ``TRIMCACHE_AUTH_TOKEN``).

    Returns:
        A :class:`FetchedModel` with ``.path``, ``.model``, ``.tokenizer``, ``.predict(texts)``
        and ``.report``: ``bytes_by_source`` (source URL or ``"local"`` -> bytes),
        ``blocks_by_source``, ``seconds`` (total), ``phase_seconds`` (route, verify, download,
        assemble, load; "verify" opens the files and copies blocks cached models already
        hold, block hashes are checked while downloading), ``bytes_by_kind``
        (``local``/``edge``/``origin``), ``bytes_local``, ``bytes_fetched``,
        ``blocks_fetched``, ``blocks_cached``, ``failures``, ``offline`` (True when the
        route's source failed and the complete cached copy was served, with one warning) and
        ``fallback_origin`` (the origin's URL when the controller was down and the model came
        from there, else None).

    Raises:
        ModelNotFoundError: the model is unknown (also a ``LookupError``).
        NoSourceError: a block failed on every source; the message names them.
        ControllerUnavailableError: the controller is unreachable, the model is not cached
            (a cached model is served instead, with one warning: see the module docstring)
            and there is no fallback origin (or no repo id for it).
        EdgeUnavailableError: the only source (``edge_url``/``origin_url``) is unreachable.
        DiskFullError: the device cache ran out of space (the cache stays consistent).

    >>> fetch_model("bert-sst2").predict(["I loved it"])  # doctest: +SKIP
    [{'label': 'positive', 'score': 0.98}]
    """
    with Client(
        controller_url=controller_url,
        cache_dir=cache_dir,
        edge_url=edge_url,
        origin_url=origin_url,
        fallback_origin_url=fallback_origin_url,
        area_id=area_id,
        auth_token=auth_token,
    ) as client:
        return client.fetch(model_id, repo_id=repo_id, load=load, progress=progress)
