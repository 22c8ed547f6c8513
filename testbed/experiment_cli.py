"""`trimcache experiment run|compare|report`: workloads and solver comparisons on the testbed.

The work is in :mod:`testbed.experiment` (the workload runner),
:mod:`testbed.experiment_compare` (a fresh testbed per solver and capacity) and
:mod:`testbed.experiment_report` (plots, report.md); this module parses flags, shows progress
(rich) and prints a summary. ``run`` uses a running testbed: ``--dir STATE_DIR``, else the last
one started on this machine.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

MIB = 1024 * 1024


def add_parsers(subparsers: Any) -> None:
    experiment = subparsers.add_parser(
        "experiment", help="emulated users against the testbed; solver comparisons"
    )
    sub = experiment.add_subparsers(dest="experiment_command", metavar="ACTION", required=True)

    run = sub.add_parser("run", help="run a workload CONFIG against the running testbed")
    run.add_argument("config", type=Path, metavar="CONFIG", help="experiment config (JSON)")
    run.add_argument("--out", type=Path, required=True, metavar="DIR", help="results dir")
    run.add_argument(
        "--dir", type=Path, default=None, dest="state_dir", metavar="STATE_DIR",
        help="the testbed's state dir (default: the last testbed started)",
    )  # fmt: skip
    run.set_defaults(func=_run)

    cmp = sub.add_parser(
        "compare", help="for each capacity and solver: a fresh testbed, the same workload"
    )
    cmp.add_argument("config", type=Path, metavar="CONFIG", help="experiment config (JSON)")
    cmp.add_argument("--out", type=Path, required=True, metavar="DIR", help="results dir")
    cmp.add_argument("--solvers", required=True, help="comma-separated solver names")
    cmp.add_argument("--capacities", required=True, metavar="MIB",
                     help="comma-separated capacities per edge node, MiB")  # fmt: skip
    cmp.add_argument("--profile", choices=("test", "full"), default="test")
    cmp.add_argument("--edges", type=int, default=3)
    cmp.add_argument("--zoo", type=Path, default=None, help="zoo dir (default: the shared cache)")
    cmp.add_argument("--figures", type=Path, default=None, metavar="DIR",
                     help="write the report's plots here (default: --out)")  # fmt: skip
    cmp.set_defaults(func=_compare)


def _progress() -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("hits {task.fields[hits]}"), transient=False,
    )  # fmt: skip


def _run(args: argparse.Namespace) -> int:
    from testbed import launcher, paths
    from testbed.experiment import (
        ExperimentConfig,
        ExperimentError,
        Record,
        Testbed,
        run_workload,
        write_json,
        write_records,
    )

    config = ExperimentConfig.load(args.config)
    state_dir = args.state_dir or paths.last_testbed()
    state = launcher.load_state(state_dir) if state_dir else None
    if state is None or state.get("status") != "running":
        raise ExperimentError("no running testbed: run `trimcache testbed up` (or pass --dir)")
    testbed = Testbed.from_state(state)
    hits = 0
    with _progress() as progress:
        task = progress.add_task("requests", total=config.requests, hits=0)

        def on_record(record: Record) -> None:
            nonlocal hits
            hits += record.hit
            progress.update(task, advance=1, hits=hits)

        result = run_workload(testbed, config, on_record=on_record)
    write_records(result.records, args.out)
    write_json(args.out / "summary.json", result.summary)
    s = result.summary
    sys.stdout.write(
        f"{s['requests']} requests: hit ratio {s['hit_ratio']:.3f} (placement predicts "
        f"{s['predicted_hit_ratio']:.3f}, solver {s['solver']}); mean download "
        f"{s['mean_download_s']:.2f} s, p95 {s['p95_download_s']:.2f} s; origin "
        f"{s['origin_bytes'] / MIB:.1f} MiB, edges {s['edge_bytes'] / MIB:.1f} MiB; "
        f"{s['verified']}/{s['requests']} verified; {s['errors']} errors\n"
        f"results in {args.out}\n"
    )
    return 0


def _compare(args: argparse.Namespace) -> int:
    from testbed.experiment import ExperimentConfig, ExperimentError, Record
    from testbed.experiment_compare import CompareOptions, compare
    from testbed.experiment_report import table, write_report

    config = ExperimentConfig.load(args.config)
    try:
        capacities = tuple(int(c) for c in args.capacities.split(",") if c.strip())
    except ValueError as exc:
        raise ExperimentError(f"--capacities must be integers (MiB): {args.capacities}") from exc
    options = CompareOptions(
        solvers=tuple(s.strip() for s in args.solvers.split(",") if s.strip()),
        capacities_mib=capacities,
        profile=args.profile,
        edges=args.edges,
        zoo_dir=args.zoo.resolve() if args.zoo else None,
    )
    command = "trimcache " + shlex.join(_argv(args))
    total = config.requests * len(options.solvers) * len(options.capacities_mib)
    hits = 0
    with _progress() as progress:
        task = progress.add_task("requests", total=total, hits=0)

        def on_record(record: Record) -> None:
            nonlocal hits
            hits += record.hit
            progress.update(task, advance=1, hits=hits)

        def say(message: str) -> None:
            progress.console.print(f"[experiment] {message}", highlight=False)

        points = compare(config, options, args.out, say=say, on_record=on_record)
    write_report(args.out, command=command, figures_dir=args.figures)
    sys.stdout.write(table(points) + f"\nreport: {args.out / 'report.md'}\n")
    return 0


def _argv(args: argparse.Namespace) -> list[str]:
    """The compare command line as given (for the figures' captions)."""
    parts = ["experiment", "compare", str(args.config), "--out", str(args.out),
             "--solvers", args.solvers, "--capacities", args.capacities,
             "--profile", args.profile, "--edges", str(args.edges)]  # fmt: skip
    if args.zoo:
        parts += ["--zoo", str(args.zoo)]
    if args.figures:
        parts += ["--figures", str(args.figures)]
    return parts
