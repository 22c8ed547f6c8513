"""Decentralised nodes seen from the controller: list their agents, take them over, release them.

A node started with ``EDGE_AGENT_CHECKPOINT`` runs its own trained ``marl`` agent and announces
``cache_policy: "marl"``; the planner plans nothing for it (:mod:`edge_node.agent`). This module
owns the controller's side of handing such nodes to the controller and back; the routes
(``controller/api/routes/agents.py``) only parse and shape the answer.

Internal logic of :func:`switch` (takeover: ``enabled`` false; release: true):

1. select the nodes: the ids given, each live (else :class:`NodeNotFoundError`, nothing is
   done); none given: every live node announcing ``marl`` (takeover), every live node the
   controller took over and has not released (release, ``ctl:agents:taken``);
2. send each node ``PUT /v1/agent`` (:class:`core.wire.AgentSwitch`) at once on a small pool,
   with the planner's HTTP client (the edge token and transport its plan pushes use), each
   within the time a plan push's ``PUT`` gets (``push_accept_timeout_s``); the answer is one
   :class:`core.wire.AgentOutcome` per node;
3. for each node that switched, store the policy it now announces
   (:meth:`RedisState.set_node_policy`: None after a takeover, ``marl`` after a release) so the
   plan below sees it without waiting for the node's next heartbeat (the edge sends one at
   once, saying the same), and remember or forget it in ``ctl:agents:taken``;
4. when any node switched, plan now (:meth:`Planner.plan`): a takeover puts the nodes into the
   problem and dispatches their plans; after a release the placement no longer fits the
   planned nodes, so it is replaced without them.

A heartbeat the edge sent before it switched and that reaches the controller after step 3
announces the old policy once more; the heartbeat the switch triggers corrects it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx

from controller.errors import NodeNotFoundError
from controller.planner import Planner
from controller.state import NodeRecord
from core.errors import ErrorCode
from core.wire import AgentOutcome, AgentOutcomeKind, AgentSwitch, ErrorBody

logger = logging.getLogger(__name__)

#: The ``cache_policy`` a node running its agent announces (edge_node.agent.POLICY).
AGENT_POLICY = "marl"
#: Edges asked at once (a hung edge costs its timeout once, not once per node).
MAX_PARALLEL = 16
#: Seconds to wait for an edge's ``GET /v1/agent`` in :func:`list_agents`.
READ_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class Switched:
    """What :func:`switch` did: one outcome per selected node, and the placement record of
    the plan it triggered (None: no node switched, nothing planned)."""

    outcomes: list[AgentOutcome]
    placement: dict[str, Any] | None


def select(planner: Planner, node_ids: Sequence[str] | None, *, enabled: bool) -> list[NodeRecord]:
    """The live nodes a takeover (``enabled`` false) or release acts on (step 1 above).

    Raises:
        NodeNotFoundError: a named node is not live.
    """
    state = planner.state
    live = {n.node_id: n for n in state.live_nodes()}
    if node_ids is not None:
        missing = [n for n in node_ids if n not in live]
        if missing:
            raise NodeNotFoundError(missing[0])
        return [live[n] for n in node_ids]
    if not enabled:
        return [n for n in live.values() if n.cache_policy == AGENT_POLICY]
    taken = state.taken_over()
    return [n for node_id, n in sorted(live.items()) if node_id in taken]


def switch(planner: Planner, node_ids: Sequence[str] | None, *, enabled: bool) -> Switched:
    """Take over (``enabled`` false) or release the nodes and plan (see the module docstring).

    Raises:
        NodeNotFoundError: a named node is not live (nothing was done).
        StateUnavailableError: Redis is down.
    """
    nodes = select(planner, node_ids, enabled=enabled)
    outcomes = _on_each(nodes, lambda node: _put_agent(planner, node, enabled=enabled))
    done = "released" if enabled else "taken"
    switched = [o.node_id for o in outcomes if o.outcome == done]
    if not switched:
        return Switched(outcomes, None)
    state = planner.state
    for node_id in switched:
        state.set_node_policy(node_id, AGENT_POLICY if enabled else None)
    state.mark_taken_over(switched, taken=not enabled)
    logger.info("agents %s node_ids=%s", done, ",".join(switched))
    placement = planner.plan(trigger="agents:release" if enabled else "agents:takeover")
    servers: Mapping[str, Any] = placement.get("servers") or {}
    for outcome in outcomes:
        if outcome.outcome == done:
            outcome.planned = outcome.node_id in servers
    return Switched(outcomes, placement)


def list_agents(planner: Planner) -> list[dict[str, Any]]:
    """Every live node running its agent or taken over from it, with its edge's
    ``GET /v1/agent`` document (``agent``; None and ``error`` when it did not answer)."""
    state = planner.state
    taken = state.taken_over()
    nodes = [n for n in state.live_nodes() if n.cache_policy == AGENT_POLICY or n.node_id in taken]

    def read(node: NodeRecord) -> dict[str, Any]:
        row: dict[str, Any] = {
            "node_id": node.node_id,
            "url": node.url,
            "cache_policy": node.cache_policy,
            "taken_over": node.node_id in taken,
            "models": list(node.models),
            "agent": None,
            "error": None,
        }
        try:
            response = planner.http.get(f"{node.url}/v1/agent", timeout=READ_TIMEOUT_S)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            row["error"] = f"unreachable: {exc!r}"
            return row
        if response.status_code != 200:
            row["error"] = f"{response.status_code} {_error_of(response)[1]}"
            return row
        try:
            row["agent"] = response.json()
        except ValueError:
            row["error"] = "not a JSON answer"
        return row

    return _on_each(nodes, read)


def _on_each(nodes: Sequence[NodeRecord], fn: Any) -> list[Any]:
    if not nodes:
        return []
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(nodes))) as pool:
        return list(pool.map(fn, nodes))


def _put_agent(planner: Planner, node: NodeRecord, *, enabled: bool) -> AgentOutcome:
    url = f"{node.url}/v1/agent"
    settings = planner.settings  # the bound of a plan push's PUT (controller.planner)
    timeout_s = min(settings.push_stall_s, settings.push_accept_timeout_s, settings.push_timeout_s)
    body = AgentSwitch(enabled=enabled).model_dump()

    def made(outcome: AgentOutcomeKind, **fields: Any) -> AgentOutcome:
        return AgentOutcome(node_id=node.node_id, url=node.url, outcome=outcome, **fields)

    try:
        response = planner.http.put(
            url, json=body, timeout=httpx.Timeout(timeout_s, connect=min(5.0, timeout_s))
        )
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        logger.warning("agent switch failed node_id=%s url=%s error=%r", node.node_id, url, exc)
        return made("unreachable", code=ErrorCode.upstream_unavailable, error=repr(exc))
    code, message = _error_of(response)
    if response.status_code == 404:  # the edge runs no agent (EDGE_AGENT_CHECKPOINT unset)
        return made("not_agent", code=code, error=message, http_status=404)
    if response.status_code != 200:
        logger.warning(
            "agent switch refused node_id=%s status=%d code=%s",
            node.node_id,
            response.status_code,
            code,
        )
        return made(
            "failed",
            code=code,
            error=message,
            http_status=response.status_code,
        )
    try:
        doc = response.json()
        switched = isinstance(doc, dict) and doc.get("enabled") is enabled
    except ValueError:
        doc, switched = None, False
    if not switched:
        why = "the node's answer does not show the agent switched"
        return made("failed", code="bad_response", error=why, agent=doc)
    return made("released" if enabled else "taken", agent=doc)


def _error_of(response: httpx.Response) -> tuple[str, str]:
    """``(code, message)`` of an edge's answer (its error envelope where it sent one)."""
    code = response.headers.get("X-Error-Code", f"http_{response.status_code}")
    try:
        message = ErrorBody.model_validate_json(response.content).error.message
    except ValueError:
        message = response.text[:500]
    return code, message
