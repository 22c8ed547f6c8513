"""Keep or replace the current placement: the re-plan decision (pure).

A re-plan is worth it only when what it gains pays for what it moves. This module owns that
decision, on a :class:`~controller.placement.problem.PlacementProblem` and placements given as
server id -> held block ids (the input of :func:`~controller.placement.problem.evaluate`):

- :func:`invalid_reason`: why the current placement cannot stay at all (a server left or
  joined, a block is no longer in the problem, a server holds more than its capacity).
- :func:`moved_bytes`: the bytes a new placement makes the servers download. A block a server
  lacks is migrated from a server that holds it now, or else fetched from the origin; the
  origin serves each such block once (the planner pushes one node at a time, so later nodes
  migrate it from the first), every further copy is a migration.
- :func:`decide_replan`: among candidate results, the one with the best *net gain*::

      net = evaluate(problem, candidate) - evaluate(problem, current)
            - move_cost_per_gib * moved_bytes(candidate) / 2**30

  and whether to adopt it: only when ``net > min_gain``. Otherwise the current placement is
  kept (nothing moves). An invalid current placement is always replaced, by the candidate with
  the best ``evaluate(candidate) - move cost``. There is no second objective: gains are
  differences of :func:`~controller.placement.problem.evaluate`.

Ties (equal net gain up to float rounding) go to fewer moved bytes, then to the earlier
candidate, so the decision is deterministic.

Example:
    >>> from controller.placement.problem import PlacementProblem, make_result
    >>> p = PlacementProblem(blocks={"a": 5, "b": 5}, models={"m0": ["a"], "m1": ["b"]},
    ...     servers={"s0": 5}, requests={"u0": {"m0": 0.5, "m1": 0.5}},
    ...     reachable={"u0": {"s0": ["m0", "m1"]}})
    >>> other = make_result(p, {"s0": ["a"]}, solver="x")
    >>> decide_replan(p, {"s0": ["b"]}, [other], min_gain=0.01).replace
    False
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from controller.placement.problem import PlacementProblem, PlacementResult, evaluate

GIB = 2**30
# Net gains closer than this are equal: hit ratios are float sums, and noise-level
# differences must not move bytes.
TIE_TOLERANCE = 1e-9


@dataclass(frozen=True, slots=True)
class Moves:
    """Bytes a placement change downloads: from peers (migration) and from the origin."""

    from_peers: int
    from_origin: int

    @property
    def total(self) -> int:
        return self.from_peers + self.from_origin


@dataclass(frozen=True, slots=True)
class ReplanDecision:
    """The outcome of :func:`decide_replan`.

    ``replace`` says whether to adopt ``chosen`` (the best candidate, by net gain) or keep the
    current placement; ``reason`` says why in one line. ``current_hit_ratio`` and ``gain`` are
    None when the current placement is invalid (``invalid`` then holds why).
    """

    replace: bool
    reason: str
    chosen: PlacementResult
    current_hit_ratio: float | None
    gain: float | None
    net_gain: float
    moves: Moves
    invalid: str | None

    def to_json(self) -> dict[str, object]:
        """The decision's numbers, for the planner's plan-attempt record."""
        return {
            "decision": "replace" if self.replace else "keep",
            "reason": self.reason,
            "candidate_solver": self.chosen.solver,
            "candidate_hit_ratio": self.chosen.hit_ratio,
            "current_hit_ratio": self.current_hit_ratio,
            "gain": self.gain,
            "net_gain": self.net_gain,
            "moved_bytes": self.moves.total,
            "moved_bytes_from_peers": self.moves.from_peers,
            "moved_bytes_from_origin": self.moves.from_origin,
            "current_invalid": self.invalid,
        }


def invalid_reason(problem: PlacementProblem, current: Mapping[str, Collection[str]]) -> str | None:
    """Why ``current`` cannot be kept on ``problem``, or None when it still can.

    Example:
        >>> from controller.placement.problem import PlacementProblem
        >>> p = PlacementProblem(blocks={"a": 5}, models={"m": ["a"]}, servers={"s0": 4},
        ...     requests={"u": {"m": 1.0}})
        >>> invalid_reason(p, {"s0": ["a"]})
        'server s0 holds 5 bytes > capacity 4'
    """
    for server_id in current:
        if server_id not in problem.servers:
            return f"server {server_id} left"
    for server_id in problem.servers:
        if server_id not in current:
            return f"server {server_id} joined"
    for server_id, block_ids in current.items():
        for block_id in block_ids:
            if block_id not in problem.blocks:
                return f"server {server_id} holds block {block_id}, no longer in the problem"
        used = problem.storage_bytes(block_ids)
        if used > problem.servers[server_id]:
            return f"server {server_id} holds {used} bytes > capacity {problem.servers[server_id]}"
    return None


def moved_bytes(
    problem: PlacementProblem,
    current: Mapping[str, Collection[str]],
    placement: Mapping[str, Collection[str]],
) -> Moves:
    """Bytes that turning ``current`` into ``placement`` downloads (see the module docstring).

    Servers or blocks of ``current`` unknown to ``problem`` hold nothing usable (a server that
    left cannot serve a migration).

    Example:
        >>> from controller.placement.problem import PlacementProblem
        >>> p = PlacementProblem(blocks={"a": 5, "b": 3}, models={"m": ["a", "b"]},
        ...     servers={"s0": 8, "s1": 8}, requests={"u": {"m": 1.0}})
        >>> moved_bytes(p, {"s0": ["a"], "s1": []}, {"s0": ["a", "b"], "s1": ["a", "b"]})
        Moves(from_peers=8, from_origin=3)
    """
    held = {
        s: frozenset(b for b in blocks if b in problem.blocks)
        for s, blocks in current.items()
        if s in problem.servers
    }
    anywhere = frozenset().union(*held.values())
    total = 0
    from_origin: set[str] = set()
    for server_id, block_ids in placement.items():
        have = held.get(server_id, frozenset())
        for block_id in set(block_ids) - have:
            total += problem.blocks[block_id]
            if block_id not in anywhere:
                from_origin.add(block_id)
    origin = sum(problem.blocks[b] for b in from_origin)
    return Moves(from_peers=total - origin, from_origin=origin)


def decide_replan(
    problem: PlacementProblem,
    current: Mapping[str, Collection[str]],
    candidates: Sequence[PlacementResult],
    *,
    min_gain: float,
    move_cost_per_gib: float = 0.0,
    invalid: str | None = None,
) -> ReplanDecision:
    """Keep ``current`` or replace it by the best of ``candidates`` (module docstring).

    Args:
        problem: the new instance.
        current: server id -> blocks held now (block ids of ``problem``).
        candidates: solver results for ``problem`` (e.g. a warm-started and a cold solve).
        min_gain: the least net gain (hit-ratio points) that justifies moving anything.
        move_cost_per_gib: hit-ratio points one GiB of moved blocks costs.
        invalid: a reason, known to the caller, why ``current`` cannot stay (e.g. a model
            left the catalogue); otherwise :func:`invalid_reason` decides.

    Returns:
        The decision; ``chosen`` is the best candidate even when it is not adopted.

    Raises:
        ValueError: no candidates, or a negative ``min_gain`` / ``move_cost_per_gib``.
    """
    if not candidates:
        raise ValueError("decide_replan needs at least one candidate")
    if min_gain < 0 or move_cost_per_gib < 0:
        raise ValueError("min_gain and move_cost_per_gib must be >= 0")
    invalid = invalid or invalid_reason(problem, current)
    base = 0.0 if invalid else evaluate(problem, current)
    best: tuple[PlacementResult, Moves, float] | None = None
    for candidate in candidates:
        moves = moved_bytes(problem, current, candidate.blocks_by_server())
        net = evaluate(problem, candidate.blocks_by_server()) - base
        net -= move_cost_per_gib * moves.total / GIB
        if (
            best is None
            or net > best[2] + TIE_TOLERANCE
            or (net >= best[2] - TIE_TOLERANCE and moves.total < best[1].total)
        ):
            best = (candidate, moves, net)
    assert best is not None
    chosen, moves, net = best
    if invalid:
        return ReplanDecision(
            replace=True,
            reason=f"current placement invalid: {invalid}",
            chosen=chosen,
            current_hit_ratio=None,
            gain=None,
            net_gain=net,
            moves=moves,
            invalid=invalid,
        )
    gain = chosen.hit_ratio - base
    unchanged = all(
        frozenset(chosen.servers[s].blocks) == frozenset(current.get(s, ())) for s in chosen.servers
    )
    if unchanged:
        replace, reason = False, "the best candidate is the current placement"
    elif net > min_gain + TIE_TOLERANCE:
        replace = True
        reason = f"net gain {net:.6g} > min gain {min_gain:g} (moves {moves.total} bytes)"
    else:
        replace = False
        reason = (
            f"net gain {net:.6g} (gain {gain:.6g}, moving {moves.total} bytes) "
            f"<= min gain {min_gain:g}"
        )
    return ReplanDecision(
        replace=replace,
        reason=reason,
        chosen=chosen,
        current_hit_ratio=base,
        gain=gain,
        net_gain=net,
        moves=moves,
        invalid=None,
    )
