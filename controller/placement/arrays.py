"""Array-backed demand and reachability for large placement problems (10k models x 5k users).

A :class:`~controller.placement.problem.PlacementProblem` built from dicts holds one Python
object per (user, model) request and per (user, server, model) reachable entry: 50 million and
400 million of them at 10,000 models x 200 servers x 5,000 users, which neither fits in memory
nor builds in a minute. :class:`ArrayForm` holds the same two tables as arrays:

- ``prob``: the ``(U, M)`` matrix of request probabilities (rows sum to at most 1);
- ``seconds_per_byte`` ``(U, S)`` and ``budget`` ``(M,)``: server ``s`` can deliver model ``m``
  to user ``u`` within the deadline when ``seconds_per_byte[u, s] <= budget[m]`` (``inf`` means
  out of reach). Delivery time is linear in the model's bytes in the wireless model (direct
  or relayed), so this threshold form is exact for it, not an approximation.

:func:`views` turns a form into read-only ``Mapping`` views with exactly the shape of the dict
tables (``requests[u][m]``, ``reachable[u][s]`` a collection of model ids, servers nearest
first), built on access, so every piece of code written against the dict problem, above all
:func:`~controller.placement.problem.evaluate`, reads an array problem unchanged. The greedy
solvers read the arrays directly (:mod:`controller.placement._index`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
V = TypeVar("V")

# Request rows may sum to 1 up to float rounding of the producer (as for the dict tables).
_ROW_SUM_TOLERANCE = 1e-9


@dataclass(frozen=True, slots=True)
class ArrayForm:
    """Requests and reachability as arrays over users, servers and models (ids in order).

    Raises:
        ValueError: wrong shapes, duplicate user ids, probabilities outside ``[0, 1]`` or rows
            summing above 1, NaN or negative times, non-positive budgets.
    """

    user_ids: tuple[str, ...]
    prob: FloatArray  # (U, M)
    seconds_per_byte: FloatArray  # (U, S), inf = out of reach
    budget: FloatArray  # (M,) seconds per byte a model's deadline allows

    def __post_init__(self) -> None:
        n_u = len(self.user_ids)
        if len(set(self.user_ids)) != n_u:
            raise ValueError("array form: duplicate user ids")
        prob = np.asarray(self.prob, dtype=np.float64)
        spb = np.asarray(self.seconds_per_byte, dtype=np.float64)
        budget = np.asarray(self.budget, dtype=np.float64)
        if prob.ndim != 2 or prob.shape[0] != n_u:
            raise ValueError(f"array form: prob must be (users, models), got {prob.shape}")
        if spb.ndim != 2 or spb.shape[0] != n_u:
            raise ValueError(
                f"array form: seconds_per_byte must be (users, servers), got {spb.shape}"
            )
        if budget.shape != (prob.shape[1],):
            raise ValueError(f"array form: budget must be (models,), got {budget.shape}")
        if not np.all((prob >= 0.0) & (prob <= 1.0)):  # also false for NaN
            u, m = np.argwhere(~((prob >= 0.0) & (prob <= 1.0)))[0]
            raise ValueError(
                f"user {self.user_ids[u]!r}: probability of model #{m} must be in [0, 1],"
                f" got {prob[u, m]!r}"
            )
        sums = prob.sum(axis=1)
        if n_u and sums.max() > 1.0 + _ROW_SUM_TOLERANCE:
            u = int(np.argmax(sums))
            raise ValueError(
                f"user {self.user_ids[u]!r}: request probabilities sum to {sums[u]} > 1"
            )
        if np.isnan(spb).any() or (spb < 0).any():
            raise ValueError("array form: seconds_per_byte must be >= 0 (inf = out of reach)")
        if not np.all(budget > 0):
            raise ValueError("array form: every model's budget must be > 0")
        for name, value in (("prob", prob), ("seconds_per_byte", spb), ("budget", budget)):
            value.setflags(write=False)
            object.__setattr__(self, name, value)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)


class _Row(Mapping[str, float]):
    """One user's request row: model id -> probability (every model, in model order)."""

    __slots__ = ("_p", "_model_ids", "_model_pos")

    def __init__(self, p: FloatArray, model_ids: Sequence[str], model_pos: Mapping[str, int]):
        self._p, self._model_ids, self._model_pos = p, model_ids, model_pos

    def __getitem__(self, model_id: str) -> float:
        return float(self._p[self._model_pos[model_id]])

    def __iter__(self) -> Iterator[str]:
        return iter(self._model_ids)

    def __len__(self) -> int:
        return len(self._model_ids)


class _Reach(Collection[str]):
    """The models one server can deliver to one user in time: those with budget >= ``t``."""

    __slots__ = ("_t", "_budget", "_model_ids", "_model_pos")

    def __init__(
        self, t: float, budget: FloatArray, model_ids: Sequence[str], model_pos: Mapping[str, int]
    ):
        self._t, self._budget, self._model_ids, self._model_pos = t, budget, model_ids, model_pos

    def __contains__(self, model_id: object) -> bool:
        i = self._model_pos.get(model_id) if isinstance(model_id, str) else None
        return i is not None and bool(self._budget[i] >= self._t)

    def __iter__(self) -> Iterator[str]:
        ids = self._model_ids
        return (ids[i] for i in np.flatnonzero(self._budget >= self._t).tolist())

    def __len__(self) -> int:
        return int(np.count_nonzero(self._budget >= self._t))


class _ReachRow(Mapping[str, Collection[str]]):
    """One user's reachable table: server id -> :class:`_Reach`, nearest (fastest) first."""

    __slots__ = ("_by_server",)

    def __init__(self, by_server: dict[str, Collection[str]]):
        self._by_server = by_server

    def __getitem__(self, server_id: str) -> Collection[str]:
        return self._by_server[server_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_server)

    def __len__(self) -> int:
        return len(self._by_server)


class _Users(Mapping[str, V]):
    """user id -> a per-user view built on access (``requests`` or ``reachable``)."""

    __slots__ = ("_form", "_user_pos", "_row")

    def __init__(self, form: ArrayForm, row: Callable[[int], V]) -> None:
        self._form = form
        self._user_pos = {u: i for i, u in enumerate(form.user_ids)}
        self._row = row

    def __getitem__(self, user_id: str) -> V:
        return self._row(self._user_pos[user_id])

    def __iter__(self) -> Iterator[str]:
        return iter(self._form.user_ids)

    def __len__(self) -> int:
        return len(self._form.user_ids)


def views(
    form: ArrayForm, model_ids: Sequence[str], server_ids: Sequence[str]
) -> tuple[Mapping[str, Mapping[str, float]], Mapping[str, Mapping[str, Collection[str]]]]:
    """``(requests, reachable)`` read-only views of a form, shaped like the dict tables.

    ``reachable[u]`` lists the servers with at least one model in reach, ordered by
    ``seconds_per_byte[u]`` (stable), as :func:`controller.wireless.reachable_sets` does.

    Example:
        >>> form = ArrayForm(user_ids=("u0",), prob=np.array([[0.5, 0.5]]),
        ...     seconds_per_byte=np.array([[2.0, np.inf]]), budget=np.array([1.0, 3.0]))
        >>> requests, reachable = views(form, ["m0", "m1"], ["s0", "s1"])
        >>> dict(requests["u0"]), {s: sorted(ms) for s, ms in reachable["u0"].items()}
        ({'m0': 0.5, 'm1': 0.5}, {'s0': ['m1']})
    """
    if form.prob.shape[1] != len(model_ids) or form.seconds_per_byte.shape[1] != len(server_ids):
        raise ValueError("array form: shapes do not match the model and server tables")
    model_pos = {m: i for i, m in enumerate(model_ids)}
    ids = tuple(model_ids)
    top = float(form.budget.max()) if len(ids) else -np.inf

    def request_row(u: int) -> Mapping[str, float]:
        return _Row(form.prob[u], ids, model_pos)

    def reach_row(u: int) -> Mapping[str, Collection[str]]:
        spb = form.seconds_per_byte[u]
        row: dict[str, Collection[str]] = {}
        for s in np.argsort(spb, kind="stable").tolist():
            if not spb[s] <= top:  # also stops at inf
                break
            row[server_ids[s]] = _Reach(float(spb[s]), form.budget, ids, model_pos)
        return _ReachRow(row)

    return _Users(form, request_row), _Users(form, reach_row)
