"""`make bench` / ``python -m bench [--out DIR] [--only NAME,...]``: run every benchmark in one go.

Each benchmark runs as its own subprocess with its defaults (so one failing does not stop the
rest); its stdout table goes to ``OUT/<name>.txt`` next to the JSON lines it writes itself, and
``OUT/summary.md`` collects every table with the command that produced it and how long it took.
The capacity sweep of the simulator (``trimcache sim``) adds the hit-ratio plot.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from core.fsutil import atomic_write_text

REPO_ROOT = Path(__file__).resolve().parent.parent

# name -> command (run from the repo root with this interpreter).
BENCHMARKS: dict[str, list[str]] = {
    "blocks": ["-m", "bench.blocks"],
    "origin": ["-m", "bench.origin"],
    "edge": ["-m", "bench.edge"],
    "client": ["-m", "bench.client"],
    "placement": ["-m", "bench.placement"],
    "controller": ["-m", "bench.controller"],
    # 10, 50 and 100 concurrent client processes against the test-profile testbed.
    "load": ["-m", "bench.load"],
    # The delay solvers on fewer instances than the full run (python -m bench.delay: 30 each),
    # so `make bench` stays bounded (a few minutes on 2 cores).
    "delay": [
        "-m", "bench.delay", "--tiny-seeds", "0-9", "--medium-seeds", "0-4",
        "--marl-seeds", "0-2", "--marl-episodes", "30",
    ],
    "sim": [
        "-m", "testbed.cli", "sim", "--sweep", "capacity", "--sharing", "0.75",
        "--seeds", "0-1", "--out", "bench/results/figures",
    ],
}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    parser.add_argument("--only", help="comma-separated subset of: " + ",".join(BENCHMARKS))
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    sections = ["# TrimCache benchmarks\n"]
    failed = []
    for name in names:
        cmd = [sys.executable, *BENCHMARKS[name]]
        shown = "python " + " ".join(BENCHMARKS[name])
        sys.stdout.write(f"== {name}: {shown}\n")
        sys.stdout.flush()
        start = time.monotonic()
        proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
        seconds = time.monotonic() - start
        atomic_write_text(out / f"{name}.txt", proc.stdout + proc.stderr)
        sys.stdout.write(proc.stdout)
        status = "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
        if proc.returncode:
            failed.append(name)
            sys.stdout.write(proc.stderr[-2000:])
        table = proc.stdout.strip()
        header = f"## {name}\n\n`{shown}` — {status}, {seconds:.0f} s"
        sections.append(f"{header}\n\n```\n{table}\n```\n")
    atomic_write_text(out / "summary.md", "\n".join(sections))
    sys.stdout.write(f"summary: {out / 'summary.md'}\n")
    if failed:
        sys.stdout.write(f"failed: {', '.join(failed)}\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
