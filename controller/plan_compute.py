"""A plan's CPU work as one pure function: state already read -> placement problem -> solver
runs -> replan decision (:func:`compute`).

No Redis, no HTTP, no locks: everything comes in a :class:`PlanJob` and goes out as a
:class:`Computed` of plain values, so the planner (:mod:`controller.planner`) can run it in a
worker process (:mod:`controller.plan_worker`) as well as in its own thread, with the same
result. The planner keeps what must stay with the plan lock: reading the state, the version,
the fenced store and the push round.

- the problem (:func:`build_problem`): servers are the nodes (capacity from their
  registration), blocks are *parameter blocks* (:func:`core.group_by_sharing` over the
  catalogue manifests), users are topology areas with probabilities from
  :mod:`controller.demand`, reachability from :mod:`controller.topology`;
- the decision (:func:`decide`): the configured solver (``trimcaching-gen`` instead if it
  raises) from scratch and warm-started from the current placement, then
  :func:`~controller.placement.decide_replan`; with the delay objective a delay solver over
  the delay model (:mod:`controller.delay_planning`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from controller import delay_planning
from controller.adapters import base_models, with_base_sizes, with_bases
from controller.demand import request_probabilities
from controller.placement import (
    SOLVERS,
    PlacementProblem,
    PlacementResult,
    ReplanDecision,
    decide_replan,
    make_result,
)
from controller.settings import Settings
from controller.state import CatalogueEntry, NodeRecord
from controller.topology import Area, Channel, Topology, reachable_sets
from core import group_by_sharing

logger = logging.getLogger(__name__)

FALLBACK_SOLVER = "trimcaching-gen"


@dataclass(frozen=True, slots=True)
class PlainTopology:
    """A :class:`~controller.topology.Topology` as plain (picklable) mappings."""

    areas: dict[str, Area]
    channel: Channel
    deadlines_s: dict[str, float]
    positions: dict[str, tuple[float, float]]

    @classmethod
    def of(cls, topology: Topology) -> PlainTopology:
        return cls(
            dict(topology.areas),
            topology.channel,
            dict(topology.deadlines_s),
            dict(topology.positions),
        )

    def topology(self) -> Topology:
        return Topology(
            areas=MappingProxyType(dict(self.areas)),
            channel=self.channel,
            deadlines_s=MappingProxyType(dict(self.deadlines_s)),
            positions=MappingProxyType(dict(self.positions)),
        )


@dataclass(frozen=True, slots=True)
class PlanJob:
    """Everything one plan computes from (read by the planner under the plan lock)."""

    settings: Settings
    nodes: Sequence[NodeRecord]  # the planned nodes (on-demand ones already left out)
    catalogue: Sequence[CatalogueEntry]
    topology: PlainTopology
    demand_counts: Mapping[str, Mapping[str, float]]
    previous: Mapping[str, Any] | None  # the stored placement record


@dataclass(frozen=True, slots=True)
class Computed:
    """What :func:`compute` decided, as plain values."""

    solver: str  # the solver whose result was chosen (after a fallback: the fallback)
    status: str  # the chosen result's status ("infeasible": keep the old placement)
    hit_ratio: float
    solve_seconds: float
    servers: dict[str, tuple[list[str], list[str], int]]  # node -> (models, blocks, used bytes)
    replace: bool  # adopt it (else keep the current placement)
    reason: str
    current_hit_ratio: float | None
    problem: dict[str, int]  # areas, models, parameter_blocks
    attempt: dict[str, Any] = field(default_factory=dict)  # decision, delay, fallback_from
    problem_s: float = 0.0  # wall seconds building the problem
    solve_s: float = 0.0  # wall seconds solving and deciding
    pid: int = 0  # the process that computed it


def compute(job: PlanJob) -> Computed:
    """Build the problem of ``job`` and decide (module docstring); raises what the solver
    raises (the planner records it as the attempt's ``error``)."""
    started = time.perf_counter()
    topology = job.topology.topology()
    problem = build_problem(job.nodes, job.catalogue, topology, job.demand_counts)
    built = time.perf_counter()
    attempt: dict[str, Any] = {}
    decision, name = decide(
        job.settings, problem, job.previous, job.catalogue, attempt, job.nodes, topology
    )
    chosen = decision.chosen
    return Computed(
        solver=name,
        status=chosen.status,
        hit_ratio=chosen.hit_ratio,
        solve_seconds=chosen.solve_seconds,
        servers={
            n: (list(p.models), list(p.blocks), p.used_bytes) for n, p in chosen.servers.items()
        },
        replace=decision.replace,
        reason=decision.reason,
        current_hit_ratio=decision.current_hit_ratio,
        problem={
            "areas": len(problem.requests),
            "models": len(problem.models),
            "parameter_blocks": len(problem.blocks),
        },
        attempt=attempt,
        problem_s=built - started,
        solve_s=time.perf_counter() - built,
        pid=os.getpid(),
    )


def build_problem(
    nodes: Sequence[NodeRecord],
    catalogue: Sequence[CatalogueEntry],
    topology: Topology,
    counts: Mapping[str, Mapping[str, float]],
) -> PlacementProblem:
    """The placement problem over ``nodes`` (module docstring); ``counts`` are the decayed
    demand counts (area -> model -> count)."""
    manifests = [e.manifest for e in catalogue]
    groups = group_by_sharing(manifests)
    blocks = {g.pb_id: g.size_bytes for g in groups}
    # An adapter needs its base model too (controller.adapters).
    bases = base_models([e.summary() for e in catalogue])
    models = with_bases(
        {
            m.model_id: tuple(g.pb_id for g in groups if m.model_id in g.model_ids)
            for m in manifests
        },
        bases,
    )
    total = sum(blocks.values())
    servers = {n.node_id: (n.capacity_bytes if n.capacity_bytes >= 0 else total) for n in nodes}
    positions = {n.node_id: topology.positions.get(n.node_id, n.position) for n in nodes}
    model_ids = [m.model_id for m in manifests]
    probs = request_probabilities(topology.areas, model_ids, counts)
    max_weight = max((a.weight for a in topology.areas.values()), default=1.0) or 1.0
    requests = {
        area_id: {m: p * topology.areas[area_id].weight / max_weight for m, p in row.items()}
        for area_id, row in probs.items()
    }
    sizes = with_base_sizes({m.model_id: m.total_bytes for m in manifests}, bases)
    reachable = {
        area_id: {n: frozenset(ms) for n, ms in by_node.items()}
        for area_id, by_node in reachable_sets(topology, positions, sizes).items()
    }
    return PlacementProblem(
        blocks=blocks, models=models, servers=servers, requests=requests, reachable=reachable
    )


def decide(
    settings: Settings,
    problem: PlacementProblem,
    previous: Mapping[str, Any] | None,
    catalogue: Sequence[CatalogueEntry],
    attempt: dict[str, Any],
    nodes: Sequence[NodeRecord],
    topology: Topology,
) -> tuple[ReplanDecision, str]:
    """Solve from scratch and warm-started from the current placement, then decide whether
    the best candidate pays for its moves; the decision goes into ``attempt``. With the
    delay objective: :func:`decide_delay`."""
    current, invalid = current_placement(previous, catalogue, problem)
    if settings.objective == "delay":
        return decide_delay(settings, problem, current, invalid, attempt, nodes, topology)
    cold = solve(settings, problem, attempt)
    candidates = [cold]
    if current and cold[0].status != "infeasible":
        warm = solve(settings, problem, attempt, current=current)
        if warm[0].status != "infeasible":
            candidates.insert(0, warm)  # first: exact ties go to the warm start
    decision = decide_replan(
        problem,
        current,
        [result for result, _ in candidates],
        min_gain=settings.replan_min_gain,
        move_cost_per_gib=settings.replan_move_cost_per_gib,
        invalid=invalid,
    )
    name = next(n for result, n in candidates if result is decision.chosen)
    warm_chosen = len(candidates) == 2 and decision.chosen is candidates[0][0]
    attempt["decision"] = {**decision.to_json(), "warm_start": warm_chosen}
    return decision, name


def decide_delay(
    settings: Settings,
    problem: PlacementProblem,
    current: Mapping[str, frozenset[str]],
    invalid: str | None,
    attempt: dict[str, Any],
    nodes: Sequence[NodeRecord],
    topology: Topology,
) -> tuple[ReplanDecision, str]:
    """The delay objective: a delay solver over the delay model (controller.delay_planning)."""
    positions = {n.node_id: topology.positions.get(n.node_id, n.position) for n in nodes}
    dp = delay_planning.delay_problem(problem, positions, topology, seed=settings.solver_seed)
    name = settings.delay_solver
    if dp is None:  # no covered area has demand: nothing to minimise, hold nothing new
        candidate = make_result(problem, {}, solver=name)
        attempt["delay"] = {"solver": name, "skipped": "no covered area with demand"}
        return decide_replan(problem, current, [candidate], min_gain=1.0), name
    candidate = delay_planning.solve(
        problem,
        dp,
        solver=name,
        seed=settings.solver_seed,
        time_limit_s=settings.solver_time_limit_s,
        marl_checkpoint=settings.marl_checkpoint,
    )
    decision, numbers = delay_planning.decide(problem, dp, current, candidate, invalid=invalid)
    attempt["decision"] = {**decision.to_json(), "warm_start": False}
    attempt["delay"] = {"solver": name, "slots": len(dp.slots), **numbers}
    return decision, name


def solve(
    settings: Settings,
    problem: PlacementProblem,
    attempt: dict[str, Any],
    *,
    current: Mapping[str, frozenset[str]] | None = None,
) -> tuple[PlacementResult, str]:
    """Run the configured solver (warm-started from ``current`` when given); if it raises
    (e.g. ``trimcaching-spec`` on an instance with too many shared blocks), fall back to
    ``trimcaching-gen`` and note it in ``attempt``."""
    name = settings.solver
    kwargs: dict[str, Any] = {
        "seed": settings.solver_seed,
        "time_limit_s": settings.solver_time_limit_s,
        "current": current,
    }
    try:
        return SOLVERS[name](problem, **kwargs), name
    except Exception as exc:
        if name == FALLBACK_SOLVER:
            raise
        logger.warning("solver %s failed (%s); falling back to %s", name, exc, FALLBACK_SOLVER)
        attempt["fallback_from"] = {"solver": name, "error": f"{type(exc).__name__}: {exc}"}
        return SOLVERS[FALLBACK_SOLVER](problem, **kwargs), FALLBACK_SOLVER


def current_placement(
    previous: Mapping[str, Any] | None,
    catalogue: Sequence[CatalogueEntry],
    problem: PlacementProblem,
) -> tuple[dict[str, frozenset[str]], str | None]:
    """The stored placement as server id -> parameter blocks *of the new problem*, and why it
    cannot stay when the catalogue alone says so (else None).

    Placements are compared by the models each node holds, never by the stored ``pb-`` ids:
    a parameter block's id depends on which models share it, so adding a model renames blocks
    nobody moved. Nodes of the stored placement that are no longer live stay in the result
    (the pure :func:`~controller.placement.invalid_reason` reports them as gone).
    """
    if previous is None or not previous.get("servers"):
        return {}, "no placement yet"
    entries = {e.model_id: e for e in catalogue}
    revisions: Mapping[str, str] | None = previous.get("revisions")
    invalid: str | None = None
    current: dict[str, frozenset[str]] = {}
    for node_id, placed in previous["servers"].items():
        blocks: set[str] = set()
        for model_id in placed.get("models", []):
            entry = entries.get(model_id)
            if entry is None or model_id not in problem.models:
                invalid = invalid or f"model {model_id} left the catalogue"
                continue
            if revisions is not None and revisions.get(model_id) != entry.revision:
                invalid = invalid or f"model {model_id} was re-indexed"
                continue
            blocks.update(problem.models[model_id])
        current[node_id] = frozenset(blocks)
    return current, invalid
