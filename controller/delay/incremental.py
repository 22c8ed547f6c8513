"""Incremental delay for large instances: gains in time proportional to what they change.

Broadcast delivery (``delay-greedy``, ``trimcaching-gen``). The unicast schedule is shortest
user first (docs/delay-model.md section 5), where one job's airtime moves every job of its
user; :class:`controller.delay.unicast.UnicastDelay` is this class with one schedule item per
user (it reuses the compiled entries, reach, caches and slot change below), and
:func:`controller.delay.unicast.incremental_delay` picks the class of a delivery rule.

:class:`IncrementalDelay` has the interface of :class:`~controller.delay.vector.VectorDelay`
(``slot_sum``, ``gains``, ``add``, ``evaluate``) and the same rules (docs/delay-model.md
sections 3-5), but a gain costs about the size of the change, not of the slot:

- **sparse reachability**: a user's channel is kept only on its covering nodes (CSR pairs),
  so an entry's joint SNR costs (requesters x covering nodes), not (requesters x all nodes);
- **one variant per class of nodes**: a node that covers none of a candidate's requesters
  changes the slot only through "the unit has a holder somewhere" (cloud fetch -> migration),
  so every such node has the same gain: :meth:`IncrementalDelay.gains` evaluates one of them
  and copies the value;
- **per-user incremental slot delays**: ends are non-decreasing along the schedule, so a
  user's delay is the end of its last job and the slot's sum is ``sum_k w_k end_k`` (``w_k`` =
  users whose last job is k). When a candidate changes jobs X (their airtime, preparation and
  order), every other job keeps its airtime and shifts by a piecewise-constant amount; once
  the schedule's slack ``max(0, max_j prep_j - start_j)`` has settled before the first moved
  job (checked exactly, with a conservative bound on the shifts), the new sum is the old one
  plus those shifts weighted by suffix sums of ``w``, plus the requesters of X recomputed:
  O(|X| log J + requesters), not O(J). Rows where the check fails are re-scheduled in full.

The new sums differ from :class:`VectorDelay`'s by float rounding only; the greedy rounds
gains to :data:`controller.delay.solvers.GAIN_QUANTUM`, so it picks the same placements
(tested on the recorded golden placements and against the reference evaluator on random
instances). Pure code: numpy only.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from controller.delay.model import DelayInstance
from controller.delay.problem import DelayStats, Delivery

# Entries with at least this many requesters are "wide" (see IncrementalDelay's caches).
WIDE_ENTRY_USERS = 16

# IncrementalDelay.gains_many stacks at most this many entries of a slot into one change.
MANY_ENTRIES = 16

Floats = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]
Ints = npt.NDArray[np.intp]


@dataclass(frozen=True, slots=True)
class _Entry:
    """One (unit, requesters) entry of a slot with its requesters' covering pairs."""

    unit: int
    users: Ints  # global user indices, sorted by user id
    local: Ints  # the same users' slot-local indices
    pair_node: Ints  # covering (user, node) pairs, grouped by user
    pair_sq: Floats
    pair_gamma: Floats
    starts: Ints  # first pair of each user
    reach: Ints  # sorted nodes covering any requester
    jobs: Ints  # the entry's job index: [e]


@dataclass(slots=True)
class _Schedule:
    """A slot's current jobs and schedule (positions = order of the downlink)."""

    key: Floats  # per job
    tau: Floats
    prep: Floats
    order: Ints  # job at each position
    pos: Ints  # position of each job
    skey: Floats  # key at each position
    cb: Floats  # (J+1,) airtime before each position
    end: Floats  # end at each position
    wsuf: Floats  # (J+1,) users whose last job is at a position >= k
    run_id: npt.NDArray[np.int64]  # per position: index of its run of equal keys
    tie_code: npt.NDArray[np.int64]  # run_id * (J+1) + job: ascending along positions
    w: Floats  # users whose last job is at each position
    run: Floats  # the slack max(0, max_{j<=k} prep_j - start_j) at each position
    wr_total: float  # sum of w * run
    max_prep: float
    user_delay: Floats  # per slot-local user
    user_last: Ints  # per slot-local user: position of its last job
    total: float


class IncrementalDelay:
    """Incremental delay of one instance under broadcast delivery (see the module docstring)."""

    # The delivery rule this class schedules (the unicast sibling sets "unicast").
    DELIVERY: Delivery = "broadcast"

    def __init__(self, instance: DelayInstance, delivery: Delivery = "broadcast") -> None:
        if delivery != self.DELIVERY:
            raise ValueError(
                f"{type(self).__name__} computes {self.DELIVERY} delivery only, got "
                f"{delivery!r} (controller.delay.unicast.incremental_delay picks the class)"
            )
        self.instance = instance
        self.delivery: Delivery = delivery
        problem = instance.problem
        self.node_index = {n: i for i, n in enumerate(instance.nodes)}
        self.unit_index = {u: i for i, u in enumerate(instance.unit_bytes)}
        self.n_nodes = len(instance.nodes)
        users = list(problem.users)
        user_index = {u: i for i, u in enumerate(users)}
        # per user: its covering nodes (node order) with sqrt gamma, as CSR
        self._cov_ptr = np.zeros(len(users) + 1, dtype=np.intp)
        nodes: list[int] = []
        sq: list[float] = []
        for i, u in enumerate(users):
            row = sorted((self.node_index[n], s) for n, s in instance.sqrt_gamma[u].items())
            nodes.extend(n for n, _ in row)
            sq.extend(s for _, s in row)
            self._cov_ptr[i + 1] = len(nodes)
        self._cov_node = np.array(nodes, dtype=np.intp)
        self._cov_sq = np.array(sq, dtype=np.float64)
        self.home = np.array([self.node_index[instance.home[u]] for u in users], dtype=np.intp)
        self.sizes = np.array(list(instance.unit_bytes.values()), dtype=np.float64)
        self.holders = np.zeros((len(self.sizes), self.n_nodes), dtype=np.bool_)
        self.any_held = np.zeros(len(self.sizes), dtype=np.bool_)
        self.entries: list[list[_Entry]] = []
        self.n_jobs: list[int] = []
        self.job_users: list[tuple[Ints, Ints]] = []  # per slot: (ptr, local users) per job
        self.user_jobs: list[tuple[Ints, Ints]] = []  # per slot: (ptr, jobs) per local user
        self.job_group: list[Floats] = []  # per slot: requesters of each job's entry
        for slot in instance.slots:
            self._compile(slot.users, slot.unit_users, user_index)
        self.entries_of: dict[int, list[tuple[int, int]]] = {}
        for t, entries in enumerate(self.entries):
            for e, entry in enumerate(entries):
                self.entries_of.setdefault(entry.unit, []).append((t, e))
        self.schedules: list[_Schedule] = []
        for t in range(len(self.entries)):
            key, tau, prep = self._slot_jobs(t, self.holders, self.any_held)
            self.schedules.append(self._schedule(t, key, tau, prep))
        self.slot_sum = [s.total for s in self.schedules]
        self.fast_rows = 0  # slot-change rows computed (for tests and the bench)
        # Wide entries (many requesters) recur in many candidates (every bundle of a model
        # family holds its shared PBs): their jobs with one more holder at each node, and the
        # change of a slot where only wide entries change, are kept until the slot changes.
        self._entry_cache: dict[tuple[int, int], tuple[Floats, Floats]] = {}
        self._change_cache: list[dict[tuple[int, ...], Floats]] = [{} for _ in self.entries]

    def _compile(
        self,
        slot_users: Sequence[str],
        unit_users: Mapping[str, Sequence[str]],
        user_index: Mapping[str, int],
    ) -> None:
        local = {u: i for i, u in enumerate(slot_users)}
        entries: list[_Entry] = []
        job_users: list[list[int]] = []
        job_group: list[float] = []
        for unit, group in unit_users.items():
            ordered = sorted(group)
            idx = np.array([user_index[u] for u in ordered], dtype=np.intp)
            loc = np.array([local[u] for u in ordered], dtype=np.intp)
            lo, hi = self._cov_ptr[idx], self._cov_ptr[idx + 1]
            counts = hi - lo
            flat = np.repeat(lo - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
            starts = (np.cumsum(counts) - counts).astype(np.intp)
            first = len(job_users)
            job_users.append(loc.tolist())
            job_group.append(float(len(ordered)))
            node = self._cov_node[flat]
            entries.append(
                _Entry(
                    unit=self.unit_index[unit],
                    users=idx,
                    local=loc,
                    pair_node=node,
                    pair_sq=self._cov_sq[flat],
                    pair_gamma=self._cov_sq[flat] ** 2,
                    starts=starts,
                    reach=np.unique(node),
                    jobs=np.arange(first, len(job_users), dtype=np.intp),
                )
            )
        ptr = np.zeros(len(job_users) + 1, dtype=np.intp)
        ptr[1:] = np.cumsum([len(x) for x in job_users])
        flat_users = np.array([u for x in job_users for u in x], dtype=np.intp)
        job_of_pair = np.repeat(np.arange(len(job_users), dtype=np.intp), np.diff(ptr))
        by_user = np.argsort(flat_users, kind="stable")
        uptr = np.zeros(len(slot_users) + 1, dtype=np.intp)
        np.add.at(uptr, flat_users + 1, 1)
        self.entries.append(entries)
        self.n_jobs.append(len(job_users))
        self.job_users.append((ptr, flat_users))
        self.user_jobs.append((np.cumsum(uptr), job_of_pair[by_user]))
        self.job_group.append(np.array(job_group, dtype=np.float64))

    # -- one entry's jobs for K holder rows ---------------------------------------------------

    def _entry_jobs(self, entry: _Entry, held: Bools, any_held: Bools) -> tuple[Floats, Floats]:
        """(airtime (K, jobs of the entry), prep (K,)) for K holder rows ``held`` (K, N);
        unicast: airtime (K, requesters)."""
        size = float(self.sizes[entry.unit])
        on = held[:, entry.pair_node]  # (K, pairs): the pair's node transmits
        missing = ~np.logical_or.reduceat(on, entry.starts, axis=1)  # (K, g)
        rows, cols = np.nonzero(missing)
        if len(rows):
            homes = np.zeros_like(held)
            homes[rows, self.home[entry.users[cols]]] = True
            on = on | homes[:, entry.pair_node]
        problem = self.instance.problem
        rate = np.where(any_held, problem.migration_bytes_per_s, problem.backhaul_bytes_per_s)
        prep = np.where(missing.any(axis=1), size / rate, 0.0)
        amplitude = np.add.reduceat(np.where(on, entry.pair_sq, 0.0), entry.starts, axis=1)
        err = self.instance.csi_error_var
        if err == 0.0:
            snr = amplitude**2
        else:
            power = np.add.reduceat(np.where(on, entry.pair_gamma, 0.0), entry.starts, axis=1)
            snr = (1.0 - err) * amplitude**2 / (1.0 + err * power)
        if self.DELIVERY == "broadcast":
            snr = snr.min(axis=1, keepdims=True)  # the weakest requester's rate
        if size == 0:
            return np.zeros_like(snr), prep
        return 8.0 * size / (self.instance.bandwidth_hz * np.log2(1.0 + snr)), prep

    def _keys(self, t: int, jobs: Ints, tau: Floats) -> Floats:
        g = self.job_group[t][jobs]
        with np.errstate(divide="ignore"):
            return np.where(tau == 0, -np.inf, -g / tau)

    def _slot_jobs(self, t: int, holders: Bools, any_held: Bools) -> tuple[Floats, Floats, Floats]:
        n = self.n_jobs[t]
        key, tau, prep = np.zeros(n), np.zeros(n), np.zeros(n)
        for entry in self.entries[t]:
            a, p = self._entry_jobs(
                entry, holders[entry.unit][np.newaxis], any_held[entry.unit : entry.unit + 1]
            )
            tau[entry.jobs] = a[0]
            prep[entry.jobs] = p[0]
            key[entry.jobs] = self._keys(t, entry.jobs, a[0])
        return key, tau, prep

    # -- the schedule -------------------------------------------------------------------------

    def _ends(self, key: Floats, tau: Floats, prep: Floats) -> tuple[Ints, Floats, Floats, Floats]:
        """(order, airtime before each position, prep - start per position, end per position)."""
        order = np.argsort(key, kind="stable")  # ties by job index: the reference tie order
        tau_s = tau[order]
        cb = np.zeros(len(order) + 1)
        np.cumsum(tau_s, out=cb[1:])
        term = prep[order] - cb[:-1]
        run = np.maximum.accumulate(term) if len(term) else term
        end = cb[1:] + np.maximum(run, 0.0)
        return order, cb, term, end

    def _user_sums(self, t: int, end_of_job: Floats) -> Floats:
        """Per slot-local user: its delay (the latest end of its jobs)."""
        ptr, jobs = self.user_jobs[t]
        out = np.zeros(len(ptr) - 1)
        has = np.diff(ptr) > 0
        if jobs.size:
            out[has] = np.maximum.reduceat(end_of_job[jobs], ptr[:-1][has])
        return out

    def _schedule(self, t: int, key: Floats, tau: Floats, prep: Floats) -> _Schedule:
        order, cb, term, end = self._ends(key, tau, prep)
        n = len(order)
        pos = np.empty(n, dtype=np.intp)
        pos[order] = np.arange(n, dtype=np.intp)
        ptr, jobs = self.user_jobs[t]
        has = np.diff(ptr) > 0
        user_last = np.full(len(ptr) - 1, -1, dtype=np.intp)
        if jobs.size:
            user_last[has] = np.maximum.reduceat(pos[jobs], ptr[:-1][has])
        user_delay = np.zeros(len(ptr) - 1)
        user_delay[has] = end[user_last[has]]
        w = np.bincount(user_last[has], minlength=n).astype(np.float64)
        wsuf = np.zeros(n + 1)
        wsuf[:n] = np.cumsum(w[::-1])[::-1]
        run = np.maximum(np.maximum.accumulate(term), 0.0) if n else term
        skey = key[order]
        run_id = np.zeros(n, dtype=np.int64)
        if n > 1:
            run_id[1:] = np.cumsum(skey[1:] != skey[:-1])
        return _Schedule(
            key=key,
            tau=tau,
            prep=prep,
            order=order,
            pos=pos,
            skey=key[order],
            cb=cb,
            end=end,
            wsuf=wsuf,
            run_id=run_id,
            tie_code=run_id * (n + 1) + order.astype(np.int64),
            w=w,
            run=run,
            wr_total=float((w * run).sum()),
            max_prep=float(prep.max()) if n else 0.0,
            user_delay=user_delay,
            user_last=user_last,
            total=float(user_delay.sum()),
        )

    # -- a gain: the change of one slot's sum for K rows of new jobs X ------------------------

    def _insert_rank(self, s: _Schedule, key: Floats, jobs: Ints) -> Ints:
        """Per (row, x): old positions whose (key, job) is below ``(key[row, x], jobs[x])``."""
        lo = np.searchsorted(s.skey, key, side="left")
        hi = np.searchsorted(s.skey, key, side="right")
        tie = hi > lo
        if tie.any():
            # within a run of equal keys job indices ascend: (run, job) is one sorted code
            code = s.run_id[lo[tie]] * (len(s.order) + 1) + jobs[tie]
            lo[tie] = np.searchsorted(s.tie_code, code, side="left")
        return lo

    def _slot_change(self, t: int, jobs: Ints, key: Floats, tau: Floats, prep: Floats) -> Floats:
        """(K,) new minus old summed delay of slot t when jobs ``jobs`` (sorted) take the
        rows' (K, X) key/airtime/prep.

        Ends are ``C + R`` (C: cumulative airtime, R: the running slack ``max(0, max prep -
        start)``). The C part shifts piecewise (airtime of X inserted before a job minus X
        removed before it). R can only rise where a job starts before the slot's largest
        preparation time ``theta``: that front (old positions ``< F``) and X are re-scheduled
        explicitly; every later job has the front's final slack.
        """
        s = self.schedules[t]
        k_rows = key.shape[0]
        by_old = np.argsort(s.pos[jobs], kind="stable")
        ps = s.pos[jobs][by_old]  # X's old positions, ascending
        tau_old = s.tau[jobs][by_old]
        tau_old_cum = np.zeros(len(ps) + 1)
        np.cumsum(tau_old, out=tau_old_cum[1:])
        # new order of X per row (ties by job index: ``jobs`` is sorted)
        nord = np.argsort(key, axis=1, kind="stable")
        nkey = np.take_along_axis(key, nord, axis=1)
        ntau = np.take_along_axis(tau, nord, axis=1)
        nprep = np.take_along_axis(prep, nord, axis=1)
        count_all = self._insert_rank(s, nkey, jobs[nord])
        r = count_all - np.searchsorted(ps, count_all, side="left")  # index among the rest
        a = ps - np.arange(len(ps))  # rest jobs before each X job (old)
        kx = r + np.searchsorted(a, r, side="right")  # old position of the rest job at r
        tau_before = tau_old_cum[np.searchsorted(ps, kx, side="left")]
        cnew = s.cb[kx] - tau_before + np.cumsum(ntau, axis=1)  # X's new C, new order
        ntau_cum = np.zeros((k_rows, ntau.shape[1] + 1))
        np.cumsum(ntau, axis=1, out=ntau_cum[:, 1:])

        stride = s.cb.shape[0] + 1
        r_flat = (r + stride * np.arange(k_rows)[:, np.newaxis]).ravel()

        def inserted_before(rem: Ints) -> Ints:
            """(K, len): X jobs each row inserts before the rest jobs of index ``rem``."""
            q = rem[np.newaxis] + stride * np.arange(k_rows)[:, np.newaxis]
            found: Ints = np.searchsorted(r_flat, q, side="right")
            offsets: Ints = r.shape[1] * np.arange(k_rows, dtype=np.intp)[:, np.newaxis]
            return found - offsets

        def shift(k_old: Ints) -> Floats:
            """(K, len) C shift of unchanged jobs at old positions ``k_old``."""
            rem = k_old - np.searchsorted(ps, k_old, side="left")
            n_ins = inserted_before(rem)
            removed = tau_old_cum[np.searchsorted(ps, k_old, side="left")]
            return np.take_along_axis(ntau_cum, n_ins, axis=1) - removed

        # the front: unchanged jobs that may start before theta, plus X
        theta = max(s.max_prep, float(prep.max()) if prep.size else 0.0)
        front_end = int(np.searchsorted(s.cb[:-1], theta + tau_old_cum[-1], side="left"))
        front = np.arange(front_end, dtype=np.intp)
        front = front[~np.isin(front, ps)]
        f_shift = shift(front)
        rem_f = front - np.searchsorted(ps, front, side="left")
        f_newpos = rem_f[np.newaxis] + inserted_before(rem_f)
        x_newpos = r + np.arange(r.shape[1])[np.newaxis]
        f_start = s.cb[front][np.newaxis] + f_shift
        f_term = s.prep[s.order[front]][np.newaxis] - f_start
        x_term = nprep - (cnew - ntau)
        newpos = np.hstack([f_newpos, x_newpos])
        terms = np.hstack([np.broadcast_to(f_term, f_newpos.shape), x_term])
        seq = np.argsort(newpos, axis=1, kind="stable")
        run = np.maximum(np.maximum.accumulate(np.take_along_axis(terms, seq, axis=1), axis=1), 0.0)
        slack_c = np.empty_like(run)
        np.put_along_axis(slack_c, seq, run, axis=1)
        f_slack, x_slack = slack_c[:, : len(front)], slack_c[:, len(front) :]
        final = run[:, -1] if run.shape[1] else np.zeros(k_rows)
        # requesters of X (their delays are recomputed) and the others' weights
        # Requesters of X whose last job is not in X and comes after every row's insertion
        # point of their X jobs keep their last job: they count as others.
        jptr, jusers = self.job_users[t]
        counts_x = jptr[jobs + 1] - jptr[jobs]
        lo_x = jptr[jobs]
        pair_u = jusers[
            np.repeat(lo_x - np.cumsum(counts_x) + counts_x, counts_x)
            + np.arange(int(counts_x.sum()))
        ]
        kmax_rows = np.zeros_like(kx)
        np.put_along_axis(kmax_rows, nord, kx, axis=1)
        kmax = kmax_rows.max(axis=0)
        last = s.user_last[pair_u]
        last_job = s.order[last]
        li = np.minimum(np.searchsorted(jobs, last_job), len(jobs) - 1)
        easy = (jobs[li] != last_job) & (last >= np.repeat(kmax, counts_x))
        ux = np.unique(pair_u[~easy])
        ux_last = np.sort(s.user_last[ux])

        def others_weight(k: Ints) -> Floats:
            return s.wsuf[k] - (len(ux_last) - np.searchsorted(ux_last, k, side="left"))

        others = (ntau * others_weight(kx)).sum(axis=1) - (tau_old * others_weight(ps + 1)).sum()
        # the others' slack: old sum(w R) minus the requesters', new: front explicit, rest final
        w_front = s.w[front] - np.bincount(ux_last[ux_last < front_end], minlength=front_end)[front]
        old_r = s.wr_total - s.run[s.user_last[ux]].sum()
        new_r = (f_slack * w_front).sum(axis=1) + final * others_weight(
            np.array(front_end, dtype=np.intp)
        )
        # the requesters: every job of theirs, new end = max over them
        uptr, ujobs = self.user_jobs[t]
        counts = uptr[ux + 1] - uptr[ux]
        starts = np.cumsum(counts) - counts
        flat = ujobs[np.repeat(uptr[ux] - starts, counts) + np.arange(int(counts.sum()))]
        in_x = np.minimum(np.searchsorted(jobs, flat), len(jobs) - 1)
        is_x = jobs[in_x] == flat
        new_end = np.empty((k_rows, len(flat)))
        inv = np.argsort(nord, axis=1)  # X index -> rank in the row's new order
        xr = inv[:, in_x[is_x]]
        new_end[:, is_x] = np.take_along_axis(cnew + x_slack, xr, axis=1)
        k_old = s.pos[flat[~is_x]]
        slack_k = np.repeat(final[:, np.newaxis], len(k_old), axis=1)
        in_front = np.flatnonzero(k_old < front_end)
        if len(in_front):
            slack_k[:, in_front] = f_slack[:, np.searchsorted(front, k_old[in_front])]
        new_end[:, ~is_x] = s.cb[k_old + 1][np.newaxis] + shift(k_old) + slack_k
        mine = np.zeros(k_rows)
        if len(ux):
            mine = np.maximum.reduceat(new_end, starts, axis=1).sum(axis=1)
        self.fast_rows += k_rows
        change: Floats = others + (new_r - old_r) + mine - s.user_delay[ux].sum()
        return change

    def _full_change(self, t: int, jobs: Ints, key: Floats, tau: Floats, prep: Floats) -> float:
        """New minus old summed delay of slot t, re-scheduled from scratch (one row)."""
        s = self.schedules[t]
        k, a, p = s.key.copy(), s.tau.copy(), s.prep.copy()
        k[jobs], a[jobs], p[jobs] = key, tau, prep
        order, _cb, _term, end = self._ends(k, a, p)
        end_of_job = np.empty_like(end)
        end_of_job[order] = end
        return float(self._user_sums(t, end_of_job).sum()) - s.total

    # -- the solver interface -----------------------------------------------------------------

    def gains(self, node_ids: Sequence[str], units: Collection[str]) -> list[float]:
        """Reduction of the summed delay if each node of ``node_ids`` (separately) also
        held ``units`` (units it already holds change nothing)."""
        if not node_ids:
            return []
        nodes = np.array([self.node_index[n] for n in node_ids], dtype=np.intp)
        by_slot: dict[int, list[int]] = {}
        reach = np.zeros(self.n_nodes, dtype=np.bool_)
        for unit in units:
            for t, e in self.entries_of.get(self.unit_index[unit], ()):
                by_slot.setdefault(t, []).append(e)
                reach[self.entries[t][e].reach] = True
        if not by_slot:
            return [0.0] * len(nodes)
        # Nodes out of reach of every entry act alike: evaluate the first, copy its value.
        near = reach[nodes]
        far = np.flatnonzero(~near)
        rows = np.flatnonzero(near).tolist() + far[:1].tolist()
        variants = nodes[rows]
        total = np.zeros(len(variants))
        for t in sorted(by_slot):
            es = tuple(sorted(by_slot[t]))
            wide = all(self._wide(t, e) for e in es)
            cached = self._change_cache[t].get(es) if wide else None
            if cached is not None:
                todo = np.flatnonzero(np.isnan(cached[variants]))
            else:
                todo = np.arange(len(variants))
            if len(todo):
                change = self._variant_change(t, es, variants[todo])
                if wide:
                    if cached is None:
                        cached = np.full(self.n_nodes, np.nan)
                        self._change_cache[t][es] = cached
                    cached[variants[todo]] = change
            if cached is not None:
                total -= cached[variants]
            else:
                total -= change
        out = np.empty(len(nodes))
        out[np.flatnonzero(near)] = total[: int(near.sum())]
        if len(far):
            out[far] = total[-1]
        return out.tolist()

    def gains_many(self, requests: Sequence[tuple[str, Collection[str]]]) -> list[float]:
        """:meth:`gains` of several (node, units) candidates, each at its own node.

        Per slot, the candidates' changed jobs are stacked into one change: a row sets the
        jobs of its own entries and leaves the others' at their current values (a job whose
        key, airtime and preparation stay is not moved, so this is exact), in chunks of at
        most :data:`MANY_ENTRIES` entries. Candidates whose entries are all wide and cached
        read the cache, as in :meth:`gains`. Slots are summed in the same order as there.
        """
        total = np.zeros(len(requests))
        per_slot: dict[int, list[tuple[int, tuple[int, ...]]]] = {}
        for r, (_node_id, units) in enumerate(requests):
            by_slot: dict[int, list[int]] = {}
            for unit in units:
                for t, e in self.entries_of.get(self.unit_index[unit], ()):
                    by_slot.setdefault(t, []).append(e)
            for t, found in by_slot.items():
                per_slot.setdefault(t, []).append((r, tuple(sorted(found))))
        nodes = np.array([self.node_index[n] for n, _ in requests], dtype=np.intp)
        for t in sorted(per_slot):
            todo: list[tuple[int, tuple[int, ...]]] = []
            for r, es in per_slot[t]:
                cached = (
                    self._change_cache[t].get(es) if all(self._wide(t, e) for e in es) else None
                )
                if cached is not None and not np.isnan(cached[nodes[r]]):
                    total[r] -= cached[nodes[r]]
                else:
                    todo.append((r, es))
            todo.sort(key=lambda row: row[1])
            chunk: list[tuple[int, tuple[int, ...]]] = []
            union: set[int] = set()
            for r, es in todo:
                if chunk and len(union.union(es)) > MANY_ENTRIES:
                    self._many_change(t, chunk, nodes, total)
                    chunk, union = [], set()
                chunk.append((r, es))
                union.update(es)
            if chunk:
                self._many_change(t, chunk, nodes, total)
        out: list[float] = total.tolist()
        return out

    def _many_change(
        self, t: int, chunk: list[tuple[int, tuple[int, ...]]], nodes: Ints, total: Floats
    ) -> None:
        """Subtract from ``total[r]`` slot t's change when node ``nodes[r]`` also holds
        entries ``es`` of each (r, es) of ``chunk``."""
        s = self.schedules[t]
        es_all = sorted({e for _, es in chunk for e in es})
        col = {e: i for i, e in enumerate(es_all)}
        jobs = np.array([self.entries[t][e].jobs[0] for e in es_all], dtype=np.intp)
        k_rows = len(chunk)
        tau = np.repeat(s.tau[jobs][np.newaxis], k_rows, axis=0)
        prep = np.repeat(s.prep[jobs][np.newaxis], k_rows, axis=0)
        rows_of: dict[int, list[int]] = {}
        for i, (_r, es) in enumerate(chunk):
            for e in es:
                rows_of.setdefault(e, []).append(i)
        row_node = nodes[[r for r, _ in chunk]]
        for e, idx in rows_of.items():
            a, p = self._with_node(t, e, row_node[idx])
            tau[idx, col[e]] = a[:, 0]
            prep[idx, col[e]] = p
        moved = ((tau != s.tau[jobs]) | (prep != s.prep[jobs])).any(axis=0)
        change = np.zeros(k_rows)
        if moved.any():
            jobs, tau, prep = jobs[moved], tau[:, moved], prep[:, moved]
            change = self._slot_change(t, jobs, self._keys(t, jobs, tau), tau, prep)
        for i, (r, es) in enumerate(chunk):
            total[r] -= change[i]
            if all(self._wide(t, e) for e in es):  # kept as gains() keeps it
                cached = self._change_cache[t].get(es)
                if cached is None:
                    cached = np.full(self.n_nodes, np.nan)
                    self._change_cache[t][es] = cached
                cached[row_node[i]] = change[i]

    def _wide(self, t: int, e: int) -> bool:
        return len(self.entries[t][e].users) >= WIDE_ENTRY_USERS

    def _with_node(self, t: int, e: int, variants: Ints) -> tuple[Floats, Floats]:
        """Entry e's (airtime (K, jobs), prep (K,)) when each variant node also holds it."""
        entry = self.entries[t][e]
        if self._wide(t, e):
            hit = self._entry_cache.get((t, e))
            if hit is None:
                hit = self._compute_with_node(entry, np.arange(self.n_nodes, dtype=np.intp))
                self._entry_cache[t, e] = hit
            return hit[0][variants], hit[1][variants]
        return self._compute_with_node(entry, variants)

    def _compute_with_node(self, entry: _Entry, variants: Ints) -> tuple[Floats, Floats]:
        held = np.repeat(self.holders[entry.unit][np.newaxis], len(variants), axis=0)
        held[np.arange(len(variants)), variants] = True
        a, p = self._entry_jobs(entry, held, np.ones(len(variants), dtype=np.bool_))
        return np.broadcast_to(a, (len(variants), len(entry.jobs))), p

    def _variant_change(self, t: int, es: tuple[int, ...], variants: Ints) -> Floats:
        """(K,) change of slot t's sum when each variant node also holds entries ``es``."""
        s = self.schedules[t]
        jobs_l, key_l, tau_l, prep_l = [], [], [], []
        for e in es:
            entry = self.entries[t][e]
            a, p = self._with_node(t, e, variants)
            prep = np.repeat(p[:, np.newaxis], len(entry.jobs), axis=1)
            # Jobs no row changes keep their place: leaving them out of X is exact.
            moved = ((a != s.tau[entry.jobs]) | (prep != s.prep[entry.jobs])).any(axis=0)
            if not moved.all():
                a, prep = a[:, moved], prep[:, moved]
            jobs = entry.jobs[moved]
            jobs_l.append(jobs)
            tau_l.append(a)
            prep_l.append(prep)
            key_l.append(self._keys(t, jobs, a))
        if not sum(len(j) for j in jobs_l):
            return np.zeros(len(variants))
        return self._slot_change(
            t, np.concatenate(jobs_l), np.hstack(key_l), np.hstack(tau_l), np.hstack(prep_l)
        )

    def _mark_held(self, node_id: str, unit: str) -> list[tuple[int, list[int]]]:
        """Record that ``node_id`` holds ``unit``; the (slot, entries) requesting it, by slot."""
        b = self.unit_index[unit]
        self.holders[b, self.node_index[node_id]] = True
        self.any_held[b] = True
        touched: dict[int, list[int]] = {}
        for t, e in self.entries_of.get(b, ()):
            touched.setdefault(t, []).append(e)
        return sorted(touched.items())

    def add(self, node_id: str, unit: str) -> None:
        """``node_id`` now holds ``unit``: update its slots' jobs and schedules."""
        b = self.unit_index[unit]
        for t, es in self._mark_held(node_id, unit):
            s = self.schedules[t]
            key, tau, prep = s.key.copy(), s.tau.copy(), s.prep.copy()
            for e in es:
                entry = self.entries[t][e]
                a, p = self._entry_jobs(
                    entry, self.holders[b][np.newaxis], self.any_held[b : b + 1]
                )
                tau[entry.jobs] = a[0]
                prep[entry.jobs] = p[0]
                key[entry.jobs] = self._keys(t, entry.jobs, a[0])
            self.schedules[t] = self._schedule(t, key, tau, prep)
            self.slot_sum[t] = self.schedules[t].total
            self._change_cache[t].clear()
            for e in es:
                self._entry_cache.pop((t, e), None)

    def evaluate(self, placement: Mapping[str, Collection[str]]) -> DelayStats:
        """The statistics of a placement (state is left as it was)."""
        self.instance.check_placement(placement)
        held = np.zeros_like(self.holders)
        for node_id, ids in placement.items():
            for unit in ids:
                held[self.unit_index[unit], self.node_index[node_id]] = True
        any_held: Bools = np.asarray(held.any(axis=1))
        per_slot: list[list[float]] = []
        for t in range(len(self.entries)):
            key, tau, prep = self._slot_jobs(t, held, any_held)
            order, _cb, _term, end = self._ends(key, tau, prep)
            end_of_job = np.empty_like(end)
            end_of_job[order] = end
            per_slot.append(self._user_sums(t, end_of_job).tolist())
        return self.instance.stats(per_slot)
