"""The planner: state -> placement problem -> solver -> diff -> migration plans pushed to nodes.

The only module that turns state into actions on edge nodes. Internal logic of
:meth:`Planner.plan`:

1. under the cross-process plan lock, read live nodes, the catalogue, the topology (stored >
   file > default) and the decayed demand from Redis;
2. build the :class:`~controller.placement.PlacementProblem`: servers are live nodes (capacity
   from their registration), blocks are *parameter blocks* (:func:`core.group_by_sharing` over the
   catalogue manifests), users are topology areas with probabilities from
   :mod:`controller.demand`, reachability from :mod:`controller.topology`;
   steps 2-4 are :func:`controller.plan_compute.compute`, run in the planner's worker process
   (:mod:`controller.plan_worker`, ``plan_worker`` "process", the default: its CPU work does
   not hold this process's GIL against the requests) or in this thread ("thread"); the
   lock, its renewal and the fenced store stay here;
3. run the configured solver (if it raises, ``trimcaching-gen`` instead) twice: from scratch
   and warm-started from the current placement (what each node is meant to hold, mapped onto
   the new problem's parameter blocks); an exception or an ``infeasible`` result keeps the old
   placement;
4. decide with :func:`~controller.placement.decide_replan` whether the better candidate pays
   for the bytes it moves (``replan_min_gain``, ``replan_move_cost_per_gib``). If not, the
   current placement is *kept*: no new version, no push, and the plan attempt records
   ``outcome: "kept"`` with the decision (gain, bytes it would move). A current placement that
   is no longer valid (a node joined or left, a capacity shrank below what a node holds, a
   model left the catalogue or was re-indexed) is always replaced;
5. store the new placement (a typed :class:`~controller.records.PlacementRecord`; version from
   ``INCR``, above every version a live node reports having applied, so a Redis wipe never
   sends the edges a version they already passed) with every push ``pending`` and
   ``dispatch.state`` ``running``, and start its *push round* in a background thread; the
   plan lock is released and :meth:`Planner.plan` returns here (``POST /v1/placement:plan``
   answers before any transfer). On-demand nodes (``cache_policy`` ``lru``/``lfu`` in their
   heartbeat) are left out of the problem, the placement and the pushes: they cache what
   their clients ask for;
6. the round pushes each node its plan (manifests of the models to hold, and for each block it
   lacks, up to :data:`MAX_PEERS` live peers whose *confirmed* holdings include it, in an order
   of the node's own: :meth:`~controller.holdings.Holdings.peers`) on a bounded pool of
   ``push_workers`` threads, all nodes at once except where a node must wait for a peer:
   - it needs a block no node holds yet that another node of the round is fetching (it
     copies it from that peer once the peer confirmed, so the origin serves each missing
     block once), or
   - its evictions would remove the *last confirmed copy* of a block that a node still in
     the round is placed to hold but has not confirmed.
   A node waits only while that peer's push is in flight (which liveness bounds, below).
   When every remaining node waits for another one (a swap), or the new holder's push
   failed, the node is sent a *retaining* plan that keeps the models holding those copies
   (``push[node].retained``); it gets its exact plan once the new holders confirmed (later
   in the same round, or by the loop's drift repair). A placed model therefore never loses
   its last edge copy to a handover that did not complete. The round ends with
   ``dispatch.state`` ``done``. A waiting node is asked again only when a push it may wait
   on ended (:mod:`controller.round_waits`); the outcomes of pushes that ended together are
   recorded in one Redis round trip (:meth:`RedisState.record_pushes`).

A push is ``PUT /v1/plan`` (the edge validates it and answers 202 with a ``plan_id``), then
``GET /v1/plan`` every :data:`PROGRESS_POLL_S` until the edge reports that plan ``applied``
(its held models become the node's confirmed models, so nodes waiting for it migrate from it)
or ``failed``. Liveness is progress-based: the push is given up (``stalled``,
``push_stalled``) when the edge's bytes/blocks done stand still for ``push_stall_s``, when the
edge does not answer the PUT within ``push_accept_timeout_s`` (a hung edge), and after
``push_timeout_s`` in all.

Pushes are fenced by the version instead of the lock: every plan carries its version and edges
refuse a version older than the one they applied (or are applying); a round stops
dispatching once the stored placement is a newer one (it looks every ROUND_CHECK_S; a newer
round in this process stops it at once), and nothing a stopped round learns is recorded
over the newer one (``update_push_status`` is conditional on the version). The plan lock (TTL
``plan_lock_ttl_s``, renewed by a helper thread that shares the lock's token) serialises
computing, storing and dispatching, and fences the store itself: the placement is written only
while the lock still holds this planner's token (one Redis script), so a planner whose lock
lapsed (a pause, a partition) cannot overwrite a successor's placement. The record names the
replica that planned it (``planned_by``).

Several controller replicas may share one Redis: each serves every request, and only the one
holding the leader lease (:mod:`controller.leader`) runs the background loop below; when it
dies another takes the lease within ``plan_lock_ttl_s`` and a third of it.

A node that rejects or fails its plan is recorded (``push[node].status``, ``attempts``) and
retried by the background loop (:meth:`Planner.tick`) with exponential backoff from
``retry_interval_s`` (full jitter, capped at ``retry_max_interval_s``) at most
``push_retry_budget`` times per placement version. The loop skips nodes a round of this
process still pushes, and ``pending``/``pushing`` pushes while the round refreshed
``dispatch.alive_at`` within :data:`ROUND_DEAD_S` (a round elsewhere; a silent one died with
its process, and its pushes are retried).
The loop also re-plans when membership (a node's cache policy included) or the topology
change (after ``settle_s`` of quiet), every ``plan_interval_s``, and re-pushes the current
plan to a node whose reported models drift from it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from controller import plan_compute
from controller.errors import StateUnavailableError
from controller.holdings import Holdings
from controller.leader import Leadership
from controller.metrics import Metrics
from controller.placement import PlacementProblem
from controller.plan_worker import PlanWorker
from controller.records import DispatchState, PlacementRecord, PushStatus, ServerPlacement
from controller.round_waits import RoundWaits, Wait
from controller.routing import held_blocks
from controller.settings import Settings
from controller.state import CatalogueEntry, NodeRecord, PlanLock, RedisState
from controller.topology import Topology, default_topology
from core import ModelManifest, TrimCacheError
from core.background import LoopThread
from core.digest import BlockId
from core.errors import ErrorCode
from core.wire import EdgePlan, ErrorBody, PlanAccepted, PlanStatus

logger = logging.getLogger(__name__)

# How often a push looks at the node's plan status (GET /v1/plan) while the node applies it.
PROGRESS_POLL_S = 0.25
# How often a push round looks whether a newer placement superseded it (and re-checks waits).
ROUND_CHECK_S = 0.5
# A node that has not accepted its plan (202) this long after the push started does not make
# others wait for the blocks it would fetch (a hung edge must not hold healthy ones).
CLAIM_ACCEPT_S = 2.0
# A running round refreshes ``dispatch.alive_at`` this often; one silent for ROUND_DEAD_S died
# with its process (its pending pushes are retried).
ROUND_ALIVE_S = 1.0
ROUND_DEAD_S = 10.0
# Push outcomes the loop retries (with backoff, within the budget): "pending"/"pushing" that no
# live round runs means the process that pushed died mid-round; "retained" kept last copies
# for a holder that had not confirmed them; "superseded": the node replaced the plan with
# another one of this version.
RETRIED_STATUSES = frozenset(
    {"failed", "unreachable", "stalled", "retained", "superseded", "pending", "pushing", None}
)
IN_FLIGHT_STATUSES = frozenset({"pending", "pushing"})
#: Peers named per block in a plan: a block held by many nodes must not make every plan body
#: (and the round) grow with the number of nodes. Each node lists holders in its own order
#: (controller.holdings.Holdings.peers).
MAX_PEERS = 4
#: Threads asking the nodes of a first plan the version they applied (_applied_versions).
PROBE_WORKERS = 4
#: A plan body is sent pre-encoded (core.wire.EdgePlan.encode).
_JSON_HEADERS = {"Content-Type": "application/json"}


@dataclass(frozen=True, slots=True)
class ActiveTopology:
    """The topology the planner and the router use now, and where it came from."""

    topology: Topology
    version: int
    source: str  # "stored" | "file" | "default"


def load_topology_file(path: Path | None) -> Topology | None:
    if path is None:
        return None
    return Topology.from_json(json.loads(Path(path).read_text()))


class Planner:
    """Plans and pushes placements; one per app, shared by the API and the background loop."""

    def __init__(
        self,
        state: RedisState,
        settings: Settings,
        *,
        metrics: Metrics,
        file_topology: Topology | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.state = state
        self.settings = settings
        self.metrics = metrics
        self.file_topology = file_topology
        token = settings.edge_auth_token or settings.auth_token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(settings.push_timeout_s, connect=5.0),
            transport=transport,
        )
        self._blocks_cache: dict[tuple[str, str], frozenset[str]] = {}
        self._pending_sig: tuple[str, float] | None = None
        self._adopt_backoff: dict[tuple[str, str], float] = {}
        self._catalogue: tuple[tuple[str, int], dict[str, CatalogueEntry]] | None = None
        self._redis_down = False
        #: This process among the controller replicas on one Redis (logs, leases, records).
        self.replica_id = settings.replica_id or f"{socket.gethostname()}:{os.getpid()}"
        self.leadership = Leadership(state, self.replica_id, lease_s=settings.plan_lock_ttl_s)
        self._loop = LoopThread(self.run_forever, name="planner")
        self._stop = self._loop.stop_event
        # Push rounds running in this process (thread ident -> (version, stop flag)) and the
        # nodes they have not finished with; pushes themselves run on the bounded pool.
        self._pool = ThreadPoolExecutor(
            max_workers=settings.push_workers, thread_name_prefix="push"
        )
        self._rounds_lock = threading.Lock()
        self._rounds_done = threading.Condition(self._rounds_lock)
        self._rounds: dict[int, tuple[int, threading.Event]] = {}
        self._active: set[str] = set()
        # The plan's CPU work runs here when plan_worker is "process" (controller.plan_worker).
        self._worker = PlanWorker() if settings.plan_worker == "process" else None

    def close(self) -> None:
        self.stop()
        if self._worker is not None:
            self._worker.close()
        with self._rounds_lock:
            for _version, stop in self._rounds.values():
                stop.set()
        self.wait_rounds(timeout_s=30)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.http.close()

    # -- reading state --------------------------------------------------------------------
    def active_topology(
        self, nodes: Sequence[NodeRecord], stored: tuple[int, dict[str, Any] | None] | None = None
    ) -> ActiveTopology:
        """The topology in force: the stored one (``stored``: as ``RedisState.get_topology``
        already read, else read here), the file's, or a default one around ``nodes``."""
        version, doc = self.state.get_topology() if stored is None else stored
        if doc is not None:
            return ActiveTopology(Topology.from_json(doc), version, "stored")
        if self.file_topology is not None:
            return ActiveTopology(self.file_topology, 0, "file")
        return ActiveTopology(
            default_topology({n.node_id: n.position for n in nodes}), 0, "default"
        )

    def topology_summary(
        self, node_count: int, stored: tuple[int, dict[str, Any] | None]
    ) -> tuple[str, int, int]:
        """``(source, version, areas)`` of :meth:`active_topology` without building it (the
        default topology has one area per node; ``GET /v1/status`` asks on every request)."""
        version, doc = stored
        if doc is not None:
            return "stored", version, len(doc.get("areas", {}))
        if self.file_topology is not None:
            return "file", 0, len(self.file_topology.areas)
        return "default", 0, node_count

    def catalogue(self, stamp: tuple[str, int] | None = None) -> dict[str, CatalogueEntry]:
        """Every catalogue entry by model id, re-read only when the catalogue's stamp moves
        (one small Redis round trip per call instead of parsing every manifest; none when
        the caller read ``stamp``, ``RedisState.catalogue_stamp()``, already)."""
        stamp = self.state.catalogue_stamp() if stamp is None else stamp
        cached = self._catalogue
        if cached is None or cached[0] != stamp:
            entries = {e.model_id: e for e in self.state.list_models()}
            # A write racing the read: keep the data, but do not trust it for this stamp.
            if self.state.catalogue_stamp() == stamp:
                self._catalogue = (stamp, entries)
            return entries
        return cached[1]

    def blocks_by_model(self, catalogue: Sequence[CatalogueEntry]) -> dict[str, frozenset[str]]:
        """Model id -> its block ids (cached per (model, revision): manifests never change)."""
        out: dict[str, frozenset[str]] = {}
        for entry in catalogue:
            cache_key = (entry.model_id, entry.revision)
            blocks = self._blocks_cache.get(cache_key)
            if blocks is None:
                blocks = frozenset(entry.manifest.block_sizes())
                if len(self._blocks_cache) > 4096:
                    self._blocks_cache.clear()
                self._blocks_cache[cache_key] = blocks
            out[entry.model_id] = blocks
        return out

    def adopt_models(self, nodes: Sequence[NodeRecord], *, now_s: float) -> list[str]:
        """Rebuild lost catalogue entries from the nodes' reports (after Redis lost its data).

        A model a live node reports but the catalogue lacks (and that was not deleted on
        purpose) is added with the manifest the node serves at ``/v1/models/{id}/manifest``.
        """
        present, deleted = self.state.model_ids()
        adopted: list[str] = []
        for node in nodes:
            for model_id in node.models:
                if model_id in present or model_id in deleted:
                    continue
                if now_s < self._adopt_backoff.get((node.node_id, model_id), 0.0):
                    continue
                try:
                    response = self.http.get(
                        f"{node.url}/v1/models/{model_id}/manifest", timeout=10.0
                    )
                    response.raise_for_status()
                    manifest = ModelManifest.from_dict(response.json())
                except (httpx.HTTPError, ValueError, TrimCacheError) as exc:
                    logger.warning(
                        "cannot adopt model_id=%s from node_id=%s: %s", model_id, node.node_id, exc
                    )
                    self._adopt_backoff[(node.node_id, model_id)] = now_s + 30.0
                    continue
                if manifest.model_id != model_id:
                    continue
                self.state.put_model(
                    CatalogueEntry.of(manifest, indexed_at=now_s, adopted_from=node.node_id)
                )
                present.add(model_id)
                adopted.append(model_id)
                logger.info("adopted model_id=%s from node_id=%s", model_id, node.node_id)
        return adopted

    def signature(self, nodes: Sequence[NodeRecord], view: ActiveTopology) -> str:
        """What triggers a re-plan by itself: membership (and each node's place, capacity and
        cache policy: a decentralised node handed back to the controller is planned without
        waiting for the interval) and the topology. Catalogue and demand changes wait for the
        periodic or a manual plan, so indexing a batch of models does not re-plan (and move
        blocks) after each one."""
        doc = {
            "nodes": [
                [n.node_id, n.url, n.capacity_bytes, list(n.position), n.cache_policy]
                for n in nodes
            ],
            "topology": [view.source, view.version],
        }
        return json.dumps(doc, sort_keys=True)

    # -- building the problem -------------------------------------------------------------
    def build_problem(
        self,
        nodes: Sequence[NodeRecord],
        catalogue: Sequence[CatalogueEntry],
        view: ActiveTopology,
    ) -> PlacementProblem:
        """The placement problem of ``nodes`` now (:func:`controller.plan_compute.build_problem`
        on the stored demand)."""
        counts = self.state.demand_counts(half_life_s=self.settings.demand_half_life_s)
        return plan_compute.build_problem(nodes, catalogue, view.topology, counts)

    # -- planning -------------------------------------------------------------------------
    @contextmanager
    def _locked(self, *, blocking_timeout_s: float) -> Iterator[PlanLock | None]:
        """The cross-process plan lock (None when not acquired), renewed in the background
        every third of its TTL while held; check ``owned()`` before acting on it."""
        ttl = self.settings.plan_lock_ttl_s
        guard = self.state.plan_lock(timeout_s=ttl, blocking_timeout_s=blocking_timeout_s)
        with guard as acquired:
            if not acquired:
                yield None
                return
            done = threading.Event()

            def renew() -> None:
                while not done.wait(ttl / 3):
                    try:
                        guard.reacquire()
                    except Exception:  # noqa: BLE001 - Redis gone: the lock expires by itself
                        logger.warning("could not renew the plan lock")

            renewer = threading.Thread(target=renew, name="plan-lock-renew", daemon=True)
            renewer.start()
            try:
                yield guard
            finally:
                done.set()
                renewer.join(timeout=5)

    def plan(
        self, *, trigger: str = "manual", blocking_timeout_s: float | None = None
    ) -> dict[str, Any]:
        """Solve and store a new placement and dispatch its pushes; returns the stored
        placement record at once (its pushes ``pending``: :meth:`wait_rounds` or
        ``GET /v1/placement`` follow them).

        Raises:
            StateUnavailableError: Redis is down (nothing is pushed).
        """
        timeout = self.settings.push_timeout_s if blocking_timeout_s is None else blocking_timeout_s
        with self._locked(blocking_timeout_s=timeout) as guard:
            if guard is None:
                current = self.state.get_placement()
                return current if current is not None else {"version": 0, "servers": {}}
            return self._plan_locked(trigger, guard)

    def _plan_locked(self, trigger: str, guard: PlanLock) -> dict[str, Any]:
        started = time.time()
        clock = _PhaseClock()
        live = self.state.live_nodes()
        catalogue = self.state.list_models()
        view = self.active_topology(live)
        signature = self.signature(live, view)
        # On-demand nodes (cache_policy) cache what they are asked for: a plan would fight them.
        nodes = [n for n in live if not n.cache_policy]
        previous = self.state.get_placement()
        attempt: dict[str, Any] = {
            "at": started,
            "trigger": trigger,
            "signature": signature,
            "replica": self.replica_id,
            "timings_s": clock.timings,
        }
        clock.lap("read")

        result: plan_compute.Computed | None = None
        solver_name = self.settings.planning_solver
        if nodes and catalogue:
            try:
                result = self._compute(nodes, catalogue, view, previous)
                attempt.update(result.attempt)
                clock.lap("compute")
                clock.timings["problem"] = round(result.problem_s, 4)
                clock.timings["solve"] = round(result.solve_s, 4)
                solver_name = result.solver
            except StateUnavailableError:
                raise
            except Exception as exc:  # noqa: BLE001 - a solver failure must not stop the loop
                logger.exception("planning failed trigger=%s", trigger)
                attempt.update(outcome="error", error=f"{type(exc).__name__}: {exc}")
                self.state.save_plan_attempt(attempt)
                self.metrics.plans.labels(outcome="error").inc()
                return previous or {"version": 0, "servers": {}}
            if result.status == "infeasible":
                attempt.update(outcome="infeasible", error="the solver found no feasible placement")
                self.state.save_plan_attempt(attempt)
                self.metrics.plans.labels(outcome="infeasible").inc()
                return previous or {"version": 0, "servers": {}}
            if previous is not None and not result.replace:
                # Nothing moves and the version stays: edges have nothing to re-fetch.
                attempt.update(outcome="kept", version=previous.get("version", 0))
                self.state.save_plan_attempt(attempt)
                self.metrics.plans.labels(outcome="kept").inc()
                if result.current_hit_ratio is not None:  # what is held, on today's demand
                    self.metrics.expected_hit_ratio.set(result.current_hit_ratio)
                logger.info(
                    "placement kept version=%s trigger=%s: %s",
                    previous.get("version"),
                    trigger,
                    result.reason,
                )
                return previous

        if not guard.owned():
            logger.warning("plan lock lost before storing a placement trigger=%s", trigger)
            return previous or {"version": 0, "servers": {}}
        applied = [n.plan_version for n in nodes if n.plan_version is not None]
        if previous is None:  # a first plan, or Redis lost its state: ask the nodes themselves
            # (those whose registration tells no applied version: it is the one they report)
            applied += self._applied_versions([n for n in nodes if n.plan_version is None])
        version = self.state.next_placement_version(floor=max(applied, default=0))
        servers: dict[str, ServerPlacement] = {}
        for node in nodes:
            models, blocks, used = (
                result.servers.get(node.node_id, ([], [], 0)) if result else ([], [], 0)
            )
            servers[node.node_id] = ServerPlacement(models=models, blocks=blocks, used_bytes=used)
        record = PlacementRecord(
            version=version,
            solver=solver_name,
            status=result.status if result is not None else "empty",
            hit_ratio=result.hit_ratio if result is not None else 0.0,
            solve_seconds=result.solve_seconds if result is not None else 0.0,
            planned_at=started,
            trigger=trigger,
            planned_by=self.replica_id,
            topology=view.source,
            nodes={n.node_id: n.url for n in nodes},
            problem=(
                result.problem
                if result is not None
                else {"areas": 0, "models": len(catalogue), "parameter_blocks": 0}
            ),
            servers=servers,
            # Which revision each placed model had: a re-indexed model invalidates the plan.
            revisions={e.model_id: e.revision for e in catalogue},
            push={n.node_id: PushStatus(version=version, at=started) for n in nodes},
            dispatch=DispatchState(started_at=started),
        )
        doc = record.to_json()
        if not self.state.save_placement(doc, fence=guard):
            logger.warning(
                "plan lock lost: placement version=%d not stored (fenced) trigger=%s",
                version,
                trigger,
            )
            return self.state.get_placement() or {"version": 0, "servers": {}}
        clock.lap("store")
        self.metrics.plans.labels(outcome="ok").inc()
        self.metrics.placement_version.set(version)
        self.metrics.expected_hit_ratio.set(record.hit_ratio)
        logger.info(
            "placement version=%d solver=%s hit_ratio=%.4f nodes=%d models=%d trigger=%s",
            version,
            solver_name,
            record.hit_ratio,
            len(nodes),
            len(catalogue),
            trigger,
        )
        attempt.update(outcome="ok", version=version)
        self.state.save_plan_attempt(attempt)
        self._dispatch(doc, nodes, catalogue)
        return doc

    def _compute(
        self,
        nodes: Sequence[NodeRecord],
        catalogue: Sequence[CatalogueEntry],
        view: ActiveTopology,
        previous: Mapping[str, Any] | None,
    ) -> plan_compute.Computed:
        """The plan's CPU work (:func:`controller.plan_compute.compute`) on the demand read
        now: in the worker process (``plan_worker`` "process") or in this thread."""
        job = plan_compute.PlanJob(
            settings=self.settings,
            nodes=list(nodes),
            catalogue=list(catalogue),
            topology=plan_compute.PlainTopology.of(view.topology),
            demand_counts=self.state.demand_counts(half_life_s=self.settings.demand_half_life_s),
            previous=previous,
        )
        if self._worker is None:
            return plan_compute.compute(job)
        return self._worker.compute(job)

    def repush(self, node_ids: Sequence[str]) -> None:
        """Push the current placement again to some nodes (failed or drifted ones), in the
        background (:meth:`wait_rounds` waits for it)."""
        with self._locked(blocking_timeout_s=0.0) as guard:
            if guard is None:
                return
            record = self.state.get_placement()
            if record is None:
                return
            nodes = [n for n in self.state.live_nodes() if not n.cache_policy]
            catalogue = self.state.list_models()
            self._dispatch(record, nodes, catalogue, only=set(node_ids))

    # -- pushing --------------------------------------------------------------------------
    def _dispatch(
        self,
        record: Mapping[str, Any],
        nodes: Sequence[NodeRecord],
        catalogue: Sequence[CatalogueEntry],
        *,
        only: set[str] | None = None,
    ) -> None:
        """Start the push round of ``record`` in a background thread (rounds of older versions
        stop dispatching; their pushes in flight are abandoned, fenced by the version)."""
        version = int(record["version"])
        stop = threading.Event()
        with self._rounds_lock:
            for other_version, other_stop in list(self._rounds.values()):
                if other_version < version:
                    other_stop.set()

            def run() -> None:
                try:
                    self._push(record, nodes, catalogue, only=only, stop=stop)
                except StateUnavailableError as exc:
                    logger.warning("push round of version %d stopped: %s", version, exc)
                except Exception:  # noqa: BLE001 - a round must never take the process down
                    logger.exception("push round of version %d failed", version)
                finally:
                    with self._rounds_lock:
                        self._rounds.pop(threading.get_ident(), None)
                        self._rounds_done.notify_all()

            thread = threading.Thread(target=run, name=f"push-round-{version}", daemon=True)
            thread.start()
            assert thread.ident is not None
            self._rounds[thread.ident] = (version, stop)

    def wait_rounds(self, timeout_s: float | None = None) -> bool:
        """Wait until no push round runs in this process; False when ``timeout_s`` passed."""
        with self._rounds_lock:
            return self._rounds_done.wait_for(lambda: not self._rounds, timeout=timeout_s)

    def _push(
        self,
        record: Mapping[str, Any],
        nodes: Sequence[NodeRecord],
        catalogue: Sequence[CatalogueEntry],
        *,
        only: set[str] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        """One push round of ``record`` (runs to the end; see the module docstring): nodes are
        pushed concurrently on the push workers, each as soon as it waits for no peer."""
        stop = stop or threading.Event()
        version = int(record["version"])
        entries = {e.model_id: e for e in catalogue}
        blocks_by_model = self.blocks_by_model(catalogue)
        live = {n.node_id: n for n in nodes}
        targets: dict[str, frozenset[str]] = {}
        target_models: dict[str, list[str]] = {}
        for node_id, placed in record["servers"].items():
            if node_id not in live:
                continue
            models = [m for m in placed["models"] if m in entries]
            target_models[node_id] = models
            targets[node_id] = frozenset().union(*(blocks_by_model[m] for m in models))
        held = {n: held_blocks(live[n], blocks_by_model) for n in live}
        holding = {n: [m for m in live[n].serving_models if m in entries] for n in live}
        pushes: Mapping[str, Any] = record.get("push", {})
        urls = {n: live[n].url for n in live}
        holdings = Holdings(targets, held)
        push = _Push(version, entries, blocks_by_model, target_models, holdings, holding, urls)
        pending = {n for n in targets if only is None or n in only}
        with self._rounds_lock:
            self._active.update(pending)
        dispatch = DispatchState(started_at=time.time(), alive_at=time.time()).model_dump()
        self.state.update_dispatch(version, dispatch)
        alive_next = time.monotonic() + ROUND_ALIVE_S
        check_next = time.monotonic() + ROUND_CHECK_S
        inflight: dict[Future[_Ended | None], str] = {}
        # Ended pushes, in order (waiting on all in-flight futures at once costs every one of
        # them per wake-up: quadratic in a round over many nodes).
        finished: queue.SimpleQueue[Future[_Ended | None]] = queue.SimpleQueue()
        # Block -> the node of this round fetching it (no peer holds it yet).
        fetching: dict[str, str] = {}
        claimed: dict[str, list[str]] = {}  # node -> the blocks of ``fetching`` it claimed
        # The pending nodes that wait, by what they wait on: an ended push wakes only the nodes
        # whose wait it may have ended (controller.round_waits), not every waiting node.
        waits = RoundWaits()
        busy = set(pending)  # nodes whose push has not ended: pending or in flight
        retained: list[str] = []

        def start(node_id: str, prior: Mapping[str, Any]) -> None:
            pending.discard(node_id)
            waits.discard(node_id)
            with push.lock:
                push.started[node_id] = time.monotonic()
                push.accepted.discard(node_id)
                for block_id in holdings.unheld(node_id):
                    if fetching.setdefault(block_id, node_id) == node_id:
                        claimed.setdefault(node_id, []).append(block_id)
            future = self._pool.submit(self._push_node, live[node_id], push, prior, stop)
            inflight[future] = node_id
            future.add_done_callback(finished.put)

        def ended(node_id: str) -> set[str]:
            busy.discard(node_id)
            for block_id in claimed.pop(node_id, ()):
                if fetching.get(block_id) == node_id:
                    del fetching[block_id]
            if node_id not in push.retaining:  # a retaining node gets its exact plan below
                with self._rounds_lock:
                    self._active.discard(node_id)
            with push.lock:
                held_now = push.holdings.held.get(node_id, frozenset())
            return waits.ended(node_id, held_now)

        def claim_lapsed(node_id: str) -> bool:
            return node_id not in push.accepted and push.started.get(node_id, 0.0) <= (
                time.monotonic() - CLAIM_ACCEPT_S
            )

        ask = set(pending)  # the pending nodes whose wait is to be (re)decided
        try:
            while (pending or inflight) and not stop.is_set():
                for node_id in sorted(ask):
                    if node_id not in pending:
                        continue
                    why = _wait_reason(node_id, push, busy, fetching)
                    if why is None:
                        start(node_id, pushes.get(node_id, {}))
                    else:
                        waits.wait(node_id, why)
                ask = set()
                if pending and not inflight:
                    # Every remaining node waits for another pending one (a swap): one gets a
                    # retaining plan (see _push_node) and the others follow.
                    order = sorted(pending)
                    with push.lock:
                        node_id = holdings.next_node(order) or order[0]
                    start(node_id, pushes.get(node_id, {}))
                done = []
                with contextlib.suppress(queue.Empty):
                    done.append(finished.get(timeout=ROUND_CHECK_S))
                    while True:
                        done.append(finished.get_nowait())
                # The outcomes of the pushes that ended together: one Redis round trip.
                self._record_ended([f.result() for f in done], version)
                for future in done:
                    node_id = inflight.pop(future)
                    ask |= ended(node_id)
                    if node_id in push.retaining:
                        retained.append(node_id)
                if waits:
                    ask |= waits.expired(claim_lapsed)
                # One look at the stored version per ROUND_CHECK_S, not per ended push (a
                # round over 1,000 nodes ends pushes hundreds of times a second).
                now = time.monotonic()
                if now >= check_next:
                    check_next = now + ROUND_CHECK_S
                    if self._superseded(version):
                        stop.set()
                        continue
                if now >= alive_next:
                    alive_next = now + ROUND_ALIVE_S
                    dispatch["alive_at"] = time.time()
                    self.state.update_dispatch(version, dispatch)
            # Nodes that kept last copies get their exact plan once the new holders confirmed.
            again = []
            for node_id in retained:
                with push.lock:
                    safe = not holdings.last_copies(node_id)
                if safe and not stop.is_set():
                    prior = {"version": version, "status": "retained", "attempts": 0}
                    again.append(
                        self._pool.submit(self._push_node, live[node_id], push, prior, stop)
                    )
            self._record_ended([future.result() for future in again], version)
        finally:
            # Pushes still running when the round stopped record their own outcome.
            for future in inflight:
                future.add_done_callback(lambda f: self._record_ended([f.result()], version))
            with self._rounds_lock:
                self._active.difference_update(pending)
                self._active.difference_update(inflight.values())
                self._active.difference_update(retained)
            if not stop.is_set():
                dispatch.update(state="done", finished_at=time.time())
                self.state.update_dispatch(version, dispatch)

    def _superseded(self, version: int) -> bool:
        """Whether the stored placement moved past ``version`` (another plan, maybe in another
        process): the round stops dispatching (the edges would refuse it anyway)."""
        try:
            current = self.state.placement_version()
        except StateUnavailableError:
            return False
        return current is not None and current != version

    def _push_node(
        self, node: NodeRecord, push: _Push, prior: Mapping[str, Any], stop: threading.Event
    ) -> _Ended | None:
        """Push one node its plan (retaining last copies, see the module docstring); returns
        the outcome to record (:meth:`_record_ended`; None: nothing to record). Runs on a push
        worker."""
        if stop.is_set():
            return None
        models, kept, body = self._plan_body(node, push)
        node_id = node.node_id
        # Routes stop naming what this plan evicts before the node starts evicting (and
        # name again what an earlier plan dropped but this one brings back); one round trip
        # with the "pushing" status.
        dropping = sorted(set(node.models) - set(models))
        started = time.time()
        pushing = PushStatus(
            status="pushing", version=push.version, at=started, models=push.target_models[node_id]
        )
        self.state.record_push(push.version, node_id, pushing.to_json(), dropping=dropping)

        def accepted() -> None:
            with push.lock:
                push.accepted.add(node_id)

        status = self._push_one(node, body, push.version, stop, on_accepted=accepted)
        status.update(at=started, version=push.version, models=push.target_models[node_id])
        held_models: list[str] | None = None
        if status["status"] == "applied":
            held_models = status.get("held_models", models)
            with push.lock:
                push.holding[node_id] = [m for m in held_models if m in push.entries]
                push.holdings.set_held(
                    node_id,
                    frozenset().union(
                        *(push.blocks_by_model.get(m, frozenset()) for m in held_models)
                    ),
                )
            if kept:
                status.update(status="retained", retained=kept)
        if status["status"] != "applied":
            same = prior.get("version") == push.version and prior.get("status") != "applied"
            attempts = int(prior.get("attempts", 0)) + 1 if same else 1
            status["attempts"] = attempts
            status["retry_at"] = status["at"] + self._backoff_s(attempts)
        if status["status"] == "superseded" and stop.is_set():
            return None  # a newer round took over: nothing of this one is recorded
        return _Ended(node_id, PushStatus(**status).to_json(), held_models)

    def _record_ended(self, outcomes: Sequence[_Ended | None], version: int) -> None:
        """Record the outcomes of pushes that ended (their confirmed models when applied, and
        the push status) in one Redis round trip (:meth:`RedisState.record_pushes`)."""
        steps = [o for o in outcomes if o is not None]
        if not steps:
            return
        self.state.record_pushes(version, [(o.node_id, o.status, o.held_models) for o in steps])
        for o in steps:
            self.metrics.pushes.labels(status=o.status["status"]).inc()

    def _plan_body(self, node: NodeRecord, push: _Push) -> tuple[list[str], list[str], bytes]:
        """``(the models of node's plan, those kept for last copies, the encoded plan)``."""
        node_id = node.node_id
        with push.lock:
            models = list(push.target_models[node_id])
            keep = push.holdings.last_copies(node_id)
            kept: list[str] = []
            if keep:
                kept = [
                    m
                    for m in push.holding[node_id]
                    if m not in models and push.blocks_by_model[m] & keep
                ]
                models = self._fitting(node, kept, models, push.entries)
                push.retaining.add(node_id)
            else:
                push.retaining.discard(node_id)
            needed = (
                frozenset().union(*(push.blocks_by_model[m] for m in models))
                - push.holdings.held[node_id]
            )
            peers: dict[str, list[str]] = {}
            for block_id in sorted(needed):
                best = push.holdings.peers(node_id, block_id, MAX_PEERS)
                if best:
                    peers[block_id] = [push.urls[p] for p in best]
        # Each model's manifest is encoded once per round (push.manifest_text), not per node.
        body = EdgePlan.encode(
            push.version, [push.manifest_text(m) for m in models], peers, self.settings.origin_url
        )
        return models, kept, body

    def _fitting(
        self,
        node: NodeRecord,
        kept: Sequence[str],
        wanted: Sequence[str],
        entries: Mapping[str, CatalogueEntry],
    ) -> list[str]:
        """``kept`` plus as many of ``wanted`` (in order) as fit the node's capacity."""
        sizes: dict[BlockId, int] = {}
        chosen: list[str] = []
        for model_id in [*kept, *wanted]:
            if model_id in chosen:
                continue
            more = dict(sizes)
            more.update(entries[model_id].manifest.block_sizes())
            fits = node.capacity_bytes < 0 or sum(more.values()) <= node.capacity_bytes
            if model_id in kept or fits:
                sizes = more
                chosen.append(model_id)
        return chosen

    def _backoff_s(self, attempts: int) -> float:
        """Delay before retry number ``attempts`` of a failed push: doubling from
        ``retry_interval_s``, capped, with equal jitter (never less than half the step)."""
        step = self.settings.retry_interval_s * 2.0 ** max(0, attempts - 1)
        step = min(step, max(self.settings.retry_interval_s, self.settings.retry_max_interval_s))
        return step / 2 + random.uniform(0, step / 2)  # noqa: S311 - jitter, not security

    def _push_one(
        self,
        node: NodeRecord,
        body: bytes,
        version: int,
        stop: threading.Event,
        *,
        on_accepted: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """PUT the plan (the edge answers 202 after validating it), then follow it with
        ``GET /v1/plan`` until it applied or failed, while its progress moves (see the module
        docstring: ``push_timeout_s`` in all, ``push_stall_s`` without progress)."""
        url = f"{node.url}/v1/plan"
        started = time.monotonic()
        status: dict[str, Any] = {}
        stall_s = self.settings.push_stall_s
        accept_s = min(stall_s, self.settings.push_accept_timeout_s, self.settings.push_timeout_s)
        try:
            response = self.http.put(
                url,
                content=body,
                headers=_JSON_HEADERS,
                timeout=httpx.Timeout(accept_s, connect=min(5.0, accept_s)),
            )
        except httpx.TimeoutException as exc:
            logger.warning("plan push not accepted node_id=%s url=%s: %r", node.node_id, url, exc)
            why = f"the node did not accept the plan within {accept_s:g} s"
            status.update(status="stalled", code=ErrorCode.push_stalled, error=why)
            return status
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            logger.warning("plan push failed node_id=%s url=%s error=%r", node.node_id, url, exc)
            status.update(status="unreachable", code="upstream_unavailable", error=repr(exc))
            return status
        if response.status_code != 202:
            code = response.headers.get("X-Error-Code", f"http_{response.status_code}")
            try:
                message = ErrorBody.model_validate_json(response.content).error.message
            except ValueError:
                message = response.text[:500]
            logger.warning(
                "plan rejected node_id=%s status=%d code=%s",
                node.node_id,
                response.status_code,
                code,
            )
            status.update(
                status="failed", code=code, error=message, http_status=response.status_code
            )
            return status
        try:
            plan_id = PlanAccepted.model_validate_json(response.content).plan_id
        except ValueError:
            status.update(status="failed", code="bad_response", error=response.text[:500])
            return status
        status["plan_id"] = plan_id
        if on_accepted is not None:
            on_accepted()
        poll_s = min(PROGRESS_POLL_S, stall_s / 4)
        last_progress: Any = None
        moved_at = time.monotonic()
        deadline = started + self.settings.push_timeout_s
        while not stop.wait(poll_s):
            now = time.monotonic()
            current = self._plan_status(node, timeout_s=max(poll_s, 1.0))
            if current is not None:
                outcome = _outcome(current, plan_id, version)
                if outcome is not None:
                    status.update(outcome)
                    status["seconds"] = round(time.monotonic() - started, 3)
                    if status["status"] == "applied":
                        logger.info(
                            "plan applied node_id=%s version=%s fetched=%s",
                            node.node_id,
                            version,
                            status["fetched_bytes_by_source"],
                        )
                    else:
                        logger.warning(
                            "plan %s node_id=%s version=%s: %s",
                            status["status"],
                            node.node_id,
                            version,
                            status.get("error"),
                        )
                    return status
                progress = (
                    current.state,
                    current.progress.bytes_done,
                    current.progress.blocks_done,
                )
                if progress != last_progress:
                    last_progress, moved_at = progress, now
                    status["progress"] = current.progress.model_dump()
            if now >= deadline or now - moved_at >= stall_s:
                why = "timed out" if now >= deadline else f"made no progress for {stall_s:g} s"
                logger.warning("plan push %s node_id=%s url=%s", why, node.node_id, url)
                status.update(
                    status="stalled", code=ErrorCode.push_stalled, error=f"the node {why}"
                )
                return status
        status.update(
            status="superseded",
            code=ErrorCode.plan_superseded,
            error="a newer push round took over",
        )
        return status

    def _applied_versions(self, nodes: Sequence[NodeRecord]) -> list[int]:
        """The placement versions the nodes report having applied (``GET /v1/plan``)."""
        versions: list[int] = []
        if not nodes:
            return versions
        # Asked on a pool of their own (not the push pool, which hung pushes may fill), of
        # PROBE_WORKERS threads: a hung node costs the timeout once per PROBE_WORKERS nodes,
        # and the probe leaves the request threads the GIL (16 threads probing 1,000 nodes
        # made GET /v1/status wait behind them while a first plan was stored).
        with ThreadPoolExecutor(max_workers=min(PROBE_WORKERS, len(nodes))) as probe:
            answers = list(probe.map(lambda n: self._plan_status(n, timeout_s=2.0), nodes))
        for current in answers:
            if current is not None and current.version is not None:
                if 0 <= current.version <= 2**53:
                    versions.append(current.version)
        return versions

    def _plan_status(self, node: NodeRecord, *, timeout_s: float) -> PlanStatus | None:
        """What the node reports of its current/last plan (None: no usable answer)."""
        try:
            response = self.http.get(f"{node.url}/v1/plan", timeout=timeout_s)
            return PlanStatus.model_validate_json(response.content)
        except (httpx.HTTPError, httpx.InvalidURL, ValueError):
            return None

    # -- the background loop --------------------------------------------------------------
    def tick(self, *, now_s: float | None = None) -> str | None:
        """One pass of the loop: re-plan or re-push when needed; returns what it did."""
        now = time.time() if now_s is None else now_s
        nodes = self.state.live_nodes()
        self.metrics.live_nodes.set(len(nodes))
        self.adopt_models(nodes, now_s=now)
        view = self.active_topology(nodes)
        signature = self.signature(nodes, view)
        last = self.state.get_plan_attempt()
        if last is None or last.get("signature") != signature:
            # Wait for the change to settle (nodes registering one by one, a batch of models).
            if self._pending_sig is None or self._pending_sig[0] != signature:
                self._pending_sig = (signature, now)
            if now - self._pending_sig[1] >= self.settings.settle_s:
                self._pending_sig = None
                self.plan(trigger="change", blocking_timeout_s=0.0)
                return "plan"
            return None
        self._pending_sig = None
        interval = self.settings.plan_interval_s
        if interval > 0 and now - float(last.get("at", 0.0)) >= interval:
            self.plan(trigger="interval", blocking_timeout_s=0.0)
            return "plan"
        record = self.state.get_placement()
        if record is None:
            return None
        retry = []
        with self._rounds_lock:
            active = set(self._active)
        dispatch = record.get("dispatch") or {}
        # A round still running somewhere (it refreshed alive_at lately) owns its pushes.
        round_alive = dispatch.get("state") == "running" and (
            now - float(dispatch.get("alive_at", dispatch.get("started_at", 0.0))) < ROUND_DEAD_S
        )
        for node in nodes:
            placed = record["servers"].get(node.node_id)
            if placed is None or node.node_id in active:
                continue
            push = record.get("push", {}).get(node.node_id, {})
            age = now - float(push.get("at", 0.0))
            status = push.get("status")
            if status in IN_FLIGHT_STATUSES and round_alive:
                continue
            if status in RETRIED_STATUSES:
                attempts = int(push.get("attempts", 0))
                due = float(
                    push.get(
                        "retry_at", float(push.get("at", 0.0)) + self.settings.retry_interval_s
                    )
                )
                if attempts < self.settings.push_retry_budget and now >= due:
                    retry.append(node.node_id)
            elif status == "applied" and set(node.serving_models) != set(placed["models"]):
                if age >= self.settings.retry_interval_s:  # drifted: repaired
                    retry.append(node.node_id)
        if retry:
            self.repush(retry)
            return "repush"
        return None

    def run_forever(self) -> None:
        while not self._stop.is_set():
            try:
                if self.leadership.leading():  # one replica's loop runs (controller.leader)
                    self.tick()
                if self._redis_down:
                    logger.info("planner loop: Redis is back")
                self._redis_down = False
            except StateUnavailableError as exc:
                if not self._redis_down:  # once per outage, not every check interval
                    logger.warning("planner loop: %s", exc)
                self._redis_down = True
            except Exception:  # noqa: BLE001 - the loop must survive anything
                logger.exception("planner loop failed")
            self._stop.wait(self.settings.check_interval_s)

    def start(self) -> None:
        """Run the background loop; it ticks only while this replica holds the leader lease."""
        self.leadership.start()
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()
        self.leadership.stop()


class _PhaseClock:
    """Wall seconds of a plan's phases (``timings_s`` of the plan attempt)."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._at = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.timings[phase] = round(now - self._at, 4)
        self._at = now


@dataclass(frozen=True, slots=True)
class _Ended:
    """An ended push's outcome, to record (:meth:`Planner._record_ended`)."""

    node_id: str
    status: dict[str, Any]  # the push status (PushStatus JSON)
    held_models: list[str] | None  # the node's confirmed models (applied), else None


@dataclass(slots=True)
class _Push:
    """One push round's working state: what each node is meant to hold and has confirmed
    (mutated by the push workers under ``lock``)."""

    version: int
    entries: Mapping[str, CatalogueEntry]
    blocks_by_model: Mapping[str, frozenset[str]]
    target_models: Mapping[str, list[str]]
    # Targets and confirmed blocks per live node (updated after each push), indexed by block.
    holdings: Holdings
    holding: dict[str, list[str]]  # confirmed models per live node
    urls: Mapping[str, str]
    retaining: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)  # holdings/holding/retaining
    started: dict[str, float] = field(default_factory=dict)  # monotonic start of each push
    accepted: set[str] = field(default_factory=set)  # nodes that answered 202
    manifests: dict[str, str] = field(default_factory=dict)  # model id -> its manifest JSON

    def manifest_text(self, model_id: str) -> str:
        """The model's manifest as JSON, encoded once per round (thread-safe: a race encodes
        it twice, with the same text)."""
        text = self.manifests.get(model_id)
        if text is None:
            text = self.manifests[model_id] = self.entries[model_id].manifest.to_json()
        return text


def _wait_reason(
    node_id: str, push: _Push, busy: set[str], fetching: Mapping[str, str]
) -> Wait | None:
    """Why ``node_id`` must wait before its push starts (None: it need not): its evictions
    would remove the last confirmed copy of a block a node still in the round (``busy``) is
    placed to hold, or it needs a block no node holds yet that another node of the round is
    fetching (it copies it from that peer afterwards, so the origin serves each block once) -
    unless that node has not accepted its plan within :data:`CLAIM_ACCEPT_S`. Costs the node's
    own blocks, not the number of nodes (:class:`~controller.holdings.Holdings`); the round asks
    a waiting node again only when its answer may have changed
    (:class:`~controller.round_waits.RoundWaits`)."""
    with push.lock:
        holdings = push.holdings
        for block_id in holdings.last_copies(node_id):
            for m in holdings.lacking(block_id):
                if m != node_id and m in busy:
                    return Wait(on=m, block_id=block_id, fetch=False)
        claim_by = time.monotonic() - CLAIM_ACCEPT_S
        for block_id in holdings.targets.get(node_id, ()):
            if holdings.is_held(block_id):
                continue
            fetcher = _fetcher(block_id, node_id, push, fetching, claim_by)
            if fetcher is not None:
                return Wait(on=fetcher, block_id=block_id, fetch=True)
    return None


def _fetcher(
    block_id: str, node_id: str, push: _Push, fetching: Mapping[str, str], claim_by: float
) -> str | None:
    """The other node of the round fetching ``block_id`` that ``node_id`` waits for (it
    accepted its plan, or started less than CLAIM_ACCEPT_S ago), or None."""
    n = fetching.get(block_id)
    if (
        n is not None
        and n != node_id
        and (n in push.accepted or push.started.get(n, 0.0) > claim_by)
    ):
        return n
    return None


def _outcome(current: PlanStatus, plan_id: str, version: int) -> dict[str, Any] | None:
    """The push outcome the node's plan status shows for ``plan_id`` (None: still going)."""
    if current.plan_id != plan_id:
        if current.plan_version is not None and current.plan_version >= version:
            return {
                "status": "superseded",
                "code": ErrorCode.plan_superseded,
                "error": f"the node replaced the plan with {current.plan_id}",
            }
        return {
            "status": "failed",
            "code": ErrorCode.plan_lost,
            "error": "the node no longer knows the plan (did it restart?)",
        }
    progress = current.progress.model_dump()
    if current.state == "applied":
        return {
            "status": "applied",
            "held_models": list(current.held_models),
            "fetched_bytes_by_source": dict(current.fetched_bytes_by_source),
            "evicted_bytes": current.evicted_bytes,
            "progress": progress,
        }
    if current.state in ("failed", "superseded"):
        return {
            "status": current.state,
            "code": current.error_code or ErrorCode.internal,
            "error": current.error or "",
            "http_status": current.error_http_status,
            "progress": progress,
        }
    return None
