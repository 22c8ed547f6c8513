"""Delay simulation sweeps: the mean download delay of every delay solver vs one parameter.

:func:`run_delay_sweep` varies one field of a :class:`~controller.delay.scenario.DelayScenario`
(capacity, users, servers, Zipf exponent, sharing degree, CoMP cluster size), solves each
(value, seed) instance with each solver of :data:`~controller.delay.DELAY_SOLVERS` and returns
rows; :func:`write_csv` and :func:`plot` make the paper-style figure: mean delay per solver
(left) and the delay reduction of each solver relative to ``coarse`` (right, when ``coarse``
ran). ``optimal`` on an instance too large for it gives a ``skipped`` row with NaN delays.
The cells run on :mod:`controller.sweep`'s engine (in process, or as Ray tasks). Pure
except for the two writers.
"""

from __future__ import annotations

import csv
import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from controller.delay import DELAY_SOLVERS, InstanceTooLargeError, get_delay_solver
from controller.delay.scenario import DelayScenario, make_delay_problem, problem_from_library
from controller.library import ModelLibrary
from controller.sweep import Cell, cells, last_built, run_cells, with_value, write_rows_csv
from controller.sweep import mean_by_solver as sweep_means

# sweep name -> (DelayScenario field, default values)
DELAY_SWEEPS: Mapping[str, tuple[str, tuple[float, ...]]] = {
    "capacity": ("capacity_gb", (0.1, 0.2, 0.4, 0.8, 1.2, 1.6)),
    "users": ("n_users", (8, 16, 24, 32, 48)),
    "servers": ("n_servers", (3, 4, 6, 9, 12)),
    "zipf": ("zipf_exponent", (0.4, 0.6, 0.8, 1.0, 1.2)),
    "sharing": ("sharing", (0.0, 0.25, 0.5, 0.75, 1.0)),
    "cluster": ("cluster_size", (1, 2, 3, 6)),
}

# Scenario fields that only shape the generated architecture library.
_LIBRARY_FIELDS = ("sharing", "models_per_family")

DEFAULT_SOLVERS = ("coarse", "fine-unicast", "trimcaching-gen", "delay-greedy")

_LABELS = {
    "capacity_gb": "storage capacity per edge node (GB)",
    "n_users": "number of users",
    "n_servers": "number of edge nodes",
    "zipf_exponent": "Zipf exponent",
    "sharing": "sharing degree (mean frozen fraction)",
    "cluster_size": "CoMP cluster size (nodes; 1 = no joint transmission)",
}

CSV_FIELDS = (
    "sweep",
    "parameter",
    "value",
    "seed",
    "solver",
    "mean_s",
    "p95_s",
    "makespan_s",
    "status",
    "solve_seconds",
    "used_bytes",
)


@dataclass(frozen=True, slots=True)
class DelayRow:
    """One (parameter value, seed, solver) outcome."""

    sweep: str
    parameter: str
    value: float
    seed: int
    solver: str
    mean_s: float
    p95_s: float
    makespan_s: float
    status: str
    solve_seconds: float
    used_bytes: int


def solve_delay_cell(
    cell: Cell,
    *,
    base: DelayScenario,
    time_limit_s: float | None,
    library: ModelLibrary | None = None,
) -> DelayRow:
    """One sweep cell: the delay instance of (value, seed) solved by one solver (a picklable
    unit for :func:`controller.sweep.run_cells`)."""
    scenario = with_value(base, cell.parameter, cell.value)
    problem = last_built(
        "delay",
        (scenario, cell.seed, library),  # the library compares by identity first
        lambda: (
            make_delay_problem(scenario, seed=cell.seed)
            if library is None
            else problem_from_library(library, scenario, seed=cell.seed)
        ),
    )
    head = (cell.sweep, cell.parameter, cell.value, cell.seed, cell.solver)
    solve = get_delay_solver(cell.solver)
    try:
        r = solve(problem, seed=cell.seed, time_limit_s=time_limit_s)
    except InstanceTooLargeError:
        return DelayRow(*head, math.nan, math.nan, math.nan, "skipped", 0.0, 0)
    return DelayRow(
        *head,
        mean_s=r.delay.mean_s,
        p95_s=r.delay.p95_s,
        makespan_s=r.delay.makespan_s,
        status=r.status,
        solve_seconds=r.solve_seconds,
        used_bytes=sum(h.used_bytes for h in r.servers.values()),
    )


def run_delay_sweep(
    sweep: str,
    *,
    values: Sequence[float] | None = None,
    base: DelayScenario | None = None,
    solvers: Sequence[str] | None = None,
    seeds: Iterable[int] = (0,),
    time_limit_s: float | None = None,
    library: ModelLibrary | None = None,
    engine: str = "local",
    address: str | None = None,
) -> list[DelayRow]:
    """Solve every (value, seed) instance of a sweep with every solver.

    ``library`` (e.g. :func:`controller.delay.zoo.zoo_library`) replaces the scenario's
    architecture library: the PBs are then the given ones and ``archs``,
    ``models_per_family`` and ``sharing`` are not used. ``engine`` and ``address`` choose
    where the cells run (:func:`controller.sweep.run_cells`; the same rows either way).

    Raises:
        ValueError: unknown sweep, solver or engine, invalid scenario values, or the
            ``sharing`` sweep with a given library (its sharing is fixed).

    Example:
        >>> rows = run_delay_sweep("capacity", values=[0.2], solvers=["coarse"],
        ...     base=DelayScenario(n_servers=2, n_users=3, models_per_family=1, n_slots=2))
        >>> rows[0].solver, rows[0].mean_s > 0
        ('coarse', True)
    """
    names = list(solvers) if solvers is not None else list(DEFAULT_SOLVERS)
    todo = cells(
        sweep, DELAY_SWEEPS, values=values, seeds=seeds, solvers=names,
        check_solver=get_delay_solver,
    )  # fmt: skip
    if library is not None and DELAY_SWEEPS[sweep][0] in _LIBRARY_FIELDS:
        raise ValueError(f"sweep {sweep!r} varies the generated library; not with a given one")
    work = functools.partial(
        solve_delay_cell, base=base or DelayScenario(), time_limit_s=time_limit_s, library=library
    )
    return run_cells(work, todo, engine=engine, address=address)


def write_csv(rows: Sequence[DelayRow], path: Path) -> None:
    """Write rows with a header (:data:`CSV_FIELDS`), atomically."""
    write_rows_csv(rows, CSV_FIELDS, path)


def read_csv(path: Path) -> list[DelayRow]:
    """Rows written by :func:`write_csv` (to re-plot without re-solving)."""
    with path.open(newline="") as fh:
        return [
            DelayRow(
                sweep=r["sweep"],
                parameter=r["parameter"],
                value=float(r["value"]),
                seed=int(r["seed"]),
                solver=r["solver"],
                mean_s=float(r["mean_s"]),
                p95_s=float(r["p95_s"]),
                makespan_s=float(r["makespan_s"]),
                status=r["status"],
                solve_seconds=float(r["solve_seconds"]),
                used_bytes=int(r["used_bytes"]),
            )
            for r in csv.DictReader(fh)
        ]


def mean_by_solver(rows: Sequence[DelayRow]) -> dict[str, dict[float, float]]:
    """solver -> parameter value -> mean of ``mean_s`` over seeds (skipped rows left out)."""
    return sweep_means(rows, "mean_s")


def reduction_vs(rows: Sequence[DelayRow], baseline: str) -> dict[str, dict[float, float]]:
    """solver -> value -> mean over seeds of ``1 - mean_s / baseline's mean_s`` (paired)."""
    base = {(r.value, r.seed): r.mean_s for r in rows if r.solver == baseline}
    acc: dict[str, dict[float, list[float]]] = {}
    for r in rows:
        b = base.get((r.value, r.seed))
        if r.solver == baseline or b is None or math.isnan(r.mean_s) or not b > 0:
            continue
        acc.setdefault(r.solver, {}).setdefault(r.value, []).append(1.0 - r.mean_s / b)
    return {s: {v: sum(xs) / len(xs) for v, xs in sorted(by.items())} for s, by in acc.items()}


def plot(rows: Sequence[DelayRow], path: Path, *, title: str | None = None) -> None:
    """A PNG: mean delay vs the parameter (left) and the reduction vs ``coarse`` (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError("nothing to plot")
    parameter = rows[0].parameter
    has_coarse = any(r.solver == "coarse" for r in rows)
    fig, axes = plt.subplots(
        1, 2 if has_coarse else 1, figsize=(11 if has_coarse else 6.4, 4.4), dpi=120, squeeze=False
    )
    markers = "os^vDPX*"
    order = {name: i for i, name in enumerate(DELAY_SOLVERS)}
    series = mean_by_solver(rows)
    for name in sorted(series, key=lambda s: order.get(s, 99)):
        i = order.get(name, 0)
        axes[0][0].plot(
            list(series[name]),
            list(series[name].values()),
            label=name,
            marker=markers[i % len(markers)],
            color=f"C{i}",
        )
    seeds = sorted({r.seed for r in rows})
    label = _LABELS.get(parameter, parameter)
    axes[0][0].set_xlabel(label)
    axes[0][0].set_ylabel("mean model download delay (s)")
    axes[0][0].grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=8)
    axes[0][0].set_title(
        title or f"Mean delay vs {label}\n(mean over {len(seeds)} seed(s))", fontsize=10
    )
    if has_coarse:
        red = reduction_vs(rows, "coarse")
        for name in sorted(red, key=lambda s: order.get(s, 99)):
            i = order.get(name, 0)
            axes[0][1].plot(
                list(red[name]),
                [100 * v for v in red[name].values()],
                label=name,
                marker=markers[i % len(markers)],
                color=f"C{i}",
            )
        axes[0][1].axhspan(30, 68, color="grey", alpha=0.15, label="paper's 30-68 % band")
        axes[0][1].set_xlabel(label)
        axes[0][1].set_ylabel("delay reduction vs coarse (%)")
        axes[0][1].grid(True, alpha=0.3)
        axes[0][1].legend(fontsize=8)
        axes[0][1].set_title("Reduction vs whole-model unicast (coarse)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    try:
        fig.savefig(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
        plt.close(fig)
