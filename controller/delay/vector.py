"""Vectorised delay: :meth:`DelayInstance.slot_delays` as numpy arrays, for solvers' inner loops.

:class:`VectorDelay` compiles a :class:`~controller.delay.model.DelayInstance` once into
arrays (node and user indices, ``sqrt gamma`` and coverage as dense users x nodes matrices,
per slot the (unit, requesters) entries, their reach and the unicast jobs) and keeps the
current holders as a units x nodes boolean matrix with every slot's jobs (key, airtime,
preparation time) cached. The rules are the reference ones, step by step
(docs/delay-model.md sections 3-5), only computed on arrays:

- ``T_b = H_b & reach``, users with no transmitter in ``T_b`` make b migrate (cloud when
  ``H_b`` is empty) to their homes, which join ``T_b``; joint SNR ``(sum sqrt gamma)^2`` is
  a matrix product (with the CSI-error rule when ``csi_error_var > 0``);
- jobs ordered by the reference key with a stable sort (jobs are laid out in the reference
  tie order: unit id, then user id; unicast: a lexsort by the user's summed airtime, user
  id, prep, unit id), and the schedule ``end_k = max(end_{k-1}, prep_k) +
  tau_k`` in closed form: ``end_k = C_k + max(0, max_{j<=k} (prep_j - C_{j-1}))`` with ``C``
  the cumulative airtime (``numpy.maximum.accumulate``).

:meth:`VectorDelay.gains` evaluates one candidate (a set of units) added at many nodes at once:
each variant is a row, so the greedy's first pass over every (node, candidate) pair costs one
call per candidate and slot. The sums differ from the reference's by float rounding only
(summation order); :meth:`VectorDelay.evaluate` agrees with
:func:`~controller.delay.model.evaluate_delay` to 1e-9 relative (tested), and every solver's
reported delay is still computed by the reference :meth:`DelayInstance.evaluate`.
Pure code: numpy only.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from controller.delay.model import DelayInstance
from controller.delay.problem import DELIVERIES, DelayStats, Delivery

Floats = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]
Ints = npt.NDArray[np.intp]


@dataclass(frozen=True, slots=True)
class _SlotArrays:
    """One slot's entries (unit, requesters) and jobs, in the reference tie order."""

    entry_unit: Ints  # (E,) unit index, entries sorted by unit id
    entry_users: tuple[Ints, ...]  # per entry: global user indices, sorted by user id
    entry_ptr: Ints  # (E+1,) entry e's pairs are pair_*[ptr[e]:ptr[e+1]]
    reach: Bools  # (E, N) nodes covering any requester of the entry
    pair_entry: Ints  # (P,) entry of each (unit, user) pair
    by_user: Ints  # (P,) pairs permuted so that each slot user's pairs are adjacent
    user_starts: Ints  # offsets of each requesting user's run in ``by_user``
    run_user: Ints  # the slot-local user index of each run
    n_users: int
    pair_run: Ints  # (P,) the run (requesting user) of each pair
    pair_user_rank: Ints  # (P,) the rank of each pair's user id among the slot's users


class VectorDelay:
    """Incremental, vectorised delay of one instance under one delivery rule."""

    def __init__(self, instance: DelayInstance, delivery: Delivery) -> None:
        if delivery not in DELIVERIES:
            raise ValueError(f"delivery must be one of {DELIVERIES}, got {delivery!r}")
        self.instance = instance
        self.delivery: Delivery = delivery
        problem = instance.problem
        self.node_index = {n: i for i, n in enumerate(instance.nodes)}
        self.unit_index = {u: i for i, u in enumerate(instance.unit_bytes)}
        users = list(problem.users)
        user_index = {u: i for i, u in enumerate(users)}
        n_nodes = len(instance.nodes)
        self.cover = np.zeros((len(users), n_nodes), dtype=np.bool_)
        self.sqrt_gamma = np.zeros((len(users), n_nodes), dtype=np.float64)
        for u, row in instance.sqrt_gamma.items():
            for node_id, sq in row.items():
                self.cover[user_index[u], self.node_index[node_id]] = True
                self.sqrt_gamma[user_index[u], self.node_index[node_id]] = sq
        self.gamma = self.sqrt_gamma**2
        self.home = np.array([self.node_index[instance.home[u]] for u in users], dtype=np.intp)
        self.sizes = np.array(list(instance.unit_bytes.values()), dtype=np.float64)
        self.slots = tuple(
            self._compile(slot.users, slot.unit_users, user_index) for slot in instance.slots
        )
        # unit index -> (slot, entry) pairs where it is requested
        self.entries_of: dict[int, list[tuple[int, int]]] = {}
        for t, s in enumerate(self.slots):
            for e, b in enumerate(s.entry_unit.tolist()):
                self.entries_of.setdefault(b, []).append((t, e))
        self.holders = np.zeros((len(self.sizes), n_nodes), dtype=np.bool_)
        self._key: list[Floats] = []
        self._tau: list[Floats] = []
        self._prep: list[Floats] = []
        self.slot_sum: list[float] = []
        self._order: list[Ints] = []  # per slot: the current state's job order (a sort hint)
        for t, s in enumerate(self.slots):
            n_jobs = len(s.entry_unit) if delivery == "broadcast" else len(s.pair_entry)
            self._key.append(np.zeros((1, n_jobs)))
            self._tau.append(np.zeros((1, n_jobs)))
            self._prep.append(np.zeros((1, n_jobs)))
            for e in range(len(s.entry_unit)):
                self._set_entry(t, e, self._key[t], self._tau[t], self._prep[t], None)
            self.slot_sum.append(self._current_sum(t))

    def _compile(
        self,
        slot_users: Sequence[str],
        unit_users: Mapping[str, Sequence[str]],
        user_index: Mapping[str, int],
    ) -> _SlotArrays:
        local = {u: i for i, u in enumerate(slot_users)}
        entry_unit: list[int] = []
        entry_users: list[Ints] = []
        ptr = [0]
        pair_entry: list[int] = []
        pair_local: list[int] = []
        reach = np.zeros((len(unit_users), len(self.node_index)), dtype=np.bool_)
        for e, (unit, group) in enumerate(unit_users.items()):
            ordered = sorted(group)  # the unicast tie order (unit id, user id)
            idx = np.array([user_index[u] for u in ordered], dtype=np.intp)
            entry_unit.append(self.unit_index[unit])
            entry_users.append(idx)
            reach[e] = self.cover[idx].any(axis=0)
            pair_entry.extend([e] * len(ordered))
            pair_local.extend(local[u] for u in ordered)
            ptr.append(len(pair_entry))
        local_arr = np.array(pair_local, dtype=np.intp)
        by_user = np.argsort(local_arr, kind="stable").astype(np.intp)
        present = local_arr[by_user]
        starts = np.flatnonzero(np.r_[True, present[1:] != present[:-1]]).astype(np.intp)
        pair_run = np.empty(len(local_arr), dtype=np.intp)
        pair_run[by_user] = np.cumsum(np.r_[True, present[1:] != present[:-1]]) - 1
        rank = {u: i for i, u in enumerate(sorted(slot_users))}
        user_rank = np.array([rank[u] for u in slot_users], dtype=np.intp)
        return _SlotArrays(
            entry_unit=np.array(entry_unit, dtype=np.intp),
            entry_users=tuple(entry_users),
            entry_ptr=np.array(ptr, dtype=np.intp),
            reach=reach,
            pair_entry=np.array(pair_entry, dtype=np.intp),
            by_user=by_user,
            user_starts=starts,
            run_user=present[starts],
            n_users=len(slot_users),
            pair_run=pair_run,
            pair_user_rank=user_rank[local_arr] if len(local_arr) else local_arr,
        )

    # -- one entry's jobs, for K holder variants at once -------------------------------------

    def _entry_jobs(self, t: int, e: int, held: Bools, any_held: Bools) -> tuple[Floats, Floats]:
        """(airtime, prep) of entry e of slot t for K holder rows ``held`` (K, N).

        Airtime is (K,) for broadcast and (K, g) for unicast (one job per requester).
        """
        s = self.slots[t]
        users = s.entry_users[e]
        size = float(self.sizes[s.entry_unit[e]])
        tx = held & s.reach[e]
        covered = tx @ self.cover[users].T  # (K, g): some transmitter covers the user
        missing = ~covered
        rows, cols = np.nonzero(missing)
        tx[rows, self.home[users[cols]]] = True
        problem = self.instance.problem
        rate = np.where(any_held, problem.migration_bytes_per_s, problem.backhaul_bytes_per_s)
        prep = np.where(missing.any(axis=1), size / rate, 0.0)
        # Sums over the node axis, not a matrix product: a row's value must not depend on
        # how many rows are computed with it (BLAS kernels round differently for 1 and K
        # rows), or a re-evaluated gain could differ from its heap key by an ulp.
        mask = tx[:, np.newaxis, :]
        amplitude = np.where(mask, self.sqrt_gamma[users][np.newaxis], 0.0).sum(axis=2)
        err = self.instance.csi_error_var
        if err == 0.0:
            snr = amplitude**2
        else:
            power = np.where(mask, self.gamma[users][np.newaxis], 0.0).sum(axis=2)
            snr = (1.0 - err) * amplitude**2 / (1.0 + err * power)
        if self.delivery == "broadcast":
            snr = snr.min(axis=1)
        if size == 0:
            return np.zeros_like(snr), prep
        return 8.0 * size / (self.instance.bandwidth_hz * np.log2(1.0 + snr)), prep

    def _set_entry(
        self,
        t: int,
        e: int,
        key: Floats,
        tau: Floats,
        prep: Floats,
        add_nodes: Ints | None,
    ) -> None:
        """Write entry e's jobs into the (K, J) job arrays: current holders, plus one node
        per row when ``add_nodes`` is given."""
        s = self.slots[t]
        base = self.holders[s.entry_unit[e]]
        if add_nodes is None:
            held = base[np.newaxis, :].copy()
            any_held = np.array([bool(base.any())])
        else:
            held = np.repeat(base[np.newaxis, :], len(add_nodes), axis=0)
            held[np.arange(len(add_nodes)), add_nodes] = True
            any_held = np.ones(len(add_nodes), dtype=np.bool_)
        airtime, p = self._entry_jobs(t, e, held, any_held)
        if self.delivery == "broadcast":
            g = len(s.entry_users[e])
            with np.errstate(divide="ignore"):
                key[:, e] = np.where(airtime == 0, -np.inf, -g / airtime)
            tau[:, e] = airtime
            prep[:, e] = p
        else:
            lo, hi = s.entry_ptr[e], s.entry_ptr[e + 1]
            key[:, lo:hi] = airtime
            tau[:, lo:hi] = airtime
            prep[:, lo:hi] = p[:, np.newaxis]

    # -- the schedule -----------------------------------------------------------------------

    def _unicast_order(self, t: int, tau: Floats, prep: Floats) -> Ints:
        """Per row, the unicast jobs shortest user first: by the user's summed airtime
        (rounded as the reference rounds it), user id, prep, PB id."""
        s = self.slots[t]
        if tau.shape[1] == 0:
            return np.zeros(tau.shape, dtype=np.intp)
        runs = np.add.reduceat(tau[:, s.by_user], s.user_starts, axis=1)
        total = np.round(runs[:, s.pair_run], 9)
        rows = tau.shape[0]
        unit = np.broadcast_to(s.pair_entry, (rows, len(s.pair_entry)))
        user = np.broadcast_to(s.pair_user_rank, (rows, len(s.pair_entry)))
        return np.lexsort((unit, prep, user, total), axis=1).astype(np.intp)

    def _job_order(self, key: Floats, hint: Ints | None) -> Ints:
        """Per row, the jobs by (key, job index): a stable argsort. With ``hint`` (the order
        of the current state, which each variant changes in a few jobs only) the keys are
        sorted in that order first, where a stable sort is nearly linear, and rows where an
        equal-key run came out of job-index order are sorted again from scratch."""
        if hint is None:
            return np.argsort(key, axis=1, kind="stable")
        order = hint[np.argsort(key[:, hint], axis=1, kind="stable")]
        ordered = np.take_along_axis(key, order, axis=1)
        wrong = (ordered[:, 1:] == ordered[:, :-1]) & (order[:, 1:] < order[:, :-1])
        rows = np.flatnonzero(wrong.any(axis=1))
        if len(rows):
            order[rows] = np.argsort(key[rows], axis=1, kind="stable")
        return order

    def _slot_delays(self, t: int, order: Ints, tau: Floats, prep: Floats) -> Floats:
        """(K, U_t) D_u per variant row (jobs run in ``order``), users in request order."""
        s = self.slots[t]
        tau_s = np.take_along_axis(tau, order, axis=1)
        prep_s = np.take_along_axis(prep, order, axis=1)
        cum = np.cumsum(tau_s, axis=1)
        slack = np.maximum(np.maximum.accumulate(prep_s - (cum - tau_s), axis=1), 0.0)
        end = np.empty_like(cum)
        np.put_along_axis(end, order, cum + slack, axis=1)
        per_pair = end[:, s.pair_entry] if self.delivery == "broadcast" else end
        out = np.zeros((order.shape[0], s.n_users))
        out[:, s.run_user] = np.maximum.reduceat(per_pair[:, s.by_user], s.user_starts, axis=1)
        return out

    def _current_sum(self, t: int) -> float:
        """Slot t's summed delay in the current state (its job order is kept as a hint)."""
        hint = self._order[t] if t < len(self._order) else None
        if self.delivery == "broadcast":
            order = self._job_order(self._key[t], hint)
        else:
            order = self._unicast_order(t, self._tau[t], self._prep[t])
        if hint is None:
            self._order.append(order[0])
        else:
            self._order[t] = order[0]
        return float(self._slot_delays(t, order, self._tau[t], self._prep[t]).sum(axis=1)[0])

    # -- the solver interface ---------------------------------------------------------------

    def gains(self, node_ids: Sequence[str], units: Collection[str]) -> list[float]:
        """Reduction of the summed delay if each node of ``node_ids`` (separately) also
        held ``units`` (units it already holds change nothing)."""
        if not node_ids:
            return []
        nodes = np.array([self.node_index[n] for n in node_ids], dtype=np.intp)
        by_slot: dict[int, list[int]] = {}
        for unit in units:
            for t, e in self.entries_of.get(self.unit_index[unit], ()):
                by_slot.setdefault(t, []).append(e)
        total = np.zeros(len(nodes))
        for t in sorted(by_slot):
            key = np.repeat(self._key[t], len(nodes), axis=0)
            tau = np.repeat(self._tau[t], len(nodes), axis=0)
            prep = np.repeat(self._prep[t], len(nodes), axis=0)
            for e in by_slot[t]:
                self._set_entry(t, e, key, tau, prep, nodes)
            if self.delivery == "broadcast":
                order = self._job_order(key, self._order[t])
            else:
                order = self._unicast_order(t, tau, prep)
            total += self.slot_sum[t] - self._slot_delays(t, order, tau, prep).sum(axis=1)
        return [float(g) for g in total]

    def add(self, node_id: str, unit: str) -> None:
        """``node_id`` now holds ``unit``: update its slots' cached jobs and sums."""
        b = self.unit_index[unit]
        self.holders[b, self.node_index[node_id]] = True
        touched: set[int] = set()
        for t, e in self.entries_of.get(b, ()):
            self._set_entry(t, e, self._key[t], self._tau[t], self._prep[t], None)
            touched.add(t)
        for t in sorted(touched):
            self.slot_sum[t] = self._current_sum(t)

    def evaluate(self, placement: Mapping[str, Collection[str]]) -> DelayStats:
        """The statistics of a placement, vectorised (state is left as it was)."""
        self.instance.check_placement(placement)
        held = np.zeros_like(self.holders)
        for node_id, ids in placement.items():
            for unit in ids:
                held[self.unit_index[unit], self.node_index[node_id]] = True
        saved, self.holders = self.holders, held
        try:
            per_slot: list[list[float]] = []
            for t, s in enumerate(self.slots):
                n_jobs = self._key[t].shape[1]
                key, tau, prep = np.zeros((1, n_jobs)), np.zeros((1, n_jobs)), np.zeros((1, n_jobs))
                for e in range(len(s.entry_unit)):
                    self._set_entry(t, e, key, tau, prep, None)
                if self.delivery == "broadcast":
                    order = self._job_order(key, None)
                else:
                    order = self._unicast_order(t, tau, prep)
                per_slot.append(self._slot_delays(t, order, tau, prep)[0].tolist())
        finally:
            self.holders = saved
        return self.instance.stats(per_slot)
