"""Integer-indexed numpy view of a :class:`PlacementProblem`, shared by the solvers.

Ids become positions in input order (servers ``s``, blocks ``b``, models ``m``, users ``u``).
The reachability of every (server, model) *pair* is stored once, as CSR over the users that
can be served by it, with each user's weight ``p[u][m] / |U|`` (its share of the hit ratio);
pairs are sorted by ``(s, m)`` so that ties between solvers' candidates break the same way on
every run. Pairs nobody requests (all weights 0) are dropped.

Memory is dense in ``(users x models)`` for coverage and ``(servers x models)`` for per-server
state: fine up to a few thousand of each, which is what the controller plans for.

:func:`pair_users` gives the greedy solvers one interface, :class:`PairUsers`, over two
layouts: that CSR for dict problems, and for array problems
(:class:`~controller.placement.arrays.ArrayForm`, where the CSR would have ~400 million
entries at 10k models x 200 servers x 5k users) each server's in-reach users and their
delivery times, the users of pair ``(s, m)`` being those within ``budget[m]``: ``O(U x S)``
numbers instead of ``O(U x S x M)`` entries.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Protocol, cast

import numpy as np
import numpy.typing as npt

from controller.placement.arrays import ArrayForm
from controller.placement.problem import PlacementProblem

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class Library:
    """The block, model and server tables as arrays (what the greedy needs besides pairs)."""

    server_ids: tuple[str, ...]
    block_ids: tuple[str, ...]
    block_size: IntArray  # (B,)
    capacity: IntArray  # (S,)
    model_blocks: tuple[IntArray, ...]  # m -> block indexes
    model_size: IntArray  # (M,)
    block_models: tuple[IntArray, ...]  # b -> models using it
    n_users: int

    @property
    def n_servers(self) -> int:
        return len(self.server_ids)

    @property
    def n_models(self) -> int:
        return len(self.model_size)

    def placement(self, on_server: BoolArray) -> dict[str, frozenset[str]]:
        """Server id -> block ids from a boolean (S, B) matrix."""
        return {
            s: frozenset(self.block_ids[b] for b in np.flatnonzero(on_server[i]))
            for i, s in enumerate(self.server_ids)
        }


def _library(problem: PlacementProblem) -> Library:
    b_of = {b: i for i, b in enumerate(problem.blocks)}
    block_size = np.fromiter(problem.blocks.values(), dtype=np.int64, count=len(b_of))
    model_blocks = tuple(
        np.fromiter((b_of[b] for b in ids), dtype=np.int64, count=len(ids))
        for ids in problem.models.values()
    )
    model_size = np.array([int(block_size[mb].sum()) for mb in model_blocks], dtype=np.int64)
    models_of_block: list[list[int]] = [[] for _ in b_of]
    for m, mb in enumerate(model_blocks):
        for b in mb.tolist():
            models_of_block[b].append(m)
    return Library(
        server_ids=tuple(problem.servers),
        block_ids=tuple(problem.blocks),
        block_size=block_size,
        capacity=np.fromiter(problem.servers.values(), dtype=np.int64, count=len(problem.servers)),
        model_blocks=model_blocks,
        model_size=model_size,
        block_models=tuple(np.asarray(ms, dtype=np.int64) for ms in models_of_block),
        n_users=len(problem.requests),
    )


@dataclass(frozen=True, slots=True)
class Index(Library):
    """The problem as arrays, with the (server, model) pairs' users as CSR (module docstring)."""

    model_ids: tuple[str, ...]
    user_ids: tuple[str, ...]
    pair_server: IntArray  # (P,)
    pair_model: IntArray  # (P,)
    pair_start: IntArray  # (P+1,) CSR offsets into pair_users / pair_weight
    pair_users: IntArray  # user indexes
    pair_weight: FloatArray  # p[u][m] / |U|
    pair_of: IntArray  # (S, M) pair index or -1

    def pair_gain0(self) -> FloatArray:
        """Each pair's hit-ratio gain when nothing is cached yet."""
        sums = (
            np.add.reduceat(self.pair_weight, self.pair_start[:-1])
            if len(self.pair_server)
            else np.zeros(0)
        )
        return np.asarray(sums, dtype=np.float64)


def build_index(problem: PlacementProblem) -> Index:
    """Compile a problem into an :class:`Index` (O(total reachable entries))."""
    server_ids = tuple(problem.servers)
    model_ids = tuple(problem.models)
    user_ids = tuple(problem.requests)
    s_of = {s: i for i, s in enumerate(server_ids)}
    m_of = {m: i for i, m in enumerate(model_ids)}
    n_s, n_m, n_u = len(server_ids), len(model_ids), len(user_ids)

    lib = _library(problem)
    prob = np.zeros((max(n_u, 1), max(n_m, 1)), dtype=np.float64)
    for u, row in enumerate(problem.requests.values()):
        for model_id, p in row.items():
            prob[u, m_of[model_id]] = p

    # Flatten reachable into (user, server, model) triples. Equal model sets (common: the
    # wireless model yields nested thresholds) are converted to index arrays once.
    group_user: list[int] = []
    group_server: list[int] = []
    chunks: list[IntArray] = []
    as_array: dict[frozenset[str], IntArray] = {}
    u_of = {u: i for i, u in enumerate(user_ids)}
    for user_id, by_server in problem.reachable.items():
        u = u_of[user_id]
        for server_id, ms in by_server.items():
            if not ms:
                continue
            if not isinstance(ms, frozenset):  # an array problem's view
                ms = frozenset(ms)
            ms = cast(frozenset[str], ms)
            arr = as_array.get(ms)
            if arr is None:
                arr = np.sort(np.fromiter((m_of[m] for m in ms), dtype=np.int64, count=len(ms)))
                as_array[ms] = arr
            group_user.append(u)
            group_server.append(s_of[server_id])
            chunks.append(arr)
    counts = np.asarray([len(c) for c in chunks], dtype=np.int64)
    t_user = np.repeat(np.asarray(group_user, dtype=np.int64), counts)
    t_server = np.repeat(np.asarray(group_server, dtype=np.int64), counts)
    t_model = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)
    weight = prob[t_user, t_model] if len(t_model) else np.zeros(0)
    keep = weight > 0
    t_user, t_server, t_model, weight = t_user[keep], t_server[keep], t_model[keep], weight[keep]
    key = t_server * n_m + t_model
    # A stable sort: within a pair, users keep the input order (so sums are reproducible).
    order = np.argsort(key, kind="stable")
    key, t_user, weight = key[order], t_user[order], weight[order]
    uniq, starts = np.unique(key, return_index=True)
    pair_start = np.append(starts, len(key)).astype(np.int64)
    pair_server = (uniq // max(n_m, 1)).astype(np.int64)
    pair_model = (uniq % max(n_m, 1)).astype(np.int64)
    pair_of = np.full((n_s, n_m), -1, dtype=np.int64)
    pair_of[pair_server, pair_model] = np.arange(len(uniq), dtype=np.int64)
    return Index(
        **{f: getattr(lib, f) for f in Library.__dataclass_fields__},
        model_ids=model_ids,
        user_ids=user_ids,
        pair_server=pair_server,
        pair_model=pair_model,
        pair_start=pair_start,
        pair_users=t_user.astype(np.int64),
        pair_weight=(weight / max(n_u, 1)).astype(np.float64),
        pair_of=pair_of,
    )


def blocks_of_models(
    index: Index, models_by_server: Mapping[int, Collection[int]]
) -> dict[str, frozenset[str]]:
    """Server id -> union of the blocks of the given models (indexes), for every server."""
    out: dict[str, frozenset[str]] = {}
    for s, server_id in enumerate(index.server_ids):
        ms = models_by_server.get(s, ())
        blocks: set[int] = set()
        for m in ms:
            blocks.update(int(b) for b in index.model_blocks[m])
        out[server_id] = frozenset(index.block_ids[b] for b in blocks)
    return out


class PairUsers(Protocol):
    """Who each (server, model) pair serves, whatever the layout (see the module docstring)."""

    def gain0(self) -> FloatArray:
        """``(S, M)``: each pair's hit-ratio gain when nothing is cached (0: no pair)."""
        ...

    def users(self, s: int, m: int) -> tuple[IntArray, FloatArray]:
        """The users pair ``(s, m)`` serves and their weights ``p[u][m] / |U|``."""
        ...


class _CsrPairs:
    """:class:`PairUsers` over an :class:`Index`'s CSR (the dict-problem layout)."""

    def __init__(self, index: Index) -> None:
        self.ix = index
        self._empty_u = np.zeros(0, dtype=np.int64)
        self._empty_w = np.zeros(0, dtype=np.float64)

    def gain0(self) -> FloatArray:
        out = np.zeros((self.ix.n_servers, self.ix.n_models), dtype=np.float64)
        out[self.ix.pair_server, self.ix.pair_model] = self.ix.pair_gain0()
        return out

    def users(self, s: int, m: int) -> tuple[IntArray, FloatArray]:
        ix = self.ix
        k = int(ix.pair_of[s, m])
        if k < 0:
            return self._empty_u, self._empty_w
        lo, hi = ix.pair_start[k], ix.pair_start[k + 1]
        return ix.pair_users[lo:hi], ix.pair_weight[lo:hi]


class _ThresholdPairs:
    """:class:`PairUsers` of an array problem: pair ``(s, m)`` serves the users ``u`` in
    reach of ``s`` with ``seconds_per_byte[u, s] <= budget[m]``.

    Users stay in index order and gains are summed over the same contiguous runs, so every
    float is the one the CSR layout gives for the same problem (same placements, not just
    close ones); only one server's pairs are expanded at a time.
    """

    def __init__(self, form: ArrayForm, n_servers: int) -> None:
        self.form = form
        self.n_u = max(form.n_users, 1)
        self.server_users: list[IntArray] = []
        self.server_spb: list[FloatArray] = []
        for s in range(n_servers):
            col = form.seconds_per_byte[:, s]
            users = np.flatnonzero(np.isfinite(col)).astype(np.int64)
            self.server_users.append(users)
            self.server_spb.append(col[users])

    def gain0(self) -> FloatArray:
        budget = self.form.budget
        out = np.zeros((len(self.server_users), len(budget)), dtype=np.float64)
        for s, users in enumerate(self.server_users):
            if not len(users):
                continue
            # (M, users of s): each pair's weights contiguous, as in the CSR, so that
            # reduceat sums them exactly as the CSR's pair_gain0 does.
            weights = np.ascontiguousarray((self.form.prob[users] / self.n_u).T)
            keep = (self.server_spb[s][None, :] <= budget[:, None]) & (weights > 0)
            counts = keep.sum(axis=1)
            has = np.flatnonzero(counts)
            if len(has):
                starts = np.concatenate(([0], np.cumsum(counts)[:-1]))[has]
                out[s, has] = np.add.reduceat(weights[keep], starts)
        return out

    def users(self, s: int, m: int) -> tuple[IntArray, FloatArray]:
        users = self.server_users[s][self.server_spb[s] <= self.form.budget[m]]
        weights = self.form.prob[users, m] / self.n_u
        keep = weights > 0  # the CSR keeps requested entries only
        return users[keep], weights[keep]


def pair_users(problem: PlacementProblem) -> tuple[Library, PairUsers]:
    """The library arrays and the pair layout that suits the problem (see the module docstring)."""
    if problem.arrays is not None:
        library = _library(problem)
        return library, _ThresholdPairs(problem.arrays, library.n_servers)
    index = build_index(problem)
    return index, _CsrPairs(index)
