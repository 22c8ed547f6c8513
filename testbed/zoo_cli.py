"""`trimcache zoo build` and `trimcache origin serve`: the testbed's model zoo and local Hub.

``zoo build`` shows its progress on stderr: rich bars (the models, and the current model's
training steps) on a terminal, one ``zoo: ...`` line per event otherwise (logs, pipes, the
launcher reading it). Heavy imports (torch, FastAPI, uvicorn) happen inside the handlers so
``trimcache --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from testbed.zoo import BuildProgress


def add_parsers(subparsers: Any) -> None:
    zoo = subparsers.add_parser("zoo", help="the offline model zoo")
    zoo_sub = zoo.add_subparsers(dest="zoo_command", metavar="ZOO_COMMAND", required=True)
    build = zoo_sub.add_parser(
        "build", help="fine-tune the zoo's models from all-MiniLM-L6-v2 (offline)"
    )
    build.add_argument("--out", type=Path, required=True, help="zoo directory to write")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument(
        "--profile",
        choices=("full", "test"),
        default="full",
        help="full: every model (a few minutes); test: a small zoo for the test suite",
    )
    build.add_argument(
        "--synthetic",
        action="store_true",
        help="also write a family of large synthetic (random, seeded) models",
    )
    build.add_argument("--synthetic-models", type=int, default=3, metavar="N")
    build.add_argument("--synthetic-mb", type=int, default=256, metavar="MB")
    build.add_argument(
        "--only",
        default=None,
        metavar="MODEL_IDS",
        help="comma-separated model ids to build (the base is always built)",
    )
    build.add_argument(
        "--max-steps",
        type=int,
        default=None,
        metavar="N",
        help="cap every model's training steps (smoke builds)",
    )
    build.set_defaults(func=_zoo_build)

    origin = subparsers.add_parser("origin", help="local Hugging Face-compatible origin")
    origin_sub = origin.add_subparsers(
        dest="origin_command", metavar="ORIGIN_COMMAND", required=True
    )
    serve = origin_sub.add_parser("serve", help="serve ZOO_DIR/repos through the Hub API")
    serve.add_argument("--root", type=Path, required=True, help="zoo directory")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument(
        "--rate-mbps",
        type=float,
        default=None,
        help="emulated backhaul rate in megabits per second (all downloads share it)",
    )
    serve.add_argument(
        "--latency-ms", type=float, default=0.0, help="emulated latency added per request"
    )
    serve.set_defaults(func=_origin_serve)


def _zoo_build(args: argparse.Namespace) -> int:
    # Before torch is imported: OpenMP busy-waiting is ruinous on shared cores (see zoo.py).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from testbed.zoo import build_zoo

    only = [m for m in args.only.split(",") if m] if args.only else None
    progress = _rich_progress() if sys.stderr.isatty() else None
    try:
        build_zoo(
            args.out,
            seed=args.seed,
            profile=args.profile,
            synthetic=args.synthetic,
            synthetic_models=args.synthetic_models,
            synthetic_mb=args.synthetic_mb,
            only=only,
            max_steps=args.max_steps,
            progress=progress,
        )
    finally:
        if progress is not None:
            progress.close()  # type: ignore[attr-defined]
    return 0


def _rich_progress() -> BuildProgress:
    """Rich bars on stderr: one for the models, one for the current model's steps."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from testbed.zoo import BuildProgress

    class RichProgress(BuildProgress):
        def __init__(self) -> None:
            super().__init__()
            self.console = Console(stderr=True)
            self.bars = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[note]}"),
                console=self.console,
            )
            self.models = self.bars.add_task("zoo models", total=None, note="")
            self.current: Any = None
            self.bars.start()

        def line(self, message: str) -> None:
            self.console.print(f"zoo: {message}", highlight=False)

        def model_started(self, index: int, total: int, repo_id: str, steps: int) -> None:
            self.bars.update(self.models, total=total, completed=index - 1, note=repo_id)
            if self.current is not None:
                self.bars.remove_task(self.current)
            self.current = self.bars.add_task(
                f"  {repo_id.rpartition('/')[2]}", total=steps or 1, note=""
            )
            if not steps:
                self.bars.update(self.current, completed=1, note="copying files")

        def step(self, model_id: str, step: int, steps: int, loss: float, elapsed_s: float) -> None:
            del model_id, elapsed_s
            if self.current is not None:
                self.bars.update(self.current, completed=step, note=f"loss {loss:.3f}")

        def model_finished(self, model_id: str, detail: str) -> None:
            self.line(f"{model_id}: {detail}")

        def finished(self, repos: int, out: Path, seconds: float) -> None:
            self.bars.update(self.models, completed=repos, note="")
            self.close()
            super().finished(repos, out, seconds)

        def close(self) -> None:
            self.bars.stop()

    return RichProgress()


def _origin_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from core.asgi import KEEP_ALIVE_S
    from testbed.origin import create_app

    if not (args.root / "repos").is_dir():
        raise ValueError(f"{args.root} has no repos/ directory (build it: trimcache zoo build)")
    rate = args.rate_mbps * 1e6 / 8 if args.rate_mbps else None
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    app = create_app(
        args.root,
        rate_bytes_per_s=rate,
        latency_ms=args.latency_ms,
        auth_token=os.environ.get("ORIGIN_AUTH_TOKEN") or None,
    )
    uvicorn.run(
        app, host=args.host, port=args.port, log_level="warning", timeout_keep_alive=KEEP_ALIVE_S
    )
    return 0
