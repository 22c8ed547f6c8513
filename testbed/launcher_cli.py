"""`trimcache testbed up|down|status`: the process testbed on the command line.

The work is in :mod:`testbed.launcher`; this module only parses flags and prints. ``up`` reports
every stage on stderr, prints the URLs and ``export TRIMCACHE_CONTROLLER_URL=...`` and
``export TRIMCACHE_AUTH_TOKEN=...`` lines on stdout, and writes ``STATE_DIR/testbed.json``;
``status`` shows the services, the catalogue, the placement, what each edge holds and the
measured hit ratio, and exits 1 when any service is down. Without ``--dir``, ``up`` uses
``~/.cache/trimcache-testbed/state`` and ``down``/``status`` the last testbed started on this
machine (testbed/paths.py).
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

    up = sub.add_parser(
        "up", help="start every service; return once the testbed is ready to serve models"
    )
    up.add_argument(
        "--dir",
        type=Path,
        default=None,
        metavar="STATE_DIR",
        dest="state_dir",
        help="state dir (default ~/.cache/trimcache-testbed/state)",
    )
    up.add_argument("--edges", type=int, default=3, metavar="N", help="edge nodes (default 3)")
    up.add_argument(
        "--zoo",
        type=Path,
        default=None,
        metavar="DIR",
        help="model zoo dir (built into it if absent; default: the machine's shared zoo cache, "
        "~/.cache/trimcache-testbed/zoo or $TRIMCACHE_ZOO_CACHE, built once)",
    )
    up.add_argument(
        "--controllers",
        type=int,
        default=1,
        metavar="N",
        help="controller replicas on the one Redis, all serving, one planning (default 1)",
    )
    up.add_argument(
        "--controller-port",
        type=int,
        default=8080,
        metavar="PORT",
        help="controller port when free, else a random one; 0: random (default 8080)",
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
    up.add_argument(
        "--world", default=None, metavar="FILE|default",
        help="emulate this world (trimcache.world/v1, testbed/world.py): the delay model's radio, "
        "shared per CoMP cluster, and its backhaul; 'default': the grid's world (its --radio-* "
        "and --backhaul-* replace those options)",
    )  # fmt: skip
    up.add_argument(
        "--cluster-size", type=int, default=1, metavar="K",
        help="with --world default: consecutive edges in CoMP clusters of K (default 1)",
    )  # fmt: skip
    up.add_argument(
        "--broadcast-window-s", type=float, default=0.0, metavar="W",
        help="with --world: requests for one block within W seconds share one transmission "
        "(EDGE_BROADCAST_WINDOW_S; default 0: off)",
    )  # fmt: skip
    up.add_argument(
        "--solver", default=None,
        help="controller placement solver (with --objective delay: a delay solver)",
    )  # fmt: skip
    up.add_argument(
        "--objective", choices=("hit-ratio", "delay"), default=None,
        help="what the controller minimises: misses (default) or download delay",
    )  # fmt: skip
    up.add_argument(
        "--marl-checkpoint", type=Path, default=None, metavar="PATH",
        help="trained agents for --objective delay --solver marl",
    )  # fmt: skip
    up.add_argument(
        "--cache-policy", choices=("lru", "lfu"), default=None,
        help="edges cache on demand with this policy instead of holding a planned placement",
    )  # fmt: skip
    up.add_argument(
        "--agent-checkpoint", type=Path, default=None, metavar="PATH",
        help="decentralised mode: every edge runs this trained marl agent "
        "(EDGE_AGENT_CHECKPOINT) instead of holding a planned placement",
    )  # fmt: skip
    up.add_argument(
        "--auth-token",
        default=None,
        help="control-plane token (default: $TRIMCACHE_AUTH_TOKEN, else a random one)",
    )
    up.add_argument("--seed", type=int, default=0, help="zoo build seed")
    up.add_argument(
        "--timeout-s", type=float, default=120.0, help="per-stage health timeout (default 120)"
    )
    up.add_argument(
        "--ready-timeout-s", type=float, default=900.0,
        help="bound on indexing + the first placement being applied (default 900)",
    )  # fmt: skip
    up.set_defaults(func=_up)

    down = sub.add_parser("down", help="stop every service of a testbed")
    down.add_argument(
        "--dir", type=Path, default=None, metavar="STATE_DIR", dest="state_dir",
        help="state dir (default: the last testbed started)",
    )  # fmt: skip
    down.add_argument("--grace-s", type=float, default=10.0, help="SIGTERM grace (default 10)")
    down.set_defaults(func=_down)

    status = sub.add_parser(
        "status",
        help="services, models, placement, edge holdings, hit ratio (exit 1 if a service is down)",
    )
    status.add_argument(
        "--dir", type=Path, default=None, metavar="STATE_DIR", dest="state_dir",
        help="state dir (default: the last testbed started)",
    )  # fmt: skip
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
    from testbed import paths
    from testbed.launcher import DEFAULT_LINKS, LaunchOptions, up

    if args.broadcast_window_s < 0:
        raise ValueError(f"--broadcast-window-s must be >= 0, got {args.broadcast_window_s}")
    if args.world is None and args.broadcast_window_s:
        raise ValueError("--broadcast-window-s needs --world (the emulated shared downlink)")
    if args.capacity_mb <= 0:
        raise ValueError(f"--capacity-mb must be positive, got {args.capacity_mb}")
    if not 0 <= args.controller_port <= 65535:
        raise ValueError(f"--controller-port must be in 0..65535, got {args.controller_port}")
    if args.objective == "delay" and args.solver == "marl":
        if args.marl_checkpoint is None:
            raise ValueError("--solver marl needs --marl-checkpoint PATH (trained agents)")
        if not args.marl_checkpoint.is_file():
            raise ValueError(f"--marl-checkpoint {args.marl_checkpoint} is not a file")
    if args.agent_checkpoint is not None:
        if args.cache_policy:
            raise ValueError("--agent-checkpoint and --cache-policy exclude each other")
        if not args.agent_checkpoint.is_file():
            raise ValueError(f"--agent-checkpoint {args.agent_checkpoint} is not a file")
    state_dir = args.state_dir or paths.cache_home() / "state"
    backhaul_default, radio_default = DEFAULT_LINKS[args.profile]
    options = LaunchOptions(
        state_dir=state_dir,
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
        objective=args.objective,
        marl_checkpoint=args.marl_checkpoint,
        cache_policy=args.cache_policy,
        agent_checkpoint=args.agent_checkpoint,
        controller_port=args.controller_port,
        controllers=args.controllers,
        ready_timeout_s=args.ready_timeout_s,
        world=args.world,
        cluster_size=args.cluster_size,
        broadcast_window_s=args.broadcast_window_s,
    )

    def say(message: str) -> None:
        sys.stderr.write(f"testbed: {message}\n")
        sys.stderr.flush()

    state = up(options, on_progress=say)
    out = sys.stdout.write
    for url in state.get("controller_urls") or [state["controller_url"]]:
        out(f"controller  {url}\n")
    out(f"dashboard   {state['controller_url']}/dashboard\n")
    out(f"origin      {state['origin_url']}\n")
    for url in state["edge_urls"]:
        out(f"edge        {url}\n")
    out(f"redis       {state['redis_url']}\n")
    out(f"state       {Path(state['state_dir']) / 'testbed.json'}\n")
    # The SDK and CLI read this; it is http://127.0.0.1:8080 (their default) when 8080 was free.
    urls = ",".join(state.get("controller_urls") or [state["controller_url"]])
    out(f"export TRIMCACHE_CONTROLLER_URL={urls}\n")
    # The testbed's own control-plane token (also in testbed.json): with it the SDK's demand
    # reports (an authenticated write) reach the controller, so the planner and `status` see them.
    out(f"export TRIMCACHE_AUTH_TOKEN={state['auth_token']}\n")
    return 0


def _state_dir(given: Path | None) -> Path:
    """``--dir``, else the last testbed started here, else the default state dir."""
    from testbed import paths

    if given is not None:
        return given
    return paths.last_testbed() or paths.cache_home() / "state"


def _down(args: argparse.Namespace) -> int:
    from testbed.launcher import down

    state_dir = _state_dir(args.state_dir)
    stopped = down(state_dir, grace_s=args.grace_s)
    if stopped:
        sys.stdout.write(f"stopped {', '.join(stopped)}\n")
    else:
        sys.stdout.write(f"no running testbed in {state_dir}\n")
    return 0


def _status(args: argparse.Namespace) -> int:
    from testbed.launcher import load_state, overview, status

    state_dir = _state_dir(args.state_dir)
    services = status(state_dir)
    state = load_state(state_dir) if services else None
    view = overview(state) if state is not None and state.get("controller_url") else None
    if args.json:
        doc = {"services": [s.to_json() for s in services], **(view or {})}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    elif not services:
        sys.stdout.write(f"no testbed in {state_dir}\n")
    else:
        out = sys.stdout.write
        out(f"testbed {state_dir}\n")
        for service in services:
            health = "up" if service.healthy else ("unhealthy" if service.running else "down")
            out(
                f"{service.name:<14}{health:<11}{service.url:<30}pid {service.pid:<8}"
                f"{'' if service.healthy else service.detail}\n"
            )
        if view is not None:
            out("".join(_describe(view)))
    return 0 if services and all(s.healthy for s in services) else 1


def _mib(n: Any) -> str:
    return f"{int(n or 0) / MIB:.1f} MiB"


def _describe(view: dict[str, Any]) -> list[str]:
    """The human summary of :func:`testbed.launcher.overview`."""
    lines: list[str] = []
    for url, planner in view.get("controllers", {}).items():
        if "unavailable" in planner:
            lines.append(f"\ncontroller  {url} unknown ({planner['unavailable']})")
        else:
            role = "leads the planner loop" if planner.get("leading") else "serves"
            lines.append(f"\ncontroller  {url} {planner.get('replica_id')}: {role}")
    models = view["models"]
    if isinstance(models, list):
        ids = ", ".join(str(m["model_id"]) for m in models)
        lines.append(f"\nmodels      {len(models)} in the catalogue: {ids or '-'}\n")
    else:
        lines.append(f"\nmodels      unknown ({models.get('unavailable')})\n")
    placement = view["placement"]
    if "unavailable" in placement:
        lines.append(f"placement   unknown ({placement['unavailable']})\n")
    else:
        pushes = ", ".join(
            f"{node} {push.get('status')}" for node, push in sorted(placement["push"].items())
        )
        lines.append(
            f"placement   v{placement['version']} ({placement.get('solver')}), expected hit "
            f"ratio {float(placement.get('hit_ratio') or 0):.3f}; pushed: {pushes or '-'}\n"
        )
    for node_id, stats in view["edges"].items():
        if "unavailable" in stats:
            lines.append(f"{node_id:<12}unknown ({stats['unavailable']})\n")
            continue
        held = stats.get("models") or []
        lines.append(
            f"{node_id:<12}holds {len(held)} model(s) ({', '.join(held) or '-'}): logical "
            f"{_mib(stats.get('logical_bytes'))}, stored {_mib(stats.get('physical_bytes'))}, "
            f"savings {float(stats.get('savings') or 0):.1%}\n"
        )
    demand = view["demand"]
    if "unavailable" in demand:
        lines.append(f"hit ratio   unknown ({demand['unavailable']})\n")
    elif not demand.get("requests"):
        lines.append("hit ratio   no client fetch reported yet\n")
    else:
        lines.append(
            f"hit ratio   {float(demand['hit_ratio']):.3f} measured over {demand['requests']} "
            f"client fetch(es) ({demand.get('hit', 0)} hit, {demand.get('miss', 0)} miss, "
            f"{demand.get('error', 0)} error); a hit took no byte from the origin\n"
        )
    return lines
