"""``trimcache fetch | predict | cache`` — the client SDK on the command line.

The controller comes from ``--controller`` or ``TRIMCACHE_CONTROLLER_URL`` (default
``http://127.0.0.1:8080``), the device cache from ``--cache-dir`` or ``TRIMCACHE_CACHE_DIR``
(default ``~/.cache/trimcache``); both are resolved by :func:`client.resolve_settings`. Progress
bars go to stderr, results to stdout (``--json`` for machine-readable output). Errors propagate
as :class:`core.errors.TrimCacheError` subclasses, which ``testbed.cli`` prints as one line (an
unreachable controller is one line that names its URL and how to point at another).

stderr carries only what concerns the user: the SDK's warnings (``client`` logger, e.g. "serving
bert-sst2 from the device cache") as one ``trimcache: warning: ...`` line each, and the bars;
transformers' own bars, logs and Python warnings are silenced. Printed numbers are rounded (sizes
in KB/MB/GB with one decimal, seconds with two, ratios as percents; ``--json`` floats to 3 digits,
scores to 4).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import warnings
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from client._model import FetchedModel


def add_parsers(subparsers: Any) -> None:
    """Register ``fetch``, ``predict`` and ``cache`` on the ``trimcache`` parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--controller",
        help="controller URL, or replicas comma-separated, tried in turn"
        " (env TRIMCACHE_CONTROLLER_URL)",
    )
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
        description="Download a model's missing blocks (verified) into its files.",
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
    verify = cache_sub.add_parser(
        "verify", parents=[common], help="re-hash every block of the cached models' files"
    )
    verify.add_argument("model_id", metavar="MODEL_ID", nargs="?", help="only this model")
    verify.set_defaults(func=_cmd_cache_verify)


def _rounded(value: Any, digits: int = 3) -> Any:
    """``value`` with every float rounded (for ``--json`` output)."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v, digits) for v in value]
    return value


def _quiet_libraries() -> None:
    """Only TrimCache talks on stderr: its warnings one line each, no library noise.

    The ``client`` logger's warnings print as ``trimcache: warning: <message>``; transformers
    and huggingface_hub logs and bars, and Python warnings of the libraries, are off (unless
    the user set their own environment variables, or ``TRIMCACHE_DEBUG``).
    """
    sdk = logging.getLogger("client")
    if not any(getattr(h, "_trimcache", False) for h in sdk.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("trimcache: warning: %(message)s"))
        handler.setLevel(logging.WARNING)
        handler._trimcache = True  # type: ignore[attr-defined]
        sdk.addHandler(handler)
        sdk.propagate = False
    if os.environ.get("TRIMCACHE_DEBUG"):
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    for library in ("transformers", "huggingface_hub", "torch", "peft"):
        warnings.filterwarnings("ignore", module=rf"{library}(\.|$)")


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

    _quiet_libraries()
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
        out = _rounded({"path": str(model.path), **report})
        sys.stdout.write(json.dumps(out, default=str) + "\n")
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
        sys.stdout.write(json.dumps(_rounded(results, 4)) + "\n")
        return 0
    for text, result in zip(args.texts, results, strict=True):
        sys.stdout.write(f"{result['label']}\t{result['score']:.4f}\t{text}\n")
    return 0


def _cmd_cache_ls(args: argparse.Namespace) -> int:
    """List cached models with what they really take on disk (their files: the only copy)."""
    from client._cache import DeviceCache
    from client._client import resolve_settings

    cache = DeviceCache(resolve_settings(None, args.cache_dir)[1])
    models = cache.list_models()
    usage = cache.disk_usage()
    if args.json:
        rows = []
        for m in models:
            disk = usage.by_model[m.model_id]
            rows.append(
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
                    "disk_bytes": disk.total_bytes,
                    "files_disk_bytes": disk.files_bytes,
                    "blocks_disk_bytes": disk.blocks_bytes,
                    "own_blocks_disk_bytes": disk.own_blocks_bytes,
                }
            )
        disk_totals = {
            "total_bytes": usage.total_bytes,
            "store_bytes": usage.store_bytes,
            "models_bytes": usage.models_bytes,
            "other_bytes": usage.other_bytes,
        }
        out = {"models": rows, **cache.stats(), "disk": disk_totals}
        sys.stdout.write(json.dumps(out) + "\n")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"device cache {cache.root}")
    table.add_column("model", no_wrap=True)
    for name in ("size", "present", "on disk"):
        table.add_column(name, justify="right")
    table.add_column("state")
    for m in models:
        disk = usage.by_model[m.model_id]
        state = "ready" if m.assembled and m.complete else "complete" if m.complete else "partial"
        table.add_row(
            m.model_id,
            _human(m.total_bytes),
            f"{100 * m.present_bytes / (m.unique_bytes or 1):.0f} %",
            _human(disk.files_bytes),
            state,
        )
    console = Console(highlight=False)
    console.print(table)
    console.print(
        f"on disk: {_human(usage.total_bytes)} = {_human(usage.models_bytes)} of model files"
        f" (models/, the only copy of their blocks) + {_human(usage.store_bytes)} of manifests"
        f" (store/) + {_human(usage.other_bytes)} other"
    )
    return 0


def _cmd_cache_rm(args: argparse.Namespace) -> int:
    from client._cache import DeviceCache
    from client._client import resolve_settings

    cache = DeviceCache(resolve_settings(None, args.cache_dir)[1])
    before = cache.disk_usage().total_bytes
    cache.remove(args.model_id)
    freed = before - cache.disk_usage().total_bytes
    sys.stdout.write(f"removed {args.model_id} (freed {_human(freed)} on disk)\n")
    return 0


def _cmd_cache_verify(args: argparse.Namespace) -> int:
    """Re-hash the cached files; a model with bad blocks goes back to partial (refetch them)."""
    from client._cache import DeviceCache
    from client._client import resolve_settings

    cache = DeviceCache(resolve_settings(None, args.cache_dir)[1])
    results = cache.verify(args.model_id)
    bad_models = 0
    for model_id, bad in results.items():
        if bad:
            bad_models += 1
            sys.stdout.write(
                f"{model_id}: {len(bad)} bad blocks (fetch it again to re-fetch only those)\n"
            )
        else:
            sys.stdout.write(f"{model_id}: ok\n")
    if not results:
        sys.stdout.write("no complete model in the device cache\n")
    return 1 if bad_models else 0
