"""Incremental delay under unicast delivery: shortest user first, one user = one block.

The unicast schedule (docs/delay-model.md section 5) runs each user's jobs back to back: users
by their summed airtime ``A_u`` (rounded to 1e-9 s) ascending, ties by user id, a user's own
jobs by prep then PB id. So the slot is a schedule of *users*, each one item with airtime
``A_u`` and an effective preparation time ``s_u = max_j (prep_j - c_j)`` over its jobs in its
own order (``c_j`` = the user's airtime before job j): with ``C`` the cumulative airtime of the
users before u, job j of u starts at ``max(end before, prep_j)`` and the user's block ends at
``C_u + max(0, max_{v <= u} (s_v - C_v))``, the broadcast recurrence of
:class:`~controller.delay.incremental.IncrementalDelay` with one "job" per user, weight 1
(a user's delay is the end of its block) and key ``(round(A_u, 9), user rank)``.

:class:`UnicastDelay` is that class with unicast items: it shares the compiled sparse reach
and entries (``_compile``, ``_entry_jobs``), the class-of-nodes trick and caches (``gains``),
and the piecewise-shift slot change with its exact slack front (``_slot_change``). What it adds
is the per-(user, PB) job state of each slot and the step from a candidate's changed jobs to
its changed users: a candidate (node, units) changes the airtime/prep of its requesters' jobs;
those users' ``A_u`` and ``s_u`` are recomputed from all their jobs (a few per user), they move
in the user order, and every other user shifts by a piecewise-constant amount.

``A_u`` is summed in PB id order from 0 as the reference sums it; the rounding is numpy's
(as :class:`~controller.delay.vector.VectorDelay`'s). The sums differ from the reference's by
float rounding only (tested against ``evaluate_delay`` and the reference gains). Pure code:
numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from controller.delay.incremental import Bools, Floats, IncrementalDelay, Ints, _Entry
from controller.delay.model import DelayInstance
from controller.delay.problem import Delivery

KEY_DECIMALS = 9  # the reference rounds a user's summed airtime to 1e-9 s (model.py)


def incremental_delay(instance: DelayInstance, delivery: Delivery) -> IncrementalDelay:
    """The incremental evaluator of ``delivery``: :class:`IncrementalDelay` for broadcast,
    :class:`UnicastDelay` for unicast."""
    if delivery == "unicast":
        return UnicastDelay(instance, delivery)
    return IncrementalDelay(instance, delivery)


class UnicastDelay(IncrementalDelay):
    """Incremental delay of one instance under unicast delivery (see the module docstring).

    Per slot, jobs are the users that request something ("items", indexed by the rank of the
    user id, so the schedule's ties by job index are the reference's ties by user id); the
    (user, PB) pairs keep the current airtime and prep of every unicast job.
    """

    DELIVERY: Delivery = "unicast"

    def __init__(self, instance: DelayInstance, delivery: Delivery = "unicast") -> None:
        # per slot: pairs laid out entry by entry (requesters by user id)
        self._entry_ptr: list[Ints] = []
        self._pair_item: list[Ints] = []  # the item (user) of each pair
        self._pair_col: list[Ints] = []  # the pair's column in its item's row of _item_pad
        self._item_pad: list[Ints] = []  # (items, L) the item's pairs in PB id order, P = pad
        self._ptau: list[Floats] = []  # current airtime of each pair, plus a 0 pad
        self._pprep: list[Floats] = []  # current prep of each pair, plus an inf pad
        super().__init__(instance, delivery)

    def _compile(
        self,
        slot_users: Sequence[str],
        unit_users: Mapping[str, Sequence[str]],
        user_index: Mapping[str, int],
    ) -> None:
        super()._compile(slot_users, unit_users, user_index)
        entries = self.entries[-1]
        n_local = len(slot_users)
        ptr = np.zeros(len(entries) + 1, dtype=np.intp)
        ptr[1:] = np.cumsum([len(e.users) for e in entries])
        pair_local = (
            np.concatenate([e.local for e in entries]) if entries else np.zeros(0, dtype=np.intp)
        )
        # items: the requesting users by user id (their rank is the reference's tie order)
        rank_order = sorted(range(n_local), key=lambda i: slot_users[i])
        present = np.zeros(n_local, dtype=np.bool_)
        present[pair_local] = True
        item_local = np.array([i for i in rank_order if present[i]], dtype=np.intp)
        item_of_local = np.full(n_local, -1, dtype=np.intp)
        item_of_local[item_local] = np.arange(len(item_local), dtype=np.intp)
        pair_item = item_of_local[pair_local]
        n_pairs = len(pair_item)
        by_item = np.argsort(pair_item, kind="stable")  # within an item: entry = PB id order
        counts = np.bincount(pair_item, minlength=len(item_local))
        first = np.cumsum(counts) - counts
        pair_col = np.empty(n_pairs, dtype=np.intp)
        pair_col[by_item] = np.arange(n_pairs) - np.repeat(first, counts)
        width = int(counts.max()) if len(counts) else 1
        pad = np.full((len(item_local), width), n_pairs, dtype=np.intp)
        pad[pair_item, pair_col] = np.arange(n_pairs, dtype=np.intp)
        self._entry_ptr.append(ptr)
        self._pair_item.append(pair_item)
        self._pair_col.append(pair_col)
        self._item_pad.append(pad)
        self._ptau.append(np.zeros(n_pairs + 1))
        self._pprep.append(np.r_[np.zeros(n_pairs), np.inf])
        # the schedule's jobs are the items: one user each, each user at most one job
        n_items = len(item_local)
        self.n_jobs[-1] = n_items
        self.job_users[-1] = (np.arange(n_items + 1, dtype=np.intp), item_local)
        uptr = np.zeros(n_local + 1, dtype=np.intp)
        uptr[1:] = np.cumsum(present)
        self.user_jobs[-1] = (uptr, item_of_local[present])

    # -- items from pairs ----------------------------------------------------------------------

    @staticmethod
    def _items(tau3: Floats, prep3: Floats) -> tuple[Floats, Floats, Floats]:
        """(key, A, s) of items from their jobs (..., items, L) in PB id order (pads: airtime
        0, prep inf, trailing): ``A`` summed in that order, ``s = max_j prep_j - c_j`` with
        the jobs by prep."""
        total = np.cumsum(tau3, axis=-1)[..., -1]
        if tau3.shape[-1] == 1:
            slack = prep3[..., 0]
        else:
            by_prep = np.argsort(prep3, axis=-1, kind="stable")
            tau_s = np.take_along_axis(tau3, by_prep, axis=-1)
            prep_s = np.take_along_axis(prep3, by_prep, axis=-1)
            before = np.zeros_like(tau_s)
            np.cumsum(tau_s[..., :-1], axis=-1, out=before[..., 1:])
            slack = np.where(np.isinf(prep_s), -np.inf, prep_s - before).max(axis=-1)
        return np.round(total, KEY_DECIMALS), total, slack

    def _pair_jobs(self, t: int, holders: Bools, any_held: Bools) -> tuple[Floats, Floats]:
        """Airtime and prep of every (user, PB) job of slot t (plus the pads)."""
        ptr = self._entry_ptr[t]
        tau = np.zeros(int(ptr[-1]) + 1)
        prep = np.r_[np.zeros(int(ptr[-1])), np.inf]
        for e, entry in enumerate(self.entries[t]):
            a, p = self._entry_jobs(
                entry, holders[entry.unit][np.newaxis], any_held[entry.unit : entry.unit + 1]
            )
            tau[ptr[e] : ptr[e + 1]] = a[0]
            prep[ptr[e] : ptr[e + 1]] = p[0]
        return tau, prep

    def _slot_jobs(self, t: int, holders: Bools, any_held: Bools) -> tuple[Floats, Floats, Floats]:
        tau, prep = self._pair_jobs(t, holders, any_held)
        if holders is self.holders:  # the current state (construction): keep the jobs
            self._ptau[t], self._pprep[t] = tau, prep
        pad = self._item_pad[t]
        return self._items(tau[pad], prep[pad])

    # -- a gain ------------------------------------------------------------------------------

    def _compute_with_node(self, entry: _Entry, variants: Ints) -> tuple[Floats, Floats]:
        held = np.repeat(self.holders[entry.unit][np.newaxis], len(variants), axis=0)
        held[np.arange(len(variants)), variants] = True
        return self._entry_jobs(entry, held, np.ones(len(variants), dtype=np.bool_))

    def _variant_change(self, t: int, es: tuple[int, ...], variants: Ints) -> Floats:
        """(K,) change of slot t's sum when each variant node also holds entries ``es``:
        the requesters whose jobs change are recomputed as items and moved."""
        ptr, tau0, prep0 = self._entry_ptr[t], self._ptau[t], self._pprep[t]
        pairs_l, tau_l, prep_l = [], [], []
        for e in es:
            a, p = self._with_node(t, e, variants)
            lo, hi = int(ptr[e]), int(ptr[e + 1])
            prep = np.broadcast_to(p[:, np.newaxis], a.shape)
            # Jobs no row changes keep their values: leaving them out is exact.
            moved = ((a != tau0[lo:hi]) | (prep != prep0[lo:hi])).any(axis=0)
            pairs_l.append(np.flatnonzero(moved) + lo)
            tau_l.append(a[:, moved])
            prep_l.append(prep[:, moved])
        pairs = np.concatenate(pairs_l)
        if not len(pairs):
            return np.zeros(len(variants))
        item_of = self._pair_item[t][pairs]
        items = np.unique(item_of)
        pad = self._item_pad[t][items]
        k_rows = len(variants)
        tau3 = np.repeat(tau0[pad][np.newaxis], k_rows, axis=0)
        prep3 = np.repeat(prep0[pad][np.newaxis], k_rows, axis=0)
        row_i = np.searchsorted(items, item_of)
        col = self._pair_col[t][pairs]
        tau3[:, row_i, col] = np.hstack(tau_l)
        prep3[:, row_i, col] = np.hstack(prep_l)
        key, total, slack = self._items(tau3, prep3)
        return self._slot_change(t, items, key, total, slack)

    def add(self, node_id: str, unit: str) -> None:
        """``node_id`` now holds ``unit``: update its slots' jobs, users and schedules."""
        b = self.unit_index[unit]
        self.holders[b, self.node_index[node_id]] = True
        self.any_held[b] = True
        touched: dict[int, list[int]] = {}
        for t, e in self.entries_of.get(b, ()):
            touched.setdefault(t, []).append(e)
        for t, es in sorted(touched.items()):
            ptr = self._entry_ptr[t]
            for e in es:
                entry = self.entries[t][e]
                a, p = self._entry_jobs(
                    entry, self.holders[b][np.newaxis], self.any_held[b : b + 1]
                )
                self._ptau[t][ptr[e] : ptr[e + 1]] = a[0]
                self._pprep[t][ptr[e] : ptr[e + 1]] = p[0]
            pad = self._item_pad[t]
            key, tau, prep = self._items(self._ptau[t][pad], self._pprep[t][pad])
            self.schedules[t] = self._schedule(t, key, tau, prep)
            self.slot_sum[t] = self.schedules[t].total
            self._change_cache[t].clear()
            for e in es:
                self._entry_cache.pop((t, e), None)
