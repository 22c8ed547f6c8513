"""Incremental delay under unicast delivery: shortest user first, one user = one block.

The unicast schedule (docs/delay-model.md section 5) runs each user's jobs back to back: users
by their summed airtime ``A_u`` (rounded to 1e-9 s) ascending, ties by user id, a user's own
jobs by prep then PB id. So the slot is a schedule of *users*, each one item with airtime
``A_u`` and an effective preparation time ``s_u = max_j (prep_j - c_j)`` over its jobs in its
own order (``c_j`` = the user's airtime before job j): with ``C_v`` the airtime of the users
up to and including v (``C_{v-1}``: before v), each job starts at ``max(end before, prep_j)``
and u's block ends at ``C_u + max(0, max_{v <= u} (s_v - C_{v-1}))``, the recurrence of
:class:`~controller.delay.incremental.IncrementalDelay` with one "job" per user, weight 1
(a user's delay is the end of its block) and key ``(round(A_u, 9), user rank)``.

:class:`UnicastDelay` is that class with unicast items: it shares the compiled sparse reach
and entries (``_compile``, ``_entry_jobs``), the class-of-nodes trick and caches (``gains``),
the schedule arrays (``_schedule``) and the insertion ranks (``_insert_rank``). What it adds
is the per-(user, PB) job state of each slot and the step from a candidate's changed jobs to
its changed users: a candidate (node, units) changes the airtime/prep of its requesters' jobs;
those users' ``A_u`` and ``s_u`` are recomputed from all their jobs (a few per user), they move
in the user order, and every other user shifts by a piecewise-constant amount
(:meth:`UnicastDelay._moved_change`: the prefix/suffix-sum change of ``IncrementalDelay``'s
``_slot_change`` with weight 1 per item, and each candidate node with its own moved users,
so a node moves only the users it covers). A widely requested PB with no holder yet first
turns every requester's cloud fetch into a migration whichever node takes it: that shared
step is applied once per slot to a base schedule (:meth:`UnicastDelay._base`).

``A_u`` is summed in PB id order from 0 as the reference sums it; the rounding is numpy's
(as :class:`~controller.delay.vector.VectorDelay`'s). The sums differ from the reference's by
float rounding only (tested against ``evaluate_delay`` and the reference gains). Pure code:
numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from controller.delay.incremental import (
    Bools,
    Floats,
    IncrementalDelay,
    Ints,
    _Entry,
    _Schedule,
)
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
        self._diff_cache: dict[tuple[int, int], tuple[Ints, Ints, Floats, Floats]] = {}
        # per slot: wide cold entries -> the shared base state of their variants (_base)
        self._base_cache: list[dict[tuple[int, ...], tuple[_Schedule, Floats, Floats]]] = [
            {} for _ in self.entries
        ]

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

    def _base(self, t: int, es: tuple[int, ...]) -> tuple[_Schedule, Floats, Floats]:
        """The state every variant row of entries ``es`` shares: the current one, except that
        wide entries of units no node holds yet get their prep as with a holder anywhere
        (cloud fetch -> migration, the same for every node). Kept until slot t changes."""
        cold = tuple(
            e for e in es if self._wide(t, e) and not self.any_held[self.entries[t][e].unit]
        )
        if not cold:
            return self.schedules[t], self._ptau[t], self._pprep[t]
        hit = self._base_cache[t].get(cold)
        if hit is None:
            ptr = self._entry_ptr[t]
            tau, prep = self._ptau[t].copy(), self._pprep[t].copy()
            for e in cold:
                entry = self.entries[t][e]
                a, p = self._entry_jobs(
                    entry, self.holders[entry.unit][np.newaxis], np.ones(1, dtype=np.bool_)
                )
                tau[ptr[e] : ptr[e + 1]] = a[0]
                prep[ptr[e] : ptr[e + 1]] = p[0]
            pad = self._item_pad[t]
            hit = (self._schedule(t, *self._items(tau[pad], prep[pad])), tau, prep)
            self._base_cache[t][cold] = hit
        return hit

    def _variant_change(self, t: int, es: tuple[int, ...], variants: Ints) -> Floats:
        """(K,) change of slot t's sum when each variant node also holds entries ``es``:
        per row, the users whose jobs differ from the shared base state are recomputed and
        moved (:meth:`_moved_change`)."""
        base, tau0, prep0 = self._base(t, es)
        ptr = self._entry_ptr[t]
        rows_l, pairs_l, tau_l, prep_l = [], [], [], []
        row_of: Ints | None = None
        for e in es:
            if self._wide(t, e):
                # the entry's changed jobs at every node, kept with its _entry_cache
                diff = self._diff_cache.get((t, e))
                if diff is None:
                    diff = self._diff(t, e, tau0, prep0)
                    self._diff_cache[t, e] = diff
                if row_of is None:
                    row_of = np.full(self.n_nodes, -1, dtype=np.intp)
                    row_of[variants] = np.arange(len(variants))
                node, pair, a_d, p_d = diff
                keep = np.flatnonzero(row_of[node] >= 0)
                rows_l.append(row_of[node[keep]])
                pairs_l.append(pair[keep])
                tau_l.append(a_d[keep])
                prep_l.append(p_d[keep])
                continue
            a, p = self._with_node(t, e, variants)
            lo, hi = int(ptr[e]), int(ptr[e + 1])
            r, c = np.nonzero((a != tau0[lo:hi]) | (p[:, np.newaxis] != prep0[lo:hi]))
            rows_l.append(r)
            pairs_l.append(c + lo)
            tau_l.append(a[r, c])
            prep_l.append(p[r])
        shared = base.total - self.schedules[t].total
        row = np.concatenate(rows_l)
        if not len(row):
            return np.full(len(variants), shared)
        pair = np.concatenate(pairs_l)
        n_items = self.n_jobs[t]
        codes, inv = np.unique(row * n_items + self._pair_item[t][pair], return_inverse=True)
        m_row, m_item = codes // n_items, codes % n_items
        pad = self._item_pad[t][m_item]
        tau2, prep2 = tau0[pad], prep0[pad]
        col = self._pair_col[t][pair]
        tau2[inv, col] = np.concatenate(tau_l)
        prep2[inv, col] = np.concatenate(prep_l)
        key, total, slack = self._items(tau2, prep2)
        return shared + self._moved_change(base, len(variants), m_row, m_item, key, total, slack)

    def _diff(
        self, t: int, e: int, tau0: Floats, prep0: Floats
    ) -> tuple[Ints, Ints, Floats, Floats]:
        """Wide entry e's jobs that differ from the base state when one node (each node in
        turn) also holds it: (node, pair, airtime, prep), flat."""
        everyone = np.arange(self.n_nodes, dtype=np.intp)
        a, p = self._with_node(t, e, everyone)
        lo, hi = int(self._entry_ptr[t][e]), int(self._entry_ptr[t][e + 1])
        r, c = np.nonzero((a != tau0[lo:hi]) | (p[:, np.newaxis] != prep0[lo:hi]))
        return r.astype(np.intp), (c + lo).astype(np.intp), a[r, c], p[r]

    def _moved_change(
        self, s: _Schedule, k_rows: int, row: Ints, item: Ints, key: Floats, a1: Floats, s1: Floats
    ) -> Floats:
        """(K,) new minus old summed delay of schedule ``s`` when, in row ``row[m]``, item
        ``item[m]`` takes key/airtime/slack ``key[m], a1[m], s1[m]`` ((row, item) unique,
        each row its own set X of moved users).

        Every item is one user, so the sum is ``sum C + sum R`` (C: cumulative airtime, R:
        the running slack). ``sum C`` counts every pair (i before-or-at j) once with A_i:
        rest-rest pairs keep their order, so the change is, per moved user x, ``A_x (1 +
        rest after x) + A of the rest before x + A_x (moved after x)``, new minus old. R can
        only be positive for users that start before ``theta`` (the largest slack term):
        those rest users (old start below ``theta`` + the row's removed airtime) and X are
        re-scheduled explicitly in the new order (those whose new start is below ``theta``);
        every other user has the final slack.
        """
        n = len(s.order)
        out = np.zeros(k_rows)
        m = len(row)
        if not m:
            return out
        stride = n + 1
        p = s.pos[item]
        a0 = s.tau[item]
        counts = np.bincount(row, minlength=k_rows)
        row_start = np.cumsum(counts) - counts
        nk = counts[row]
        # X's old positions per row, with their airtime before each
        by_old = np.lexsort((p, row))
        code_old = row[by_old].astype(np.int64) * stride + p[by_old]
        a0_cum = np.zeros(m + 1)
        np.cumsum(a0[by_old], out=a0_cum[1:])

        def old_below(r: Ints, v: Ints) -> tuple[Ints, Floats, Ints]:
            """(count, airtime, flat index) of row r's X with old position < v."""
            idx: Ints = np.searchsorted(code_old, r.astype(np.int64) * stride + v, side="left")
            return idx - row_start[r], a0_cum[idx] - a0_cum[row_start[r]], idx

        rank_old = np.empty(m, dtype=np.intp)
        rank_old[by_old] = np.arange(m) - row_start[row[by_old]]
        n_old, a_old, _ = old_below(row, p)
        q_old = p - n_old
        # the new order: insertion among the old order, then among the row's X
        ins = self._insert_rank(s, key, item)
        n_new, a_new, _ = old_below(row, ins)
        q = ins - n_new  # rest users before x
        by_new = np.lexsort((item, key, row))
        at_new = np.empty(m, dtype=np.intp)
        at_new[by_new] = np.arange(m)
        rank_new = at_new - row_start[row]
        sa_new = s.cb[ins] - a_new
        rest_n = n - nk
        term_new = a1 * (1 + rest_n - q) + sa_new + a1 * (nk - 1 - rank_new)
        term_old = a0 * (1 + rest_n - q_old) + (s.cb[p] - a_old) + a0 * (nk - 1 - rank_old)
        d_c = np.bincount(row, weights=term_new - term_old, minlength=k_rows)
        # the slack front: rest users at old positions < F_k, and X
        theta = np.full(k_rows, s.max_prep)
        np.maximum.at(theta, row, s1)
        removed = np.bincount(row, weights=a0, minlength=k_rows)
        front = np.where(counts > 0, np.searchsorted(s.cb[:-1], theta + removed), 0)
        f_row = np.repeat(np.arange(k_rows, dtype=np.intp), front)
        f_pos = np.arange(int(front.sum()), dtype=np.intp) - np.repeat(
            np.cumsum(front) - front, front
        )
        n_b, a_b, idx = old_below(f_row, f_pos)
        hit = np.minimum(idx, m - 1)
        rest = (idx >= m) | (code_old[hit] != f_row.astype(np.int64) * stride + f_pos)
        f_row, f_pos, n_b, a_b = f_row[rest], f_pos[rest], n_b[rest], a_b[rest]
        q_r = f_pos - n_b
        a1_cum = np.zeros(m + 1)
        np.cumsum(a1[by_new], out=a1_cum[1:])
        code_q = row[by_new].astype(np.int64) * stride + q[by_new]  # ascending
        j = np.searchsorted(code_q, f_row.astype(np.int64) * stride + q_r, side="right")
        r_start = s.cb[f_pos] - a_b + (a1_cum[j] - a1_cum[row_start[f_row]])
        r_pos = q_r + (j - row_start[f_row])
        r_term = s.prep[s.order[f_pos]] - r_start
        x_start = sa_new + (a1_cum[at_new] - a1_cum[row_start[row]])
        x_term = s1 - x_start
        # a user starting at or after theta has a term <= 0 and the final slack: left out
        r_in = r_start < theta[f_row]
        x_in = x_start < theta[row]
        e_row = np.concatenate([f_row[r_in], row[x_in]])
        seq = np.lexsort((np.concatenate([r_pos[r_in], (q + rank_new)[x_in]]), e_row))
        e_counts = np.bincount(e_row, minlength=k_rows)
        e_col = np.arange(len(seq)) - (np.cumsum(e_counts) - e_counts)[e_row[seq]]
        grid = np.full((k_rows, max(int(e_counts.max()), 1)), -np.inf)
        grid[e_row[seq], e_col] = np.concatenate([r_term[r_in], x_term[x_in]])[seq]
        run = np.maximum(np.maximum.accumulate(grid, axis=1), 0.0)
        new_r = np.where(np.isinf(grid), 0.0, run).sum(axis=1) + run[:, -1] * (n - e_counts)
        self.fast_rows += int((counts > 0).sum())
        active = counts > 0
        out[active] = d_c[active] + new_r[active] - s.wr_total
        return out

    def add(self, node_id: str, unit: str) -> None:
        """``node_id`` now holds ``unit``: update its slots' jobs, users and schedules."""
        b = self.unit_index[unit]
        for t, es in self._mark_held(node_id, unit):
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
            self._base_cache[t].clear()
            for e in es:
                self._entry_cache.pop((t, e), None)
                self._diff_cache.pop((t, e), None)
