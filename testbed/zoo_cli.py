"""`trimcache zoo build` and `trimcache origin serve`: the testbed's model zoo and local Hub.

Heavy imports (torch, FastAPI, uvicorn) happen inside the handlers so ``trimcache --help`` stays
fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any


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
    build_zoo(
        args.out,
        seed=args.seed,
        profile=args.profile,
        synthetic=args.synthetic,
        synthetic_models=args.synthetic_models,
        synthetic_mb=args.synthetic_mb,
        only=only,
        max_steps=args.max_steps,
    )
    return 0


def _origin_serve(args: argparse.Namespace) -> int:
    import uvicorn

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
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
