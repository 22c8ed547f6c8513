"""Planning under the delay objective (``CONTROLLER_OBJECTIVE=delay``): the delay solvers.

The planner builds its :class:`~controller.placement.PlacementProblem` as for the hit ratio
(parameter blocks from :func:`core.group_by_sharing`, servers = live planned nodes with their
capacities, users = topology areas with the decayed demand). This module turns it, with the
node positions and the topology, into the delay model's instance
(:class:`controller.delay.DelayProblem`, docs/delay-model.md) and solves that:

- users: one per topology area that some node covers (``channel.coverage_m``; an area no node
  covers cannot be served by the radio at all and is left out), at the area's position;
- slots: :data:`N_SLOTS` request slots drawn from each area's request probabilities
  (:func:`controller.delay.scenario.sample_slots`, seeded by ``CONTROLLER_SOLVER_SEED``: the
  same state gives the same plan); an area with no demand requests nothing;
- channel: the topology's ``tx_power_dbm``, ``bandwidth_hz``, ``noise_dbm_per_hz``,
  ``coverage_m``; the cloud backhaul is ``origin_bps``, the migration link ``backhaul_bps``
  (bits/s in the topology, bytes/s in the delay problem).

The solver is ``CONTROLLER_DELAY_SOLVER`` (default ``delay-greedy``). ``marl`` runs the trained
agents of ``CONTROLLER_MARL_CHECKPOINT`` (:func:`controller.delay.marl.load_checkpoint`, then
decentralised greedy execution); without a checkpoint, or with one for another layout, it is a
:class:`DelayPlanningError` naming the setting (the plan attempt records it; the placement
stays).

Edge nodes hold whole models (a plan lists manifests), so the solver's PBs are reduced to the
models they complete before the result is evaluated and pushed. The current placement is
replaced only when the candidate's mean delay (``evaluate_delay``, the one definition) is lower
by more than :data:`MIN_GAIN_S`, or when it is no longer valid.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from controller.delay import DelayProblem, evaluate_delay, get_delay_solver
from controller.delay.problem import Channel as DelayChannel
from controller.delay.problem import distance_m
from controller.delay.scenario import sample_slots
from controller.placement import (
    PlacementProblem,
    PlacementResult,
    ReplanDecision,
    evaluate,
    invalid_reason,
    make_result,
    moved_bytes,
)
from controller.topology import Topology

#: Request slots drawn from the demand for one plan.
N_SLOTS = 8
#: The least mean-delay reduction (seconds) that pays for replacing a valid placement.
MIN_GAIN_S = 1e-6


class DelayPlanningError(ValueError):
    """The delay objective cannot plan with these settings (e.g. ``marl`` without a
    checkpoint)."""


def delay_problem(
    problem: PlacementProblem,
    positions: Mapping[str, tuple[float, float]],
    topology: Topology,
    *,
    seed: int,
    n_slots: int = N_SLOTS,
) -> DelayProblem | None:
    """The delay instance of the planner's state (None: no area is covered or has demand)."""
    ch = topology.channel
    users = {
        area_id: (a.x_m, a.y_m)
        for area_id, a in topology.areas.items()
        if any(distance_m((a.x_m, a.y_m), positions[n]) <= ch.coverage_m for n in problem.servers)
    }
    popularity = {
        u: {m: p for m, p in problem.requests.get(u, {}).items() if p > 0}
        for u in users
        if sum(problem.requests.get(u, {}).values()) > 0
    }
    if not popularity:
        return None
    slots = sample_slots(popularity, n_slots, np.random.default_rng(seed))
    return DelayProblem(
        blocks=dict(problem.blocks),
        models={m: list(b) for m, b in problem.models.items()},
        servers={
            n: {"capacity": cap, "position": list(positions[n])}
            for n, cap in problem.servers.items()
        },
        users={u: list(p) for u, p in users.items() if u in popularity},
        channel=DelayChannel(
            tx_power_dbm=ch.tx_power_dbm,
            bandwidth_hz=ch.bandwidth_hz,
            noise_dbm_per_hz=ch.noise_dbm_per_hz,
            coverage_m=ch.coverage_m,
        ),
        backhaul_bytes_per_s=ch.origin_bps / 8.0,
        migration_bytes_per_s=ch.backhaul_bps / 8.0,
        slots=slots,
    )


def whole_models(problem: PlacementProblem, blocks: Collection[str]) -> frozenset[str]:
    """The blocks of the models ``blocks`` complete (what an edge can hold: whole models)."""
    held = set(blocks)
    out: set[str] = set()
    for ids in problem.models.values():
        if held.issuperset(ids):
            out.update(ids)
    return frozenset(out)


def _marl_placement(dp: DelayProblem, checkpoint: Path | None) -> Mapping[str, Collection[str]]:
    if checkpoint is None:
        raise DelayPlanningError(
            "delay solver marl needs trained agents: set CONTROLLER_MARL_CHECKPOINT "
            "(a file written by controller.delay.marl.save_checkpoint)"
        )
    if not checkpoint.is_file():
        raise DelayPlanningError(f"CONTROLLER_MARL_CHECKPOINT {checkpoint} is not a file")
    from controller.delay import marl  # torch is imported only here

    try:
        trained = marl.load_checkpoint(checkpoint, dp)
    except ValueError as exc:
        raise DelayPlanningError(f"CONTROLLER_MARL_CHECKPOINT: {exc}") from exc
    return marl.greedy_placement(trained, dp)


def solve(
    problem: PlacementProblem,
    dp: DelayProblem,
    *,
    solver: str,
    seed: int,
    time_limit_s: float | None,
    marl_checkpoint: Path | None = None,
) -> PlacementResult:
    """Run delay solver ``solver`` on ``dp``; the placement (whole models only) as a result
    of ``problem`` (its ``hit_ratio`` is :func:`controller.placement.evaluate`'s)."""
    started = time.perf_counter()
    if solver == "marl":
        placement = _marl_placement(dp, marl_checkpoint)
    else:
        result = get_delay_solver(solver)(dp, seed=seed, time_limit_s=time_limit_s)
        if result.granularity == "model":  # coarse: whole models
            placement = {
                n: [b for m in ms for b in problem.models[m]] for n, ms in result.placement.items()
            }
        else:
            placement = dict(result.placement)
    held = {n: whole_models(problem, placement.get(n, ())) for n in problem.servers}
    return make_result(problem, held, solver=solver, solve_seconds=time.perf_counter() - started)


def mean_delay_s(dp: DelayProblem, placement: Mapping[str, Collection[str]]) -> float:
    """``evaluate_delay(dp, placement).mean_s`` (nodes the delay problem lacks are ignored)."""
    known = {n: ids for n, ids in placement.items() if n in dp.servers}
    return evaluate_delay(dp, known).mean_s


def decide(
    problem: PlacementProblem,
    dp: DelayProblem,
    current: Mapping[str, Collection[str]],
    candidate: PlacementResult,
    *,
    invalid: str | None = None,
) -> tuple[ReplanDecision, dict[str, Any]]:
    """Keep ``current`` or adopt ``candidate`` by mean delay; the decision and its numbers
    (``current_mean_s``, ``candidate_mean_s``) for the plan attempt."""
    invalid = invalid or invalid_reason(problem, current)
    moves = moved_bytes(problem, current, candidate.blocks_by_server())
    cand_s = mean_delay_s(dp, candidate.blocks_by_server())
    numbers: dict[str, Any] = {"candidate_mean_s": cand_s, "current_mean_s": None}
    if invalid:
        decision = ReplanDecision(
            replace=True,
            reason=f"current placement invalid: {invalid}",
            chosen=candidate,
            current_hit_ratio=None,
            gain=None,
            net_gain=0.0,
            moves=moves,
            invalid=invalid,
        )
        return decision, numbers
    cur_s = mean_delay_s(dp, current)
    numbers["current_mean_s"] = cur_s
    unchanged = all(
        frozenset(candidate.servers[s].blocks) == frozenset(current.get(s, ()))
        for s in candidate.servers
    )
    replace = not unchanged and cur_s - cand_s > MIN_GAIN_S
    if unchanged:
        reason = "the best candidate is the current placement"
    elif replace:
        reason = f"mean delay {cand_s:.6g} s < current {cur_s:.6g} s"
    else:
        reason = f"mean delay {cand_s:.6g} s is not below the current {cur_s:.6g} s"
    base = evaluate(problem, current)
    decision = ReplanDecision(
        replace=replace,
        reason=reason,
        chosen=candidate,
        current_hit_ratio=base,
        gain=candidate.hit_ratio - base,
        net_gain=cur_s - cand_s,
        moves=moves,
        invalid=None,
    )
    return decision, numbers
