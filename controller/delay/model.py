"""The reference delay model: :func:`evaluate_delay`, the one definition of delay.

Every rule is written down in ``docs/delay-model.md`` (section numbers in brackets below) and
follows design.md's "Reference delay model". In short, for each slot:

- SNR ``gamma[n][u] = P g / (N0 W)``, path loss ``128.1 + 37.6 log10(d_km)`` dB with
  ``d >= 1 m``; node n covers u when ``d <= coverage_m``; ``K_u`` = covering nodes (with the
  ``clusters`` option: those in the cluster of u's home); home ``h_u`` = the node of ``K_u``
  with the largest gamma, ties by id [2].
- per PB b: ``G_b`` requesting users, ``H_b`` holders, ``T_b = H_b & union K_u``; users not
  covered by ``T_b`` get b migrated (or fetched from the cloud when ``H_b`` is empty) to
  their homes, which join ``T_b``; ``prep_b`` = that transfer time, 0 when none [3].
- broadcast: one job per b at ``W log2(1 + min_u (sum sqrt gamma)^2)``; unicast: one job per
  (u, b) at u's own joint SNR [4].
- schedule: one downlink, jobs in order ``|G_b|/tau_b`` descending, ties by id (unicast:
  shortest user first: users by their summed airtime ascending, ties by user id, a user's
  jobs by prep then PB id); ``start = max(previous end, prep_b)`` [5]; ``D_u`` = end of u's
  last job.
- ``mean_s``, ``p95_s`` (nearest rank) over all (slot, user) requests; ``makespan_s`` = mean
  over slots of the slot's largest ``D_u`` [6].

:class:`DelayInstance` precomputes the geometry once, so solvers evaluate thousands of
placements with exactly the code :func:`evaluate_delay` runs (it builds an instance and calls
:meth:`DelayInstance.evaluate`). At ``granularity="model"`` every model is one opaque unit of
its full size (the ``coarse`` rules) [7]. Pure code: no I/O, no randomness.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from controller.delay.problem import (
    DELIVERIES,
    GRANULARITIES,
    DelayProblem,
    DelayStats,
    Delivery,
    Granularity,
    distance_m,
)

MIN_DISTANCE_M = 1.0
P95 = 0.95


def path_loss_db(distance: float) -> float:
    """``128.1 + 37.6 log10(d_km)`` dB with d clamped to at least 1 m.

    Example:
        >>> round(path_loss_db(1000.0), 1), round(path_loss_db(0.0), 1)
        (128.1, 15.3)
    """
    return 128.1 + 37.6 * math.log10(max(distance, MIN_DISTANCE_M) / 1000.0)


def snr_linear(
    distance: float, *, tx_power_dbm: float, noise_dbm_per_hz: float, bandwidth_hz: float
) -> float:
    """Linear SNR ``P g / (N0 W)`` of one link."""
    snr_db = (
        tx_power_dbm - path_loss_db(distance) - noise_dbm_per_hz - 10.0 * math.log10(bandwidth_hz)
    )
    return float(10.0 ** (snr_db / 10.0))


def percentile_nearest_rank(values: Collection[float], q: float) -> float:
    """The smallest value with at least ``q`` of the values at or below it (0 if empty).

    Example:
        >>> percentile_nearest_rank([4.0, 1.0, 3.0, 2.0], 0.95)
        4.0
    """
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered) - 1e-12))
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True)
class _Slot:
    users: tuple[str, ...]  # request order
    unit_users: Mapping[str, tuple[str, ...]]  # unit -> G_b (in request order), units sorted


class DelayInstance:
    """A problem compiled at one granularity: geometry, units and per-slot demand.

    ``units`` are PB ids (``granularity="block"``) or model ids (``"model"``);
    ``unit_bytes`` their sizes; :meth:`evaluate` takes node id -> held unit ids.
    """

    def __init__(
        self,
        problem: DelayProblem,
        *,
        granularity: Granularity = "block",
        csi_error_var: float = 0.0,
    ) -> None:
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
        if not 0.0 <= csi_error_var < 1.0:
            raise ValueError(f"csi_error_var must be in [0, 1), got {csi_error_var!r}")
        self.csi_error_var = float(csi_error_var)
        self.problem = problem
        self.granularity: Granularity = granularity
        ch = problem.channel
        self.bandwidth_hz = float(ch.bandwidth_hz)
        if granularity == "model":
            self.unit_bytes: dict[str, int] = {m: problem.model_bytes(m) for m in problem.models}
            self.model_units: dict[str, tuple[str, ...]] = {m: (m,) for m in problem.models}
        else:
            self.unit_bytes = dict(problem.blocks)
            self.model_units = {m: tuple(ids) for m, ids in problem.models.items()}
        self.nodes: tuple[str, ...] = tuple(problem.servers)
        cluster_of = {n: c for c, ns in problem.clusters.items() for n in ns}
        # [2] gamma over covering nodes; home by largest gamma then id; K_u with clusters.
        self.sqrt_gamma: dict[str, dict[str, float]] = {}
        self.cover: dict[str, tuple[str, ...]] = {}
        self.home: dict[str, str] = {}
        for user_id, pos in problem.users.items():
            gammas: dict[str, float] = {}
            for node_id, node in problem.servers.items():
                d = distance_m(pos, node.position)
                if d <= ch.coverage_m:
                    gammas[node_id] = snr_linear(
                        d,
                        tx_power_dbm=ch.tx_power_dbm,
                        noise_dbm_per_hz=ch.noise_dbm_per_hz,
                        bandwidth_hz=ch.bandwidth_hz,
                    )
            home = min(gammas, key=lambda n: (-gammas[n], n))
            if cluster_of:
                # Nodes in no cluster form a cluster of their own.
                key = cluster_of.get(home, f"\0{home}")
                gammas = {n: g for n, g in gammas.items() if cluster_of.get(n, f"\0{n}") == key}
            self.home[user_id] = home
            self.cover[user_id] = tuple(sorted(gammas))
            self.sqrt_gamma[user_id] = {n: math.sqrt(g) for n, g in gammas.items()}
        self.slots: tuple[_Slot, ...] = tuple(self._compile_slot(s) for s in problem.slots)
        self.n_requests = sum(len(s.users) for s in self.slots)
        # unit -> indices of the slots that request it (a placement change of that unit can
        # only change those slots' delays).
        self.slots_of_unit: dict[str, tuple[int, ...]] = {}
        for t, slot in enumerate(self.slots):
            for unit in slot.unit_users:
                self.slots_of_unit.setdefault(unit, ())
                self.slots_of_unit[unit] += (t,)

    def _compile_slot(self, slot: Mapping[str, str]) -> _Slot:
        unit_users: dict[str, list[str]] = {}
        for user_id, model_id in slot.items():
            for unit in self.model_units[model_id]:
                unit_users.setdefault(unit, []).append(user_id)
        return _Slot(
            users=tuple(slot),
            unit_users={u: tuple(unit_users[u]) for u in sorted(unit_users)},
        )

    def check_placement(self, placement: Mapping[str, Collection[str]]) -> None:
        """Raise ``ValueError`` for unknown nodes or units in a placement."""
        what = "block" if self.granularity == "block" else "model"
        for node_id, ids in placement.items():
            if node_id not in self.problem.servers:
                raise ValueError(f"placement: unknown node {node_id!r}")
            for unit in ids:
                if unit not in self.unit_bytes:
                    raise ValueError(f"placement[{node_id!r}]: unknown {what} {unit!r}")

    @staticmethod
    def holders_of(placement: Mapping[str, Collection[str]]) -> dict[str, frozenset[str]]:
        """unit -> the set of nodes holding it."""
        acc: dict[str, set[str]] = {}
        for node_id, ids in placement.items():
            for unit in ids:
                acc.setdefault(unit, set()).add(node_id)
        return {u: frozenset(ns) for u, ns in acc.items()}

    def used_bytes(self, ids: Collection[str]) -> int:
        """Storage of a set of units on one node."""
        return sum(self.unit_bytes[u] for u in set(ids))

    def _joint_snr(self, user: str, order: list[str]) -> float:
        """Gamma_u from the transmitters ``order`` (sorted ids) that cover ``user`` [4], [8].

        Reference (``csi_error_var == 0``): ``(sum sqrt gamma)^2``. With CSI error variance
        e: ``(1 - e) (sum sqrt gamma)^2 / (1 + e sum gamma)`` (MRT on estimated channels).
        """
        sq = self.sqrt_gamma[user]
        amplitude = math.fsum(sq[n] for n in order if n in sq)
        if self.csi_error_var == 0.0:
            return amplitude**2
        e = self.csi_error_var
        power = math.fsum(sq[n] ** 2 for n in order if n in sq)
        return (1.0 - e) * amplitude**2 / (1.0 + e * power)

    def rate_bytes_per_s(self, user: str, transmitters: Collection[str]) -> float:
        """The downlink rate to ``user`` when ``transmitters`` send jointly [4]:
        ``W log2(1 + Gamma_u) / 8`` bytes/s (so a PB's airtime is ``S_b`` / this rate); 0 when
        none of them covers ``user`` (within its cluster, with the ``clusters`` option).

        The testbed's emulated radio takes its rates from here (testbed/world.py).
        """
        snr = self._joint_snr(user, sorted(transmitters))
        return self.bandwidth_hz * math.log2(1.0 + snr) / 8.0

    def slot_delays(
        self, t: int, holders: Mapping[str, frozenset[str]], delivery: Delivery
    ) -> dict[str, float]:
        """user -> D_u in slot ``t`` (see the module docstring for the rules)."""
        slot = self.slots[t]
        w = self.bandwidth_hz
        mig = self.problem.migration_bytes_per_s
        cloud = self.problem.backhaul_bytes_per_s
        # jobs: (sort key, tie-break, tau, prep, users)
        jobs: list[tuple[float, tuple[str, float, str], float, float, tuple[str, ...]]] = []
        for unit, group in slot.unit_users.items():
            size = self.unit_bytes[unit]
            held = holders.get(unit, frozenset())
            # [3] T_b = H_b within reach of the group; uncovered users pull b to their homes.
            reach = {n for u in group for n in self.cover[u]}
            tx = held & reach
            missing = [u for u in group if tx.isdisjoint(self.cover[u])]
            if missing:
                prep = size / (mig if held else cloud)
                tx = tx | {self.home[u] for u in missing}
            else:
                prep = 0.0
            order = sorted(tx)  # a fixed summation order: bit-for-bit reproducible
            snrs = [self._joint_snr(u, order) for u in group]
            if delivery == "broadcast":
                tau = airtime_s(size, min(snrs), w)
                key = -math.inf if tau == 0 else -len(group) / tau
                jobs.append((key, (unit, 0.0, ""), tau, prep, group))
            else:
                for u, snr in zip(group, snrs, strict=True):
                    tau = airtime_s(size, snr, w)
                    jobs.append((0.0, (u, prep, unit), tau, prep, (u,)))
        if delivery != "broadcast":
            # [5] unicast: shortest user first (its summed airtime), then its jobs by prep.
            total: dict[str, float] = {}
            for job in sorted(jobs, key=lambda j: j[1][2]):  # summed in PB id order
                total[job[4][0]] = total.get(job[4][0], 0.0) + job[2]
            jobs = [(round(total[j[4][0]], 9), *j[1:]) for j in jobs]
        jobs.sort(key=lambda j: (j[0], j[1]))
        delays = dict.fromkeys(slot.users, 0.0)
        end = 0.0
        for _key, _id, tau, prep, group in jobs:
            end = max(end, prep) + tau
            for u in group:
                if end > delays[u]:
                    delays[u] = end
        return delays

    def evaluate(
        self, placement: Mapping[str, Collection[str]], *, delivery: Delivery = "broadcast"
    ) -> DelayStats:
        """The delay statistics of a placement (node id -> units held)."""
        if delivery not in DELIVERIES:
            raise ValueError(f"delivery must be one of {DELIVERIES}, got {delivery!r}")
        self.check_placement(placement)
        holders = self.holders_of(placement)
        per_slot = []
        for t, slot in enumerate(self.slots):
            delays = self.slot_delays(t, holders, delivery)
            per_slot.append([delays[u] for u in slot.users])
        return self.stats(per_slot)

    def stats(self, per_slot: Sequence[Sequence[float]]) -> DelayStats:
        """The statistics of per-slot delays (D_u in each slot's request order) [6]."""
        per_request: list[float] = []
        hits = 0
        slot_max: list[float] = []
        deadlines = self.problem.deadlines_s
        for t, slot in enumerate(self.slots):
            delays = per_slot[t]
            per_request.extend(delays)
            if deadlines:
                for u, d in zip(slot.users, delays, strict=True):
                    m = self.problem.slots[t][u]
                    if m in deadlines and d <= deadlines[m]:
                        hits += 1
            slot_max.append(max(delays))
        n = len(per_request)
        return DelayStats(
            mean_s=math.fsum(per_request) / n,
            p95_s=percentile_nearest_rank(per_request, P95),
            makespan_s=math.fsum(slot_max) / len(slot_max),
            deadline_hit_ratio=hits / n if deadlines else None,
            request_delays_s=tuple(per_request),
        )


def airtime_s(size_bytes: int, snr: float, bandwidth_hz: float) -> float:
    """``8 S / (W log2(1 + snr))`` seconds (0 for an empty block) [4]; the router's per-block
    estimate (:mod:`controller.delay_routing`) uses it too."""
    if size_bytes == 0:
        return 0.0
    return 8.0 * size_bytes / (bandwidth_hz * math.log2(1.0 + snr))


def evaluate_delay(
    problem: DelayProblem,
    placement: Mapping[str, Collection[str]],
    *,
    granularity: Granularity = "block",
    delivery: Delivery = "broadcast",
    csi_error_var: float = 0.0,
) -> DelayStats:
    """The model download delay of a placement: the objective every delay solver minimises.

    Args:
        problem: the instance.
        placement: node id -> the PB ids it holds (``granularity="block"``) or the model ids
            it holds whole (``"model"``). Capacity is not checked here.
        granularity: ``"block"`` (reference) or ``"model"`` (the coarse rules: each model is
            one opaque unit of its full size).
        delivery: ``"broadcast"`` (reference: one CoMP multicast per PB and slot) or
            ``"unicast"`` (one job per user and PB).
        csi_error_var: imperfect CSI (docs/delay-model.md section 8): the relative variance
            e in [0, 1) of each node's channel-estimate error under MRT precoding; the joint
            SNR becomes ``(1 - e) (sum sqrt gamma)^2 / (1 + e sum gamma)``. 0 (default) is
            the reference rule (perfect CSI, ``(sum sqrt gamma)^2``).

    Returns:
        :class:`DelayStats` with ``mean_s``, ``p95_s``, ``makespan_s`` (and the deadline hit
        ratio when the problem has ``deadlines_s``).

    Raises:
        ValueError: unknown nodes or units in ``placement``, or an unknown or out-of-range
            option.

    Example:
        >>> from controller.delay.problem import Channel, DelayProblem
        >>> p = DelayProblem(blocks={"b0": 1_000_000}, models={"m0": ["b0"]},
        ...     servers={"s0": {"capacity": 10**6, "position": [0, 0]}},
        ...     users={"u0": [30, 40]}, channel=Channel(),
        ...     backhaul_bytes_per_s=1e6, migration_bytes_per_s=1e7, slots=[{"u0": "m0"}])
        >>> cold, warm = evaluate_delay(p, {}), evaluate_delay(p, {"s0": ["b0"]})
        >>> round(cold.mean_s - warm.mean_s, 9)   # the cloud fetch: 1 MB at 1 MB/s
        1.0
    """
    instance = DelayInstance(problem, granularity=granularity, csi_error_var=csi_error_var)
    return instance.evaluate(placement, delivery=delivery)
