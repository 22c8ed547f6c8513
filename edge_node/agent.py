"""Decentralised mode (``EDGE_AGENT_CHECKPOINT``): the node runs its trained ``marl`` agent.

The checkpoint is the file :func:`controller.delay.marl.save_checkpoint` writes
(``trimcache.marl-checkpoint/v1``: the shared per-agent Q-network, the PB ids it acts on
(``units``) and the node ids it was trained for (``nodes``); this node's id must be one of
them). It is read here without the controller's code (the services never import each other):
the network is the three-layer MLP of ``marl.AgentNet`` and the observation is laid out
exactly as ``marl.CacheGame.observe`` builds it (tests/edge_node/test_agent.py checks both
against the controller's classes)::

    [held (B), demand (B), neighbours holding (B), size / capacity (B), free fraction,
     round / max rounds, one-hot node id (N)]          -> Q over (PB 1..B, stop)

Every ``EDGE_AGENT_INTERVAL_S`` the loop (a daemon thread, :class:`EdgeAgent`):

1. reads the *demand it observed*: the last ``EDGE_AGENT_WINDOW_REQUESTS`` requests that named
   a model (``POST /v1/blocks:batch`` with ``model_id``, Hub ``resolve``); nothing observed yet:
   nothing to decide;
2. reads the catalogue (``GET /v1/models``, manifests of new models) and groups it into PBs
   (:func:`core.group_by_sharing`, the planner's grouping, so the ids match the checkpoint's);
   per PB its demand share is the share of observed requests for models containing it;
3. reads the holdings the neighbours announce (``GET /v1/nodes``: complete models from their
   heartbeats; ``GET /v1/topology``: neighbours are the nodes covering an area this node
   covers, as in training);
4. acts as in training, greedily: from an empty cache, round by round, it adds the PB with the
   largest Q among those it does not hold that fit the free capacity (``EDGE_CAPACITY_BYTES``),
   until it picks ``stop``; PBs the catalogue lacks cannot be picked;
5. keeps the models all of whose PBs it picked (a node holds whole models, as a plan does:
   :func:`controller.delay_planning.whole_models`), after completing the demanded models it
   picked some PBs of, most demanded first, while they fit (:func:`complete_models`; a PB set
   that completes no model would hold nothing); when that differs from what it holds,
   applies it as a local plan through the plan worker (:mod:`edge_node.plans`,
   :func:`edge_node.ingest.apply_plan`: peers from the controller's route first, then the
   origin; everything else evicted; capacity checked), then sends a heartbeat at once.

The heartbeat announces ``cache_policy: "marl"`` while the agent is on: the controller plans
nothing for the node (as for ``lru``/``lfu`` nodes), routes its confirmed models to it and makes
it the *home* of clients near it, so their requests for models it lacks reach it (served by
pull-through, :mod:`edge_node.pull`, and counted as demand). ``PUT /v1/plan`` is refused while
the agent is on. ``PUT /v1/agent {"enabled": false}`` hands the node back to the controller
(the agent stops deciding, the next heartbeat announces no policy, the planner plans the node
again and its plans are accepted); ``{"enabled": true}`` resumes the agent. The switch is
kept in ``DATA_DIR/agent.json``, so a node handed back stays handed back when it restarts. The
controller does both for an operator and plans at once (``POST /v1/agents:takeover|release``,
:mod:`controller.agents`, ``trimcache agents``). ``"frozen": true``
keeps the node's cache as it is: the agent still observes demand and decides
(``wanted_models``) but applies nothing until ``"frozen": false`` (a measurement against a
known placement: bench/delivery.py).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import httpx

from core.blocks import group_by_sharing
from core.digest import BlockId
from core.errors import ManifestError, TrimCacheError
from core.fsutil import atomic_write_json
from core.manifest import ModelManifest
from edge_node.catalogue import Catalogue
from edge_node.errors import UpstreamUnavailableError
from edge_node.ingest import Plan
from edge_node.node import EdgeNode
from edge_node.plans import PlanWorker

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

CHECKPOINT_SCHEMA = "trimcache.marl-checkpoint/v1"
#: What the heartbeat announces as the node's ``cache_policy`` while the agent is on.
POLICY: Literal["marl"] = "marl"
#: The agent's on/off state under the data dir (:meth:`EdgeAgent.set_enabled`).
STATE_FILE = "agent.json"
#: The agent network's layers in its state dict (``marl.AgentNet``: Linear, ReLU, Linear,
#: ReLU, Linear).
_LAYERS = ("net.0", "net.2", "net.4")
#: Relative PB sizes are clamped here, as in training.
_MAX_REL_SIZE = 2.0


class AgentCheckpointError(ValueError):
    """``EDGE_AGENT_CHECKPOINT`` cannot drive this node (the message says why)."""


@dataclass(frozen=True)
class AgentPolicy:
    """The trained Q-network and the layout it expects, for one node (``index``)."""

    path: Path
    units: tuple[str, ...]
    nodes: tuple[str, ...]
    index: int
    max_rounds: int
    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]

    def q_values(self, obs: torch.Tensor) -> torch.Tensor:
        """Q over (PBs..., stop) for one observation."""
        import torch

        x = obs
        for i, (weight, bias) in enumerate(self.layers):
            x = x @ weight.T + bias
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


def load_policy(path: Path, node_id: str) -> AgentPolicy:
    """Read a ``marl`` checkpoint for node ``node_id``.

    Raises:
        AgentCheckpointError: no such file, not a checkpoint, not trained for this node, or
            a network whose shapes do not match its units and nodes.
    """
    import torch

    where = f"EDGE_AGENT_CHECKPOINT {path}"
    if not path.is_file():
        raise AgentCheckpointError(f"{where}: no such file")
    try:
        doc = torch.load(path, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds on a bad file
        first = (str(exc).strip().splitlines() or [""])[0][:100]  # torch's messages run long
        raise AgentCheckpointError(
            f"{where}: not a torch checkpoint ({type(exc).__name__}: {first})"
        ) from exc
    if not isinstance(doc, Mapping) or doc.get("schema") != CHECKPOINT_SCHEMA:
        raise AgentCheckpointError(f"{where}: not a marl checkpoint (schema {CHECKPOINT_SCHEMA})")
    try:
        units = tuple(str(u) for u in doc["units"])
        nodes = tuple(str(n) for n in doc["nodes"])
        state = doc["agent"]
        layers = tuple(
            (state[f"{k}.weight"].double(), state[f"{k}.bias"].double()) for k in _LAYERS
        )
        cap = int(doc["config"]["max_rounds"])
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise AgentCheckpointError(f"{where}: incomplete marl checkpoint ({exc!r})") from exc
    if node_id not in nodes:
        raise AgentCheckpointError(
            f"{where}: trained for nodes {', '.join(nodes)}, not for node_id {node_id}"
        )
    obs_dim, n_actions = 4 * len(units) + 2 + len(nodes), len(units) + 1
    if layers[0][0].shape[1] != obs_dim or layers[-1][0].shape[0] != n_actions:
        raise AgentCheckpointError(
            f"{where}: its network does not match its {len(units)} PBs and {len(nodes)} nodes"
        )
    return AgentPolicy(path, units, nodes, nodes.index(node_id), cap, layers)


def max_rounds(sizes: Sequence[float], capacity: float, cap: int) -> int:
    """Most PBs this node can hold (smallest first) + 1, capped: the episode length bound of
    training (``marl._max_rounds`` for one node)."""
    left, count = capacity, 0
    for size in sorted(s for s in sizes if math.isfinite(s)):
        if size <= left:
            left -= size
            count += 1
    return max(1, min(count + 1, cap))


def observation(
    policy: AgentPolicy,
    *,
    held: Sequence[float],
    demand: Sequence[float],
    neighbours: Sequence[float],
    sizes: Sequence[float],
    capacity: float,
    round_: int,
    rounds: int,
) -> torch.Tensor:
    """The agent's local observation, laid out as ``marl.CacheGame.observe`` (module doc)."""
    import torch

    cap = max(capacity, 1.0)
    used = sum(s for s, h in zip(sizes, held, strict=True) if h)
    rel = [min(s / cap, _MAX_REL_SIZE) if math.isfinite(s) else _MAX_REL_SIZE for s in sizes]
    one_hot = [1.0 if i == policy.index else 0.0 for i in range(len(policy.nodes))]
    return torch.tensor(
        [*held, *demand, *neighbours, *rel, (capacity - used) / cap, round_ / rounds, *one_hot],
        dtype=torch.float64,
    )


def choose_units(
    policy: AgentPolicy,
    *,
    demand: Sequence[float],
    neighbours: Sequence[float],
    sizes: Sequence[float],
    capacity: float,
) -> list[int]:
    """The PBs (indices into ``policy.units``) the agent builds its cache from, greedily
    (step 4 of the module doc). ``sizes`` is ``inf`` for a PB the catalogue lacks."""
    import torch

    b = len(policy.units)
    held = [0.0] * b
    rounds = max_rounds(sizes, capacity, policy.max_rounds)
    free = float(capacity)
    for round_ in range(rounds):
        obs = observation(
            policy, held=held, demand=demand, neighbours=neighbours, sizes=sizes,
            capacity=capacity, round_=round_, rounds=rounds,
        )  # fmt: skip
        with torch.no_grad():
            q = policy.q_values(obs)
        valid = [held[j] == 0.0 and sizes[j] <= free + 1e-9 for j in range(b)] + [True]
        masked = q.masked_fill(~torch.tensor(valid), -math.inf)
        action = int(masked.argmax())
        if action == b:
            break
        held[action] = 1.0
        free -= sizes[action]
    return [j for j in range(b) if held[j]]


def complete_models(
    chosen: set[str],
    pbs_of: Mapping[str, set[str]],
    sizes: Mapping[str, float],
    shares: Mapping[str, float],
    *,
    free_bytes: float,
) -> set[str]:
    """``chosen`` PBs plus the missing PBs of the demanded models the agent started (some of
    their PBs chosen), most demanded first, while they fit ``free_bytes``: the agent acts on
    PBs but a node holds whole models, and a PB set completing no model would hold nothing."""
    out, free = set(chosen), free_bytes
    for model_id in sorted(shares, key=lambda m: (-shares[m], m)):
        ids = pbs_of.get(model_id, set())
        missing = ids - out
        if shares[model_id] <= 0 or not missing or not ids & out:
            continue
        extra = sum(sizes.get(u, math.inf) for u in missing)
        if extra <= free:
            out |= missing
            free -= extra
    return out


class DemandWindow:
    """The last N requests that named a model (thread-safe)."""

    def __init__(self, size: int) -> None:
        self._window: deque[str] = deque(maxlen=size)
        self._lock = threading.Lock()
        self.observed = 0

    def observe(self, model_id: str) -> None:
        with self._lock:
            self._window.append(model_id)
            self.observed += 1

    def shares(self) -> dict[str, float]:
        """Model -> share of the window's requests (empty: nothing observed)."""
        with self._lock:
            counts, total = Counter(self._window), len(self._window)
        return {m: n / total for m, n in sorted(counts.items())}


@dataclass
class AgentStatus:
    """What ``GET /v1/agent`` reports (mutated by the loop)."""

    decisions: int = 0
    applied: int = 0
    last_decision_at: float | None = None
    wanted_models: list[str] = field(default_factory=list)
    picked_units: int = 0
    known_units: int = 0
    neighbours: list[str] = field(default_factory=list)
    last_plan_id: str | None = None
    last_error: str | None = None


def _read_enabled(path: Path) -> bool:
    """The agent's saved on/off state (:data:`STATE_FILE`); on when none was saved or the
    file cannot be read (a node's first start; a torn file is never written: atomic)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return True
    return not (isinstance(doc, dict) and doc.get("enabled") is False)


class EdgeAgent:
    """The decentralised agent loop of one node (see the module docstring)."""

    def __init__(
        self,
        node: EdgeNode,
        policy: AgentPolicy,
        *,
        catalogue: Catalogue,
        worker: PlanWorker,
        client: httpx.Client,
    ) -> None:
        settings = node.settings
        if settings.capacity_bytes is None:
            raise AgentCheckpointError("EDGE_AGENT_CHECKPOINT needs EDGE_CAPACITY_BYTES")
        if not settings.controller_url:
            raise AgentCheckpointError("EDGE_AGENT_CHECKPOINT needs EDGE_CONTROLLER_URL")
        self.node, self.policy = node, policy
        self.catalogue, self.worker, self.client = catalogue, worker, client
        self.capacity_bytes = settings.capacity_bytes
        self.demand = DemandWindow(settings.agent_window_requests)
        self.status = AgentStatus()
        #: Whether the agent decides (``PUT /v1/agent``), kept across restarts in
        #: ``DATA_DIR/agent.json``: a node handed to the controller stays handed over.
        self._state_path = settings.data_dir / STATE_FILE
        self.enabled = _read_enabled(self._state_path)
        #: Frozen: the node keeps its cache (the agent observes demand and decides, but
        #: applies no plan), e.g. while a measurement runs against a known placement
        #: (bench/delivery.py).
        self.frozen = False
        #: Set by the app: a heartbeat now (after the node's holdings changed).
        self.on_change: Callable[[], None] | None = None
        self._manifests: dict[str, ModelManifest] = {}
        self._lock = threading.Lock()  # one decision at a time (loop and tests' tick())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edge-agent", daemon=True)

    @property
    def policy_name(self) -> Literal["marl"] | None:
        """The heartbeat's ``cache_policy``: ``marl`` while on, None when handed back."""
        return POLICY if self.enabled else None

    def set_enabled(self, enabled: bool) -> None:
        atomic_write_json(
            self._state_path, {"enabled": enabled}, durable=self.node.settings.durable
        )
        self.enabled = enabled
        logger.info("agent node_id=%s %s", self.node.node_id, "on" if enabled else "handed back")
        if self.on_change is not None:
            self.on_change()

    def set_frozen(self, frozen: bool) -> None:
        # Under the decision lock: once this returns, no decision of before is being applied.
        with self._lock:
            self.frozen = frozen
        logger.info("agent node_id=%s %s", self.node.node_id, "frozen" if frozen else "thawed")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        interval = self.node.settings.agent_interval_s
        while not self._stop.wait(interval):
            if not self.enabled:
                continue
            try:
                self.tick()
            except Exception as exc:  # noqa: BLE001 - the loop must survive anything
                logger.exception("agent tick failed node_id=%s", self.node.node_id)
                self.status.last_error = f"{type(exc).__name__}: {exc}"

    # -- one decision ------------------------------------------------------------------
    def tick(self) -> bool:
        """Decide once and apply the decision; True when the node's models changed."""
        with self._lock:
            shares = self.demand.shares()
            if not shares or not self.enabled:
                return False
            try:
                manifests = self._library()
                holdings = self._neighbour_models()
            except (UpstreamUnavailableError, httpx.HTTPError, ValueError, KeyError) as exc:
                self.status.last_error = f"controller: {exc}"
                logger.warning("agent node_id=%s: %s", self.node.node_id, exc)
                return False
            wanted = self._decide(manifests, shares, holdings)
            held = {m.model_id for m in self.node.complete_models()}
            placed = {m.model_id for m in self.node.manifests()}
            if self.frozen or (wanted == held and wanted == placed):
                return False  # frozen: decided (``wanted_models``), not applied
            return self._apply(sorted(wanted))

    def _decide(
        self,
        manifests: Mapping[str, ModelManifest],
        shares: Mapping[str, float],
        holdings: Mapping[str, frozenset[str]],
    ) -> set[str]:
        policy = self.policy
        groups = group_by_sharing(list(manifests.values()))
        pbs = {g.pb_id: g for g in groups}
        sizes = [float(pbs[u].size_bytes) if u in pbs else math.inf for u in policy.units]
        demand = [
            sum(shares.get(m, 0.0) for m in pbs[u].model_ids) if u in pbs else 0.0
            for u in policy.units
        ]
        pbs_of = {m: {g.pb_id for g in groups if m in g.model_ids} for m in manifests}
        neighbour_pbs = [
            set().union(*(pbs_of.get(m, set()) for m in models)) for models in holdings.values()
        ]
        share = [
            sum(1.0 for held in neighbour_pbs if u in held) / max(len(neighbour_pbs), 1)
            for u in policy.units
        ]
        picked = choose_units(
            policy,
            demand=demand,
            neighbours=share,
            sizes=sizes,
            capacity=float(self.capacity_bytes),
        )
        chosen = complete_models(
            {policy.units[j] for j in picked},
            pbs_of,
            {u: sizes[i] for i, u in enumerate(policy.units)},
            shares,
            free_bytes=self.capacity_bytes - sum(sizes[j] for j in picked),
        )
        wanted = {m for m, ids in pbs_of.items() if ids and ids <= chosen}
        s = self.status
        s.decisions += 1
        s.last_decision_at = time.time()
        s.wanted_models = sorted(wanted)
        s.picked_units, s.known_units = len(picked), sum(1 for u in policy.units if u in pbs)
        s.neighbours = sorted(holdings)
        s.last_error = None
        logger.info(
            "agent node_id=%s demand=%s picked_pbs=%d wants=%s",
            self.node.node_id,
            {m: round(v, 3) for m, v in shares.items()},
            len(picked),
            ",".join(sorted(wanted)) or "-",
        )
        return wanted

    def _apply(self, model_ids: Sequence[str]) -> bool:
        """Hold exactly ``model_ids`` (a local plan through the plan worker); waits for it."""
        manifests: list[ModelManifest] = []
        peers: dict[BlockId, tuple[str, ...]] = {}
        origin_url: str | None = None
        for model_id in model_ids:
            model = self.catalogue.route(model_id)  # manifest + the edges holding each block
            manifests.append(model.manifest)
            for block_id, urls in model.sources.peers.items():
                peers.setdefault(block_id, tuple(urls))
            origin_url = origin_url or model.sources.origin_url
        version = self.node.plan_record.version or 0
        plan = Plan(version=version, manifests=tuple(manifests), peers=peers, origin_url=origin_url)
        try:
            accepted = self.worker.submit(plan)
        except TrimCacheError as exc:
            self.status.last_error = f"local plan refused: {exc}"
            logger.warning("agent node_id=%s: local plan refused: %s", self.node.node_id, exc)
            return False
        self.status.last_plan_id = accepted.plan_id
        progress = self.worker.progress
        while not self._stop.is_set():
            status = progress.to_status()
            if status.plan_id != accepted.plan_id or status.state not in ("queued", "running"):
                break
            time.sleep(0.05)
        status = progress.to_status()
        ok = status.plan_id == accepted.plan_id and status.state == "applied"
        if ok:
            self.status.applied += 1
        else:
            self.status.last_error = f"local plan {status.state}: {status.error}"
        if self.on_change is not None:
            self.on_change()
        return ok

    # -- what the controller knows -----------------------------------------------------
    def _library(self) -> dict[str, ModelManifest]:
        """The catalogue's manifests (new ones fetched once; removed ones forgotten)."""
        listed = self.catalogue.controller_json("/v1/models")["models"]
        ids = sorted(str(m["model_id"]) for m in listed)
        for model_id in ids:
            if model_id not in self._manifests:
                doc = self.catalogue.controller_json(f"/v1/models/{model_id}")
                try:
                    self._manifests[model_id] = ModelManifest.from_dict(doc["manifest"])
                except ManifestError as exc:
                    raise ValueError(f"catalogue manifest of {model_id}: {exc}") from exc
        self._manifests = {m: self._manifests[m] for m in ids}
        return dict(self._manifests)

    def _neighbour_models(self) -> dict[str, frozenset[str]]:
        """Neighbour node id -> the complete models it announced (nodes sharing an area this
        node covers; only nodes the checkpoint knows, as in training)."""
        topology = self.catalogue.controller_json("/v1/topology")
        nodes = self.catalogue.controller_json("/v1/nodes")["nodes"]
        coverage = float(topology.get("channel", {}).get("coverage_m", 300.0))
        overrides = {str(n): (float(p[0]), float(p[1])) for n, p in topology["positions"].items()}
        areas = [(float(a["x_m"]), float(a["y_m"])) for a in topology["areas"].values()]

        def position(doc: Mapping[str, Any]) -> tuple[float, float]:
            node_id = str(doc["node_id"])
            return overrides.get(node_id, (float(doc["position"][0]), float(doc["position"][1])))

        def covered(p: tuple[float, float]) -> set[int]:
            return {i for i, a in enumerate(areas) if math.dist(a, p) <= coverage}

        me = self.node.node_id
        s = self.node.settings
        mine = covered(overrides.get(me, (s.position_x_m, s.position_y_m)))
        return {
            str(n["node_id"]): frozenset(str(m) for m in n["models"])
            for n in nodes
            if n["node_id"] != me
            and n["node_id"] in self.policy.nodes
            and covered(position(n)) & mine
        }

    def to_dict(self) -> dict[str, Any]:
        """``GET /v1/agent``."""
        s = self.status
        return {
            "enabled": self.enabled,
            "frozen": self.frozen,
            "policy": POLICY,
            "checkpoint": str(self.policy.path),
            "node_index": self.policy.index,
            "units": len(self.policy.units),
            "known_units": s.known_units,
            "interval_s": self.node.settings.agent_interval_s,
            "requests_observed": self.demand.observed,
            "demand": self.demand.shares(),
            "neighbours": list(s.neighbours),
            "decisions": s.decisions,
            "applied": s.applied,
            "last_decision_at": s.last_decision_at,
            "wanted_models": list(s.wanted_models),
            "picked_units": s.picked_units,
            "held_models": [m.model_id for m in self.node.complete_models()],
            "last_plan_id": s.last_plan_id,
            "last_error": s.last_error,
        }
