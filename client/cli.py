"""``trimcache fetch | predict | cache`` — the client SDK on the command line.

The controller comes from ``--controller`` or ``TRIMCACHE_CONTROLLER_URL`` (default
``http://127.0.0.1:8080``), the device cache from ``--cache-dir`` or ``TRIMCACHE_CACHE_DIR``
(default ``~/.cache/trimcache``); both are resolved by :func:`client.resolve_settings`. Progress
bars go to stderr, results to stdout (``--json`` for machine-readable output). Errors propagate
as :class:`core.errors.TrimCacheError` subclasses, which ``testbed.cli`` prints as one line.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from client._model import FetchedModel


def add_parsers(subparsers: Any) -> None:
    """Register ``fetch``, ``predict`` and ``cache`` on the ``trimcache`` parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--controller", help="controller URL (env TRIMCACHE_CONTROLLER_URL)")
    common.add_argument("--cache-dir", help="device cache dir (env TRIMCACHE_CACHE_DIR)")

    source = argparse.ArgumentParser(add_help=False)
    source.add_argument("--edge", help="fetch from this edge node only (no controller)")
    source.add_argument("--origin", help="fetch from this HF-compatible origin only")
    source.add_argument("--repo-id", help="Hub repo id (with --origin)")
    source.add_argument("--area", help="user area id sent with the route query")
    source.add_argument("--json", action="store_true", help="print JSON instead of tables")

    fetch = subparsers.add_parser(
        "fetch",
        parents=[common, source],
        help="download a model into the device cache, with progress bars",
        description="Download a model's missing blocks (verified), rebuild its files.",
    )
    fetch.add_argument("model_id", metavar="MODEL_ID")
    fetch.add_argument("--load", action="store_true", help="also load it with transformers")
    fetch.add_argument("--quiet", action="store_true", help="no progress bars")
    fetch.set_defaults(func=_cmd_fetch)

    predict = subparsers.add_parser(
        "predict",
        parents=[common, source],
        help="fetch a model (if needed) and classify texts",
    )
    predict.add_argument("model_id", metavar="MODEL_ID")
    predict.add_argument("texts", metavar="TEXT", nargs="+")
    predict.set_defaults(func=_cmd_predict)

    cache = subparsers.add_parser("cache", help="inspect or prune the device cache")
    cache_sub = cache.add_subparsers(dest="cache_command", metavar="CACHE_COMMAND", required=True)
    ls = cache_sub.add_parser("ls", parents=[common], help="list cached models")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_cmd_cache_ls)
    rm = cache_sub.add_parser("rm", parents=[common], help="remove a cached model")
    rm.add_argument("model_id", metavar="MODEL_ID")
    rm.set_defaults(func=_cmd_cache_rm)


def _human(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(nbytes) < 1000 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return f"{nbytes:.1f} GB"  # pragma: no cover


class _Bars:
    """FetchProgress drawn with rich: one bar for the model, one per source."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._lock = threading.Lock()
        self._model_id = ""
        self._total: TaskID | None = None
        self._sources: dict[str, TaskID] = {}

    def on_phase(self, model_id: str, phase: str) -> None:
        with self._lock:
            self._model_id = model_id
            if self._total is None:
                self._total = self._progress.add_task(f"{model_id}: {phase}", total=None)
            else:
                self._progress.update(self._total, description=f"{model_id}: {phase}")

    def on_plan(
        self, model_id: str, *, total_bytes: int, local_bytes: int, sources: list[str]
    ) -> None:
        with self._lock:
            if self._total is not None:
                self._progress.update(
                    self._total,
                    total=total_bytes,
                    completed=0,
                    description=f"{model_id} ({_human(local_bytes)} already local)",
                )

    def on_bytes(self, source_url: str, nbytes: int) -> None:
        with self._lock:
            task = self._sources.get(source_url)
            if task is None:
                task = self._progress.add_task(f"  from {source_url}", total=None)
                self._sources[source_url] = task
            self._progress.advance(task, nbytes)
            if self._total is not None:
                self._progress.advance(self._total, nbytes)


def _client_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "controller_url": args.controller,
        "cache_dir": args.cache_dir,
        "edge_url": getattr(args, "edge", None),
        "origin_url": getattr(args, "origin", None),
        "area_id": getattr(args, "area", None),
    }


def _fetch(args: argparse.Namespace, *, load: bool, bars: bool) -> FetchedModel:
    from rich.console import Console

    from client._client import Client

    console = Console(stderr=True)
    with Client(**_client_kwargs(args)) as client:
        if not bars or not console.is_terminal:  # bars only on a terminal
            return client.fetch(args.model_id, repo_id=args.repo_id, load=load)
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TransferSpeedColumn,
        )

        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console, transient=True) as progress:
            return client.fetch(
                args.model_id, repo_id=args.repo_id, load=load, progress=_Bars(progress)
            )


def _cmd_fetch(args: argparse.Namespace) -> int:
    model = _fetch(args, load=args.load, bars=not (args.quiet or args.json))
    report = model.report
    if args.json:
        sys.stdout.write(json.dumps({"path": str(model.path), **report}, default=str) + "\n")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{model.model_id} -> {model.path}")
    table.add_column("source")
    table.add_column("bytes", justify="right")
    table.add_column("blocks", justify="right")
    table.add_column("share", justify="right")
    total = sum(report["bytes_by_source"].values()) or 1
    for url, nbytes in sorted(report["bytes_by_source"].items(), key=lambda kv: -kv[1]):
        table.add_row(
            url,
            _human(nbytes),
            str(report["blocks_by_source"].get(url, 0)),
            f"{100 * nbytes / total:.1f} %",
        )
    phases = ", ".join(
        f"{name} {s:.2f}s"
        for name, s in report["phase_seconds"].items()
        if name != "load" or args.load
    )
    console = Console(highlight=False)
    console.print(table)
    kinds = ", ".join(f"{kind} {_human(n)}" for kind, n in report["bytes_by_kind"].items())
    console.print(f"total {report['seconds']:.2f}s ({phases}); bytes: {kinds}")
    if report["failures"]:
        console.print(f"{len(report['failures'])} block transfer(s) failed and were refetched")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    model = _fetch(args, load=True, bars=False)
    results = model.predict(args.texts)
    if args.json:
        sys.stdout.write(json.dumps(results) + "\n")
        return 0
    for text, result in zip(args.texts, results, strict=True):
        sys.stdout.write(f"{result['label']}\t{result['score']:.4f}\t{text}\n")
    return 0


def _cmd_cache_ls(args: argparse.Namespace) -> int:
    from client._cache import DeviceCache
    from client._client import resolve_settings

    cache = DeviceCache(resolve_settings(None, args.cache_dir)[1])
    models = cache.list_models()
    if args.json:
        rows = [
            {
                "model_id": m.model_id,
                "repo_id": m.repo_id,
                "revision": m.revision,
                "total_bytes": m.total_bytes,
                "present_bytes": m.present_bytes,
                "unique_bytes": m.unique_bytes,
                "complete": m.complete,
                "assembled": m.assembled,
                "path": str(m.path),
            }
            for m in models
        ]
        sys.stdout.write(json.dumps({"models": rows, **cache.stats()}) + "\n")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"device cache {cache.root}")
    for name in ("model", "repo", "size", "blocks present", "state"):
        table.add_column(name)
    for m in models:
        state = "ready" if m.assembled and m.complete else "complete" if m.complete else "partial"
        table.add_row(
            m.model_id,
            m.repo_id,
            _human(m.total_bytes),
            f"{_human(m.present_bytes)} / {_human(m.unique_bytes)}",
            state,
        )
    console = Console(highlight=False)
    console.print(table)
    stats = cache.stats()
    console.print(f"{stats['blocks']} blocks, {_human(stats['physical_bytes'])} on disk")
    return 0


def _cmd_cache_rm(args: argparse.Namespace) -> int:
    from client._cache import DeviceCache
    from client._client import resolve_settings

    cache = DeviceCache(resolve_settings(None, args.cache_dir)[1])
    freed = cache.remove(args.model_id)
    sys.stdout.write(f"removed {args.model_id} (freed {_human(freed)} of blocks)\n")
    return 0
