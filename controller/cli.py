"""The controller's ``trimcache`` subcommands: ``place``, ``solvers``, ``sim``.

``testbed/cli.py`` calls :func:`add_parsers`, which runs every function of :data:`COMMANDS`
on the shared subparsers object. Each adds one subcommand and sets ``func`` to a handler
``(args) -> int``. Heavy imports (numpy, highspy, matplotlib) happen inside the handlers so
``trimcache --help`` stays fast. Bad input raises ``ValueError``, which the top-level CLI turns
into one line on stderr and exit code 2. Output goes through ``sys.stdout.write``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

Subparsers = Any  # argparse's _SubParsersAction is private


def _read_json(path: str) -> Any:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc


def _parse_seeds(text: str) -> list[int]:
    """``"0-4"`` -> [0..4]; ``"1,3"`` -> [1, 3]."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            lo, sep, hi = part.strip().partition("-")
            seeds.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    except ValueError:
        raise ValueError(f"--seeds: expected e.g. 0-4 or 1,3, got {text!r}") from None
    return seeds


def _parse_floats(text: str, option: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{option}: expected comma-separated numbers, got {text!r}") from None


# place -----------------------------------------------------------------------------------------
def _add_place(subparsers: Subparsers) -> None:
    p = subparsers.add_parser(
        "place", help="solve a placement problem (JSON) and print the result JSON"
    )
    p.add_argument("problem_json", metavar="PROBLEM_JSON", help="problem file, or - for stdin")
    p.add_argument("--solver", default=None, help="a name from `trimcache solvers`")
    p.add_argument(
        "--objective",
        choices=("hit", "delay"),
        default="hit",
        help="hit: trimcache.placement-problem/v1 (default solver trimcaching-gen); "
        "delay: trimcache.delay-problem/v1 (default solver delay-greedy)",
    )
    p.add_argument("--seed", type=int, default=None, help="seed (lru/lfu traces, HiGHS, marl)")
    p.add_argument("--time-limit-s", type=float, default=None, help="time limit (optimal)")
    p.add_argument(
        "--engine",
        default=None,
        help="marl: where episodes are rolled out, local or ray (default local, step by step)",
    )
    p.add_argument("--address", default=None, help="marl on ray: a cluster address")
    p.add_argument(
        "--parallel-envs",
        type=int,
        default=None,
        help="marl: episodes rolled out per batch (default 0 = step by step; 4 with ray)",
    )
    p.set_defaults(func=_run_place)


def _run_place(args: argparse.Namespace) -> int:
    marl_only = {"--engine": args.engine, "--address": args.address}
    marl_only["--parallel-envs"] = args.parallel_envs
    if args.objective != "delay" or (args.solver or "delay-greedy") != "marl":
        for option, value in marl_only.items():
            if value is not None:
                raise ValueError(f"{option}: only with --objective delay --solver marl")
    if args.objective == "delay":
        return _run_place_delay(args)
    from controller.placement import get_solver, problem_from_json, result_to_json

    solve = get_solver(args.solver or "trimcaching-gen")
    problem = problem_from_json(_read_json(args.problem_json))
    result = solve(problem, seed=args.seed, time_limit_s=args.time_limit_s)
    sys.stdout.write(json.dumps(result_to_json(result), indent=2) + "\n")
    return 0


def _run_place_delay(args: argparse.Namespace) -> int:
    from controller.delay import delay_problem_from_json, delay_result_to_json, get_delay_solver

    solve = get_delay_solver(args.solver or "delay-greedy")
    problem = delay_problem_from_json(_read_json(args.problem_json))
    if args.solver == "marl" and (args.engine, args.address, args.parallel_envs) != (None,) * 3:
        from controller.delay import marl

        engine = args.engine or "local"
        envs = args.parallel_envs if args.parallel_envs is not None else 4 * (engine == "ray")
        if envs < 0:
            raise ValueError("--parallel-envs: must be >= 0")
        result = marl.solve(
            problem,
            seed=args.seed,
            config=marl.MarlConfig(parallel_envs=envs),
            engine=engine,
            address=args.address,
        )
    else:
        result = solve(problem, seed=args.seed, time_limit_s=args.time_limit_s)
    sys.stdout.write(json.dumps(delay_result_to_json(result), indent=2) + "\n")
    return 0


# solvers ---------------------------------------------------------------------------------------
def _add_solvers(subparsers: Subparsers) -> None:
    p = subparsers.add_parser(
        "solvers",
        help="list solvers, one per line (hit-ratio ones, then the delay ones not listed yet)",
    )
    p.add_argument(
        "--objective", choices=("hit", "delay", "all"), default="all", help="default all"
    )
    p.set_defaults(func=_run_solvers)


def _run_solvers(args: argparse.Namespace) -> int:
    from controller.delay import DELAY_SOLVERS
    from controller.placement import SOLVERS

    names = {
        "hit": list(SOLVERS),
        "delay": list(DELAY_SOLVERS),
        "all": list(dict.fromkeys([*SOLVERS, *DELAY_SOLVERS])),
    }[args.objective]
    sys.stdout.write("".join(f"{name}\n" for name in names))
    return 0


# sim -------------------------------------------------------------------------------------------
def _add_sim(subparsers: Subparsers) -> None:
    p = subparsers.add_parser(
        "sim",
        help="simulation sweeps: hit ratio of every solver vs a parameter (CSV + PNG)",
        description="Sweep one scenario parameter and write DIR/sim_<sweep>.csv and "
        "DIR/sim_<sweep>.png (mean hit ratio over seeds, one line per solver).",
    )
    p.add_argument(
        "--objective",
        choices=("hit", "delay"),
        default="hit",
        help="hit: hit ratio (sim_<sweep>.*); delay: mean download delay (delay_<sweep>.*)",
    )
    p.add_argument(
        "--sweep",
        default="capacity",
        help="comma list of capacity, users, servers, zipf, sharing (delay also: cluster), "
        "or all (default capacity)",
    )
    p.add_argument("--values", default=None, help="comma list of values (one sweep only)")
    p.add_argument("--solvers", default=None, help="comma list of solvers (default: all)")
    p.add_argument("--seeds", default="0", help="e.g. 0-4 or 1,3 (default 0)")
    p.add_argument("--out", default="sim-results", help="output directory")
    p.add_argument("--time-limit-s", type=float, default=10.0, help="per solve (optimal)")
    p.add_argument("--servers", type=int, default=None, help="edge servers (default 9)")
    p.add_argument("--users", type=int, default=None, help="users (default 60)")
    p.add_argument("--models-per-family", type=int, default=None, help="default 5")
    p.add_argument("--capacity-gb", type=float, default=None, help="per server (default 0.6)")
    p.add_argument("--zipf", type=float, default=None, help="Zipf exponent (default 0.8)")
    p.add_argument("--sharing", type=float, default=None, help="frozen fraction (default 0.5)")
    p.add_argument("--slots", type=int, default=None, help="delay: request slots (default 6)")
    p.add_argument("--bandwidth-mhz", type=float, default=None, help="delay: downlink (default 20)")
    p.add_argument(
        "--archs",
        default=None,
        help="delay: comma list of model families, e.g. bert-base "
        "(default resnet18,resnet50,vit-b16,bert-base)",
    )
    p.add_argument(
        "--zoo",
        default=None,
        metavar="DIR",
        help="delay: PBs from a built zoo (zoo.json + repos/): core manifests grouped by sharing",
    )
    p.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="where the (solver, value, seed) cells run: in this process (default) or as Ray "
        "tasks (pip install 'trimcache[ray]'); the same rows either way",
    )
    p.add_argument(
        "--address", default=None, help="ray: a cluster address (default: a local 2-CPU Ray)"
    )
    p.set_defaults(func=_run_sim)


def _sweeps_and_values(args: argparse.Namespace, known: Collection[str]) -> tuple[list[str], Any]:
    """The ``--sweep`` names (checked against ``known``) and the ``--values`` (or None)."""
    sweeps = list(known) if args.sweep == "all" else args.sweep.split(",")
    for name in sweeps:
        if name not in known:
            raise ValueError(f"--sweep: unknown sweep {name!r}; choose from {', '.join(known)}")
    values = _parse_floats(args.values, "--values") if args.values else None
    if values is not None and len(sweeps) != 1:
        raise ValueError("--values needs exactly one --sweep")
    return sweeps, values


def _scenario_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The scenario fields both objectives share, from the options given."""
    given = {
        "n_servers": args.servers,
        "n_users": args.users,
        "models_per_family": args.models_per_family,
        "capacity_gb": args.capacity_gb,
        "zipf_exponent": args.zipf,
        "sharing": args.sharing,
    }
    return {k: v for k, v in given.items() if v is not None}


def _run_sweeps(
    args: argparse.Namespace,
    sweeps: list[str],
    prefix: str,
    run: Callable[..., Any],
    write_csv: Callable[[Any, Path], None],
    plot: Callable[[Any, Path], None],
    **kwargs: Any,
) -> int:
    """Run each sweep on the chosen engine; write DIR/<prefix>_<sweep>.csv and .png."""
    out = Path(args.out)
    for name in sweeps:
        rows = run(
            name,
            solvers=args.solvers.split(",") if args.solvers else None,
            seeds=_parse_seeds(args.seeds),
            time_limit_s=args.time_limit_s,
            engine=args.engine,
            address=args.address,
            **kwargs,
        )
        csv_path, png_path = out / f"{prefix}_{name}.csv", out / f"{prefix}_{name}.png"
        write_csv(rows, csv_path)
        plot(rows, png_path)
        sys.stdout.write(f"{csv_path}\n{png_path}\n")
    return 0


def _run_sim(args: argparse.Namespace) -> int:
    import dataclasses

    if args.objective == "delay":
        return _run_sim_delay(args)

    from controller import sim

    if args.zoo is not None:
        raise ValueError("--zoo: only with --objective delay")
    sweeps, values = _sweeps_and_values(args, sim.SWEEPS)
    base = dataclasses.replace(sim.Scenario(), **_scenario_overrides(args))
    return _run_sweeps(
        args, sweeps, "sim", sim.run_sweep, sim.write_csv, sim.plot, values=values, base=base
    )


def _run_sim_delay(args: argparse.Namespace) -> int:
    import dataclasses

    from controller.delay import sim
    from controller.delay.scenario import DelayScenario

    sweeps, values = _sweeps_and_values(args, sim.DELAY_SWEEPS)
    base = DelayScenario()
    if args.bandwidth_mhz is not None:
        if not args.bandwidth_mhz > 0:
            raise ValueError(f"--bandwidth-mhz: must be > 0, got {args.bandwidth_mhz}")
        base = dataclasses.replace(
            base, channel=dataclasses.replace(base.channel, bandwidth_hz=args.bandwidth_mhz * 1e6)
        )
    archs = None
    if args.archs:
        from controller.library import ARCHITECTURES

        archs = tuple(a.strip() for a in args.archs.split(",") if a.strip())
        for arch in archs:
            if arch not in ARCHITECTURES:
                raise ValueError(
                    f"--archs: unknown architecture {arch!r};"
                    f" choose from {', '.join(ARCHITECTURES)}"
                )
    overrides = {**_scenario_overrides(args), "n_slots": args.slots, "archs": archs}
    base = dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})
    library = None
    if args.zoo is not None:
        from controller.delay.zoo import zoo_library

        if args.archs or args.models_per_family is not None or args.sharing is not None:
            raise ValueError(
                "--zoo: the library is the zoo's; drop --archs/--models-per-family/--sharing"
            )
        library = zoo_library(Path(args.zoo))
    return _run_sweeps(
        args,
        sweeps,
        "delay",
        sim.run_delay_sweep,
        sim.write_csv,
        sim.plot,
        values=values,
        base=base,
        library=library,
    )


# Each entry adds one subcommand. `controller serve` (the FastAPI service) is added by the
# service's own function appended to this list; keep the placement commands above.
def _add_serve(subparsers: Subparsers) -> None:
    """`trimcache controller serve` (the service; owned by controller/service_cli.py)."""
    from controller.service_cli import add_serve_parser

    add_serve_parser(subparsers)


COMMANDS: list[Callable[[Subparsers], None]] = [_add_place, _add_solvers, _add_sim, _add_serve]


def add_parsers(subparsers: Subparsers) -> None:
    """Add the controller's subcommands to the ``trimcache`` parser."""
    for add in COMMANDS:
        add(subparsers)
