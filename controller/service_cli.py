"""``trimcache controller serve``: run the controller service (options override CONTROLLER_* env).

Registered by :mod:`controller.cli` (one entry of its ``COMMANDS``). FastAPI, uvicorn and redis
are imported inside the handler so ``trimcache --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

# Option name -> Settings field; unset options leave the env/default value.
_OPTIONS: tuple[tuple[str, str, type, str], ...] = (
    ("--host", "host", str, "bind address (CONTROLLER_HOST)"),
    ("--port", "port", int, "port (CONTROLLER_PORT, default 8080)"),
    ("--redis-url", "redis_url", str, "Redis URL (CONTROLLER_REDIS_URL)"),
    ("--origin-url", "origin_url", str, "HF-compatible origin (CONTROLLER_ORIGIN_URL)"),
    ("--solver", "solver", str, "placement solver (CONTROLLER_SOLVER)"),
    ("--objective", "objective", str, "hit-ratio | delay (CONTROLLER_OBJECTIVE)"),
    ("--delay-solver", "delay_solver", str, "delay objective's solver (CONTROLLER_DELAY_SOLVER)"),
    ("--auth-token", "auth_token", str, "bearer token (CONTROLLER_AUTH_TOKEN)"),
    ("--topology-file", "topology_file", str, "topology JSON (CONTROLLER_TOPOLOGY_FILE)"),
    ("--plan-interval-s", "plan_interval_s", float, "periodic re-plan (0: on changes only)"),
    ("--heartbeat-expiry-s", "heartbeat_expiry_s", float, "node expiry after last heartbeat"),
    ("--replica-id", "replica_id", str, "name among replicas on one Redis (CONTROLLER_REPLICA_ID)"),
    (
        "--replan-min-gain",
        "replan_min_gain",
        float,
        "least net hit-ratio gain a re-plan needs to move blocks (CONTROLLER_REPLAN_MIN_GAIN)",
    ),
)


def add_serve_parser(subparsers: Any) -> None:
    group = subparsers.add_parser("controller", help="the controller service")
    commands = group.add_subparsers(dest="controller_command", metavar="COMMAND", required=True)
    serve = commands.add_parser(
        "serve", help="run the controller (FastAPI + Redis state + planner loop)"
    )
    for flag, dest, kind, text in _OPTIONS:
        serve.add_argument(flag, dest=dest, type=kind, default=None, help=text)
    serve.set_defaults(func=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from controller.app import SERVER, create_app, freeze_startup_objects
    from controller.settings import Settings
    from core import serving

    logging.basicConfig(
        level=os.environ.get("TRIMCACHE_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
    overrides = {dest: getattr(args, dest) for _, dest, _, _ in _OPTIONS}
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    app = create_app(settings)
    freeze_startup_objects()
    serving.run(app, host=settings.host, port=settings.port, **SERVER)
    return 0
