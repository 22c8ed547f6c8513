"""`trimcache agents ls|takeover|release`: decentralised nodes from the controller's side.

The controller is found as for ``trimcache models`` (:func:`testbed.models_cli.resolve_target`:
``--controller URL``, ``--dir STATE_DIR``, ``$TRIMCACHE_CONTROLLER_URL``, the last testbed).

- ``ls``: ``GET /v1/agents``, one row per node running its agent or taken over from it;
- ``takeover [--node ID ...]``: ``POST /v1/agents:takeover`` (default: every node announcing
  ``marl``): the agents stop and the controller plans the nodes;
- ``release [--node ID ...]``: ``POST /v1/agents:release`` (default: every node taken over).

``takeover``/``release`` print one line per node (``NODE: taken|released|not_agent|unreachable|
failed ...``) and one line on the placement; a node that did not switch makes the command end
with one error line on stderr and exit 1; bad input (an unknown node: 404 ``node_not_found``)
is that one line alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import Any

from testbed.models_cli import (
    ControllerCommandError,
    controller_options,
    request_json,
    resolve_target,
)


def add_parsers(subparsers: Any) -> None:
    common = controller_options()
    agents = subparsers.add_parser(
        "agents", help="decentralised nodes: list their agents, take them over, release them"
    )
    sub = agents.add_subparsers(dest="agents_command", metavar="ACTION", required=True)

    ls = sub.add_parser("ls", parents=[common], help="nodes running their agent or taken over")
    ls.add_argument("--json", action="store_true", help="print the controller's JSON")
    ls.set_defaults(func=_ls)

    for action, help_text in (
        ("takeover", "stop the nodes' agents; the controller plans them (default: every agent)"),
        ("release", "resume the nodes' agents (default: every node taken over)"),
    ):
        p = sub.add_parser(action, parents=[common], help=help_text)
        p.add_argument(
            "--node", action="append", dest="node_ids", default=None, metavar="ID",
            help="a node id (repeat for several)",
        )  # fmt: skip
        p.add_argument("--json", action="store_true", help="print the controller's JSON")
        p.set_defaults(func=_switch, action=action)


def _ls(args: argparse.Namespace) -> int:
    target = resolve_target(args.controller, args.state_dir)
    doc = request_json(target, "GET", "/v1/agents")
    if args.json:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return 0
    out = sys.stdout.write
    out(f"{'NODE':<20}{'POLICY':<8}{'AGENT':<12}{'DECISIONS':>10}  HELD\n")
    for row in doc["nodes"]:
        agent: Mapping[str, Any] | None = row.get("agent")
        if agent is None:
            state, decisions = "?", "-"
        else:
            state = "on" if agent.get("enabled") else "taken over"
            decisions = str(agent.get("decisions", "-"))
        held = ",".join(agent.get("held_models", []) if agent else row.get("models", []))
        out(
            f"{row['node_id']:<20}{row.get('cache_policy') or '-':<8}{state:<12}"
            f"{decisions:>10}  {held or '-'}\n"
        )
        if row.get("error"):
            out(f"{'':<20}error: {row['error']}\n")
    sys.stderr.write(f"{len(doc['nodes'])} agent node(s) at {target.url}\n")
    return 0


def _switch(args: argparse.Namespace) -> int:
    target = resolve_target(args.controller, args.state_dir)
    body = {"node_ids": args.node_ids} if args.node_ids else None
    doc = request_json(target, "POST", f"/v1/agents:{args.action}", json=body)
    if args.json:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    done = "taken" if args.action == "takeover" else "released"
    nodes = doc["nodes"]
    if not args.json:
        for node in nodes:
            line = f"{node['node_id']}: {node['outcome']}"
            if node["outcome"] == done:
                if node.get("planned"):
                    line += ", in the new placement"
                elif args.action == "takeover":
                    line += ", not in the new placement"
            else:
                line += f" ({node.get('code')}: {node.get('error')})"
            sys.stdout.write(line + "\n")
        placement = doc.get("placement")
        if placement is not None:
            sys.stdout.write(
                f"placement v{placement['version']}: {len(placement['servers'])} node(s) planned"
                " (pushes dispatched: trimcache testbed status or GET /v1/placement)\n"
            )
        elif not nodes:
            what = "running an agent" if args.action == "takeover" else "taken over"
            sys.stderr.write(f"no node {what} at {target.url}\n")
    missed = [n for n in nodes if n["outcome"] != done]
    if missed:
        names = ", ".join(f"{n['node_id']} {n['outcome']}" for n in missed)
        raise ControllerCommandError(f"{len(missed)} of {len(nodes)} node(s) not {done}: {names}")
    return 0
