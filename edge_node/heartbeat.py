"""Heartbeats to the controller: ``PUT {controller_url}/v1/nodes/{node_id}`` every interval.

With several controller replicas (``EDGE_CONTROLLER_URL`` comma-separated) each beat goes to
one that answers (:class:`core.failover.Endpoints`: refused, timed out or 5xx tries the next).

Body: :class:`core.wire.NodeHeartbeat` (docs/api.md "Edge node"): ``url``, ``capacity_bytes``,
``position`` ``[x_m, y_m]``, ``physical_bytes``, ``models`` (complete models held),
``blocks_digest``, ``plan_version`` and ``cache_policy`` (``EDGE_CACHE_POLICY``, or ``marl``
while the node runs its agent: :mod:`edge_node.agent`). Runs in a daemon
thread; failures are logged and retried at the next tick, never fatal. :meth:`Heartbeat.poke`
sends one at once (an on-demand node after a response or an eviction, so routes follow what it
holds within moments).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Literal

import httpx

from core.auth import bearer_header
from core.failover import Endpoints
from core.wire import LiveGroup, NodeHeartbeat
from edge_node.node import EdgeNode

logger = logging.getLogger(__name__)


def heartbeat_body(node: EdgeNode, *, policy: Literal["marl"] | None = None) -> dict[str, Any]:
    s = node.settings
    return NodeHeartbeat(
        url=s.url,
        capacity_bytes=s.capacity_bytes,
        position=(s.position_x_m, s.position_y_m),
        physical_bytes=node.store.used_bytes,
        models=[m.model_id for m in node.complete_models()],
        blocks_digest=node.blocks_digest(),
        # The controller never hands out a version at or below it, even after losing its state.
        plan_version=node.plan_record.version,
        cache_policy=s.cache_policy or policy,
        broadcast=_live_groups(node),
    ).model_dump(mode="json")


def _live_groups(node: EdgeNode) -> list[LiveGroup] | None:
    """The radio's live groups for routing (None: not reported; a report that does not
    validate is left out, so it never costs the node its registration)."""
    if node.broadcast_report is None:
        return None
    try:
        return [LiveGroup.model_validate(g) for g in node.broadcast_report()]
    except (ValueError, RuntimeError):
        logger.exception("heartbeat node_id=%s: live groups left out", node.settings.node_id)
        return None


class Heartbeat:
    """Background heartbeat loop (start/stop from the app's lifespan)."""

    def __init__(self, node: EdgeNode, client: httpx.Client) -> None:
        self.node = node
        self.client = client
        self.controllers = Endpoints(node.settings.controller_urls)
        self._stop = threading.Event()
        self._wake = threading.Event()  # poke(): beat now, not at the next tick
        self._thread = threading.Thread(target=self._run, name="edge-heartbeat", daemon=True)
        self.sent = 0
        self.failures = 0
        #: The node's own cache policy besides EDGE_CACHE_POLICY (the agent's ``marl``).
        self.policy: Callable[[], Literal["marl"] | None] = lambda: None

    def start(self) -> None:
        self._thread.start()

    def poke(self) -> None:
        """Send the next heartbeat now (an on-demand node's holdings just changed); pokes
        during a beat coalesce into one more."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def beat(self) -> bool:
        s = self.node.settings
        path = f"/v1/nodes/{s.node_id}"
        url = f"{self.controllers}{path}"
        headers = bearer_header(s.auth_token)
        body = heartbeat_body(self.node, policy=self.policy())
        try:
            response = self.controllers.call(
                lambda base: self.client.put(
                    f"{base}{path}", json=body, headers=headers, timeout=5.0
                ),
                errors=(httpx.TransportError,),
                retry_on=lambda r: r.status_code >= 500,
            )
            url = str(response.request.url)
        except httpx.HTTPError as exc:
            self.failures += 1
            logger.warning("heartbeat node_id=%s to %s failed: %s", s.node_id, url, exc)
            return False
        if response.status_code >= 400:
            self.failures += 1
            logger.warning(
                "heartbeat node_id=%s to %s answered %s", s.node_id, url, response.status_code
            )
            return False
        self.sent += 1
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.beat()
            except Exception:  # never let the loop die
                logger.exception("heartbeat crashed; retrying")
            self._wake.wait(self.node.settings.heartbeat_interval_s)
            self._wake.clear()
