"""The one sweep engine both simulators run on: cells, engines, rows to CSV.

A sweep varies one field of a scenario; every (parameter value, seed, solver) is a *cell*
(:class:`Cell`), solved by a simulator's picklable cell function into one row. The engine
runs the cells and returns the rows in cell order, whatever ran where:

- ``local``: one after the other in this process (the default; no extra dependency);
- ``ray``: one Ray task per cell, on a local Ray started here (``num_cpus=2``, no dashboard,
  shut down afterwards) or on the cluster at ``address``. Install with
  ``pip install 'trimcache[ray]'``; a cluster's workers need ``trimcache`` importable.

:func:`engine_session` keeps one engine up for many batches (the ``marl`` learner rolls
out each batch of episodes through it). A cell's result depends only on the cell (the
instance comes from its seed), so both engines give the same rows; only the measured
``solve_seconds`` differ from run to run. The cell functions memoise the last instance they
built (:func:`last_built`), so a local run builds each (value, seed) instance once, as the
solver loop did before cells.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from core.fsutil import atomic_write_text

ENGINES = ("local", "ray")

R = TypeVar("R")
S = TypeVar("S")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Cell:
    """One unit of a sweep: solve the instance of (``value``, ``seed``) with ``solver``."""

    sweep: str
    parameter: str
    value: float
    seed: int
    solver: str


def with_value(scenario: S, field_name: str, value: float) -> S:
    """The scenario with one field set, cast to the field's type (int fields stay int).

    Example:
        >>> from controller.sim import Scenario
        >>> with_value(Scenario(), "n_users", 20.0).n_users
        20
    """
    current = getattr(scenario, field_name)
    cast = int(value) if isinstance(current, int) else float(value)
    changes: dict[str, Any] = {field_name: cast}
    return dataclasses.replace(scenario, **changes)  # type: ignore[type-var]


def cells(
    sweep: str,
    sweeps: Mapping[str, tuple[str, Sequence[float]]],
    *,
    values: Iterable[float] | None,
    seeds: Iterable[int],
    solvers: Sequence[str],
    check_solver: Callable[[str], object],
) -> list[Cell]:
    """Every (value, seed, solver) of a sweep (values outermost, solvers innermost).

    ``sweeps`` maps sweep names to (scenario field, default values); ``check_solver``
    raises ``ValueError`` for an unknown solver name (checked before anything runs).

    Raises:
        ValueError: unknown sweep or solver.
    """
    if sweep not in sweeps:
        raise ValueError(f"unknown sweep {sweep!r}; choose from {', '.join(sweeps)}")
    parameter, defaults = sweeps[sweep]
    for name in solvers:
        check_solver(name)
    seed_list = list(seeds)
    return [
        Cell(sweep, parameter, float(v), seed, solver)
        for v in (values if values is not None else defaults)
        for seed in seed_list
        for solver in solvers
    ]


_LAST: dict[str, tuple[Hashable, object]] = {}


def last_built(kind: str, key: Hashable, build: Callable[[], R]) -> R:
    """``build()``, reusing the last result for ``kind`` when ``key`` is the same (so the
    solvers of one (value, seed) share one instance in a process)."""
    hit = _LAST.get(kind)
    if hit is not None and hit[0] == key:
        return hit[1]  # type: ignore[return-value]
    value = build()
    _LAST[kind] = (key, value)
    return value


def run_cells(
    work: Callable[[T], R],
    todo: Sequence[T],
    *,
    engine: str = "local",
    address: str | None = None,
) -> list[R]:
    """``[work(cell) for cell in todo]`` on the chosen engine (results in cell order).

    ``work`` must be picklable for ``ray`` (a module-level function or a
    ``functools.partial`` of one).

    Raises:
        ValueError: unknown engine, ``address`` without ``ray``, or Ray not installed.
    """
    with engine_session(engine, address) as run:
        return run(work, todo)


# A started engine: (work, items) -> [work(item) for item in items], in item order.
Runner = Callable[[Callable[[Any], Any], Sequence[Any]], list[Any]]


@contextmanager
def engine_session(engine: str = "local", address: str | None = None) -> Iterator[Runner]:
    """The engine, started once for many :data:`Runner` calls (the learner's rollout batches):
    ``local`` runs items in this process; ``ray`` runs one task per item (a private local
    2-CPU Ray started here and shut down after, or the cluster at ``address``).

    Raises:
        ValueError: unknown engine, ``address`` without ``ray``, or Ray not installed.
    """
    check_engine(engine, address)
    if engine == "local":
        yield _run_local
        return
    try:
        import ray
    except ImportError:
        raise ValueError(
            "--engine ray: Ray is not installed; pip install 'trimcache[ray]'"
        ) from None
    started_here = not ray.is_initialized()
    if started_here:
        if address is None:  # a private local Ray, bounded
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
    task: Any = ray.remote(_apply)

    def run(work: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        work_ref = ray.put(work)  # shipped once; Ray resolves it in each task
        return list(ray.get([task.remote(work_ref, item) for item in items]))

    try:
        yield run
    finally:
        if started_here:
            ray.shutdown()


def check_engine(engine: str, address: str | None) -> None:
    """Raise ``ValueError`` for an unknown engine or an ``address`` without ``ray``."""
    if engine not in ENGINES:
        raise ValueError(f"--engine: unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
    if engine == "local" and address is not None:
        raise ValueError("--address: only with --engine ray")


def _run_local(work: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    return [work(item) for item in items]


def _apply(work: Callable[[T], R], item: T) -> R:
    """The Ray task body (Ray wraps functions only, not ``functools.partial`` objects)."""
    return work(item)


def write_rows_csv(rows: Sequence[object], fields: Sequence[str], path: Path) -> None:
    """Rows (objects with ``fields`` as attributes) as CSV with a header, atomically."""
    handle = io.StringIO(newline="")
    writer = csv.writer(handle)
    writer.writerow(fields)
    for row in rows:
        writer.writerow([getattr(row, f) for f in fields])
    atomic_write_text(path, handle.getvalue())


def mean_by_solver(rows: Iterable[Any], metric: str) -> dict[str, dict[float, float]]:
    """solver -> parameter value -> mean of ``metric`` over seeds (NaN rows left out)."""
    acc: dict[str, dict[float, list[float]]] = {}
    for row in rows:
        x = getattr(row, metric)
        if x == x:  # not NaN
            acc.setdefault(row.solver, {}).setdefault(row.value, []).append(x)
    return {s: {v: sum(xs) / len(xs) for v, xs in sorted(by.items())} for s, by in acc.items()}
