"""``trimcache edge serve``: run an edge node (options override the ``EDGE_*`` env vars)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

# option -> Settings field; every option defaults to None = "take the env var / default".
_OPTIONS: tuple[tuple[str, str, Any, str], ...] = (
    ("--node-id", "node_id", str, "node id (EDGE_NODE_ID)"),
    ("--data-dir", "data_dir", Path, "block store directory (EDGE_DATA_DIR)"),
    ("--capacity-bytes", "capacity_bytes", int, "store capacity (EDGE_CAPACITY_BYTES)"),
    ("--origin-url", "origin_url", str, "default origin hub URL (EDGE_ORIGIN_URL)"),
    ("--controller-url", "controller_url", str, "controller URL(s), comma-separated"),
    ("--auth-token", "auth_token", str, "bearer token of control endpoints"),
    ("--host", "host", str, "listen address (EDGE_HOST, default 127.0.0.1)"),
    ("--port", "port", int, "listen port (EDGE_PORT, default 8001)"),
    ("--public-url", "public_url", str, "URL others reach this node at"),
    ("--position-x-m", "position_x_m", float, "position x in metres (EDGE_POSITION_X_M)"),
    ("--position-y-m", "position_y_m", float, "position y in metres (EDGE_POSITION_Y_M)"),
    ("--heartbeat-interval-s", "heartbeat_interval_s", float, "seconds between heartbeats"),
    ("--link-rate-bytes-per-s", "link_rate_bytes_per_s", float, "radio link rate emulation"),
    ("--link-latency-ms", "link_latency_ms", float, "radio link latency emulation"),
    ("--fetch-workers", "fetch_workers", int, "parallel transfers when applying a plan"),
    ("--agent-checkpoint", "agent_checkpoint", Path, "run this marl agent (decentralised)"),
)


def add_parsers(subparsers: Any) -> None:
    edge = subparsers.add_parser("edge", help="edge node service")
    sub = edge.add_subparsers(dest="edge_command", metavar="ACTION", required=True)
    serve = sub.add_parser("serve", help="run an edge node (FastAPI + uvicorn)")
    for flag, dest, kind, help_text in _OPTIONS:
        serve.add_argument(flag, dest=dest, type=kind, default=None, help=help_text)
    serve.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from edge_node.__main__ import serve
    from edge_node.settings import Settings

    overrides = {
        dest: getattr(args, dest) for _, dest, _, _ in _OPTIONS if getattr(args, dest) is not None
    }
    settings = Settings(**overrides)
    check_agent(settings)
    serve(settings)
    return 0


def check_agent(settings: Any) -> None:
    """Fail before serving when ``EDGE_AGENT_CHECKPOINT`` cannot drive this node (one line:
    :class:`edge_node.agent.AgentCheckpointError` is a ValueError)."""
    if settings.agent_checkpoint is not None:
        from edge_node.agent import load_policy

        load_policy(settings.agent_checkpoint, settings.node_id)
