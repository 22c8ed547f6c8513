"""`trimcache testbed up|down|status`: the process testbed on the command line.

The work is in :mod:`testbed.launcher`; this module only parses flags and prints. ``up`` prints
the URLs and writes ``STATE_DIR/testbed.json``; ``status`` exits 1 when any service is down.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from testbed.launcher import LinkProfile

MIB = 1024 * 1024


def add_parsers(subparsers: Any) -> None:
    testbed = subparsers.add_parser(
        "testbed", help="run redis, origin, controller and edge nodes as local processes"
    )
    sub = testbed.add_subparsers(dest="testbed_command", metavar="ACTION", required=True)

    up = sub.add_parser("up", help="start every service; return once all are healthy")
    up.add_argument("--dir", type=Path, required=True, metavar="STATE_DIR", dest="state_dir")
    up.add_argument("--edges", type=int, default=3, metavar="N", help="edge nodes (default 3)")
    up.add_argument(
        "--zoo", type=Path, default=None, metavar="DIR", help="model zoo (built if absent)"
    )
    up.add_argument(
        "--capacity-mb", type=int, default=512, metavar="N", help="per edge node (default 512)"
    )
    up.add_argument(
        "--profile",
        choices=("test", "full"),
        default="full",
        help="full: full zoo, emulated links; test: small zoo, no shaping (default full)",
    )
    up.add_argument(
        "--backhaul-mbps",
        type=float,
        default=None,
        metavar="R",
        help="origin link rate, Mbit/s, shared by all downloads (full profile: 100)",
    )
    up.add_argument(
        "--backhaul-latency-ms",
        type=float,
        default=None,
        metavar="L",
        help="origin latency per request (full profile: 30)",
    )
    up.add_argument(
        "--radio-mbps",
        type=float,
        default=None,
        metavar="R",
        help="edge node link rate, Mbit/s (full profile: 400)",
    )
    up.add_argument(
        "--radio-latency-ms", type=float, default=None, metavar="L",
        help="edge node latency per response (full profile: 5)",
    )  # fmt: skip
    up.add_argument("--solver", default=None, help="controller placement solver")
    up.add_argument(
        "--auth-token",
        default=None,
        help="control-plane token (default: $TRIMCACHE_AUTH_TOKEN, else a random one)",
    )
    up.add_argument("--seed", type=int, default=0, help="zoo build seed")
    up.add_argument(
        "--timeout-s", type=float, default=120.0, help="per-stage health timeout (default 120)"
    )
    up.set_defaults(func=_up)

    down = sub.add_parser("down", help="stop every service of a testbed")
    down.add_argument("--dir", type=Path, required=True, metavar="STATE_DIR", dest="state_dir")
    down.add_argument("--grace-s", type=float, default=10.0, help="SIGTERM grace (default 10)")
    down.set_defaults(func=_down)

    status = sub.add_parser("status", help="health of each service (exit 1 if any is down)")
    status.add_argument("--dir", type=Path, required=True, metavar="STATE_DIR", dest="state_dir")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=_status)


def _link(
    rate_mbps: float | None, latency_ms: float | None, default: LinkProfile, name: str
) -> LinkProfile | None:
    """A link from the flags, the profile's default filling what is not given."""
    from testbed.launcher import LinkProfile

    if rate_mbps is None and latency_ms is None:
        return None
    if (rate_mbps is not None and rate_mbps <= 0) or (latency_ms is not None and latency_ms < 0):
        raise ValueError(f"{name}: rate must be > 0 and latency >= 0")
    return LinkProfile(
        rate_mbps if rate_mbps is not None else default.rate_mbps,
        latency_ms if latency_ms is not None else default.latency_ms,
    )


def _up(args: argparse.Namespace) -> int:
    from testbed.launcher import DEFAULT_LINKS, LaunchOptions, up

    if args.capacity_mb <= 0:
        raise ValueError(f"--capacity-mb must be positive, got {args.capacity_mb}")
    backhaul_default, radio_default = DEFAULT_LINKS[args.profile]
    options = LaunchOptions(
        state_dir=args.state_dir,
        edges=args.edges,
        zoo_dir=args.zoo,
        capacity_bytes=args.capacity_mb * MIB,
        profile=args.profile,
        backhaul=_link(args.backhaul_mbps, args.backhaul_latency_ms, backhaul_default, "backhaul"),
        radio=_link(args.radio_mbps, args.radio_latency_ms, radio_default, "radio"),
        auth_token=args.auth_token or os.environ.get("TRIMCACHE_AUTH_TOKEN") or None,
        seed=args.seed,
        timeout_s=args.timeout_s,
        solver=args.solver,
    )
    state = up(options, on_progress=lambda message: sys.stderr.write(f"{message}\n"))
    out = sys.stdout.write
    out(f"controller  {state['controller_url']}\n")
    out(f"origin      {state['origin_url']}\n")
    for url in state["edge_urls"]:
        out(f"edge        {url}\n")
    out(f"redis       {state['redis_url']}\n")
    out(f"state       {Path(state['state_dir']) / 'testbed.json'}\n")
    return 0


def _down(args: argparse.Namespace) -> int:
    from testbed.launcher import down

    stopped = down(args.state_dir, grace_s=args.grace_s)
    if stopped:
        sys.stdout.write(f"stopped {', '.join(stopped)}\n")
    else:
        sys.stdout.write(f"no running testbed in {args.state_dir}\n")
    return 0


def _status(args: argparse.Namespace) -> int:
    from testbed.launcher import status

    services = status(args.state_dir)
    if args.json:
        sys.stdout.write(json.dumps([s.to_json() for s in services], indent=2) + "\n")
    elif not services:
        sys.stdout.write(f"no testbed in {args.state_dir}\n")
    for service in [] if args.json else services:
        state = "up" if service.healthy else ("unhealthy" if service.running else "down")
        sys.stdout.write(
            f"{service.name:<12}{state:<11}{service.url:<30}pid {service.pid:<8}"
            f"{'' if service.healthy else service.detail}\n"
        )
    return 0 if services and all(s.healthy for s in services) else 1
