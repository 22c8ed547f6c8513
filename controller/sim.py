"""Simulation sweeps: hit ratio of every solver as one scenario parameter varies.

A :class:`Scenario` fixes a synthetic but realistic setting: fine-tuned model families over
real architectures (:mod:`controller.library`), servers and users on a plane with the channel
model and Zipf demand of :mod:`controller.wireless`. :func:`run_sweep` varies one parameter
(capacity, users, servers, Zipf exponent, sharing degree), solves each instance with each
solver for each seed, and returns rows; :func:`write_csv` and :func:`plot` turn them into the
TrimCaching paper's kind of figure (mean hit ratio over seeds against the parameter). The
cells run on :mod:`controller.sweep`'s engine (in process, or as Ray tasks).

A solver that refuses an instance (``trimcaching-spec`` with too many shared blocks) gives a
row with status ``skipped`` and a NaN hit ratio; it is left out of the plot. Nothing here reads
the environment, the network or the clock (except ``perf_counter`` inside the solvers).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.library import architecture_library
from controller.placement import SOLVERS, TooManySharedBlocksError, get_solver
from controller.placement.problem import PlacementProblem
from controller.sweep import Cell, cells, last_built, run_cells, with_value, write_rows_csv
from controller.sweep import mean_by_solver as sweep_means
from controller.wireless import build_problem, random_topology

GB = 10**9


@dataclass(frozen=True, slots=True)
class Scenario:
    """One simulated network; every field can be swept (see :data:`SWEEPS`)."""

    n_servers: int = 9
    n_users: int = 60
    models_per_family: int = 5
    archs: tuple[str, ...] = ("resnet18", "resnet50", "vit-b16", "bert-base")
    capacity_gb: float = 0.6
    zipf_exponent: float = 0.8
    sharing: float = 0.5
    area_m: float = 1000.0
    deadline_range_s: tuple[float, float] = (2.0, 10.0)


# sweep name -> (Scenario field, default values)
SWEEPS: Mapping[str, tuple[str, tuple[float, ...]]] = {
    "capacity": ("capacity_gb", (0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.5)),
    "users": ("n_users", (20, 40, 60, 80, 100)),
    "servers": ("n_servers", (4, 6, 9, 12, 16)),
    "zipf": ("zipf_exponent", (0.4, 0.6, 0.8, 1.0, 1.2)),
    "sharing": ("sharing", (0.0, 0.25, 0.5, 0.75, 1.0)),
}

_LABELS = {
    "capacity_gb": "storage capacity per edge server (GB)",
    "n_users": "number of users",
    "n_servers": "number of edge servers",
    "zipf_exponent": "Zipf exponent",
    "sharing": "sharing degree (mean frozen fraction)",
}

CSV_FIELDS = (
    "sweep",
    "parameter",
    "value",
    "seed",
    "solver",
    "hit_ratio",
    "status",
    "solve_seconds",
    "used_bytes",
)


@dataclass(frozen=True, slots=True)
class Row:
    """One (parameter value, seed, solver) outcome."""

    sweep: str
    parameter: str
    value: float
    seed: int
    solver: str
    hit_ratio: float
    status: str
    solve_seconds: float
    used_bytes: int


def make_problem(scenario: Scenario, *, seed: int, arrays: bool = False) -> PlacementProblem:
    """The placement problem of a scenario for one seed (``arrays``: the array-backed form of
    the same problem, for 10k-model scale; see :func:`controller.wireless.build_problem`).

    Example:
        >>> p = make_problem(Scenario(n_servers=2, n_users=3, models_per_family=1), seed=0)
        >>> len(p.servers), len(p.requests), len(p.models)
        (2, 3, 4)
    """
    library = architecture_library(
        scenario.models_per_family, archs=scenario.archs, sharing=scenario.sharing, seed=seed
    )
    topology = random_topology(
        scenario.n_servers, scenario.n_users, area_m=scenario.area_m, seed=seed
    )
    return build_problem(
        library,
        topology,
        capacity_bytes=int(scenario.capacity_gb * GB),
        zipf_exponent=scenario.zipf_exponent,
        deadline_range_s=scenario.deadline_range_s,
        seed=seed,
        arrays=arrays,
    )


def solve_cell(cell: Cell, *, base: Scenario, time_limit_s: float | None) -> Row:
    """One sweep cell: the instance of (value, seed) solved by one solver (a picklable unit
    for :func:`controller.sweep.run_cells`)."""
    scenario = with_value(base, cell.parameter, cell.value)
    problem = last_built(
        "hit", (scenario, cell.seed), lambda: make_problem(scenario, seed=cell.seed)
    )
    head = (cell.sweep, cell.parameter, cell.value, cell.seed, cell.solver)
    try:
        result = get_solver(cell.solver)(problem, seed=cell.seed, time_limit_s=time_limit_s)
    except TooManySharedBlocksError:
        return Row(*head, math.nan, "skipped", 0.0, 0)
    return Row(
        *head,
        hit_ratio=result.hit_ratio,
        status=result.status,
        solve_seconds=result.solve_seconds,
        used_bytes=sum(p.used_bytes for p in result.servers.values()),
    )


def run_sweep(
    sweep: str,
    *,
    values: Sequence[float] | None = None,
    base: Scenario | None = None,
    solvers: Sequence[str] | None = None,
    seeds: Iterable[int] = (0,),
    time_limit_s: float | None = 10.0,
    engine: str = "local",
    address: str | None = None,
) -> list[Row]:
    """Solve every (value, seed) instance of a sweep with every solver.

    Args:
        sweep: a name of :data:`SWEEPS`.
        values: parameter values (default: the sweep's defaults).
        base: the scenario the other parameters come from.
        solvers: solver names (default: all of :data:`~controller.placement.SOLVERS`).
        seeds: instance seeds (the same seed gives the same library, topology and demand).
        time_limit_s: passed to every solver (only ``optimal`` uses it).
        engine: ``local`` or ``ray`` (:func:`controller.sweep.run_cells`; same rows).
        address: a Ray cluster address (``ray`` only; default: a local Ray).

    Raises:
        ValueError: unknown sweep, solver or engine, or invalid scenario values.
    """
    names = list(solvers) if solvers is not None else list(SOLVERS)
    todo = cells(sweep, SWEEPS, values=values, seeds=seeds, solvers=names, check_solver=get_solver)
    work = functools.partial(solve_cell, base=base or Scenario(), time_limit_s=time_limit_s)
    return run_cells(work, todo, engine=engine, address=address)


def write_csv(rows: Sequence[Row], path: Path) -> None:
    """Write rows with a header (:data:`CSV_FIELDS`), atomically."""
    write_rows_csv(rows, CSV_FIELDS, path)


def mean_by_solver(rows: Sequence[Row]) -> dict[str, dict[float, float]]:
    """solver -> parameter value -> mean hit ratio over seeds (skipped rows left out)."""
    return sweep_means(rows, "hit_ratio")


def plot(rows: Sequence[Row], path: Path, *, title: str | None = None) -> None:
    """A PNG of mean hit ratio against the swept parameter, one line per solver."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError("nothing to plot")
    parameter = rows[0].parameter
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    markers = "os^vDPX*"
    for i, (solver, series) in enumerate(mean_by_solver(rows).items()):
        # The optimum is drawn dashed so the solvers that reach it stay visible underneath.
        style: dict[str, Any] = (
            {"linestyle": "--", "color": "black", "marker": "x"}
            if solver == "optimal"
            else {"marker": markers[i % len(markers)]}
        )
        label = solver
        if solver == "optimal":
            statuses = [row.status for row in rows if row.solver == "optimal"]
            proved = statuses.count("optimal")
            if proved < len(statuses):  # the rest: best found within the time limit
                label = f"optimal (MILP; {proved}/{len(statuses)} proved)"
        ax.plot(list(series), list(series.values()), label=label, **style)
    ax.set_xlabel(_LABELS.get(parameter, parameter))
    ax.set_ylabel("cache hit ratio")
    ax.set_ylim(0.0, 1.0)
    ax.grid(True, alpha=0.3)
    seeds = sorted({row.seed for row in rows})
    ax.set_title(
        title
        or f"Hit ratio vs {_LABELS.get(parameter, parameter)}\n"
        f"(mean over {len(seeds)} seed{'s' if len(seeds) != 1 else ''})",
        fontsize=10,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
