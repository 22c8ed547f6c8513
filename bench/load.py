"""Concurrent clients against the running testbed: ``python -m bench.load [--clients 10,50,100]``.

Starts the test-profile testbed (Redis, origin, controller, three edge nodes as real processes on
loopback), then for each N runs one wave of N client **processes** (not threads): each imports the
SDK, reports ready, and on a common start signal fetches one model of the catalogue (round-robin,
so siblings overlap) into its own empty device cache through the controller's routes, then checks
every file it wrote against the zoo's copy by sha256. Per wave: p50/p99 fetch time, errors (any
fetch that raised or whose files differ), byte-identical files, and the edges' HTTP requests/s over
the wave (the edges' own ``requests`` counters, ``/v1/stats``). Bounded: one fetch per process, a
per-wave timeout. Writes JSON lines to ``bench/results/load.jsonl``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _worker(job: dict[str, Any]) -> int:
    """One client process: ready → wait for ``go`` on stdin → fetch → verify → one JSON line."""
    from client import Client

    sys.stdout.write("ready\n")
    sys.stdout.flush()
    if sys.stdin.readline().strip() != "go":
        return 1
    out: dict[str, Any] = {"model_id": job["model_id"], "ok": False}
    start = time.perf_counter()
    try:
        with Client(
            controller_url=job["controller_url"],
            cache_dir=job["cache_dir"],
            auth_token=job["auth_token"],
        ) as client:
            fetched = client.fetch(job["model_id"], load=False)
        out["seconds"] = time.perf_counter() - start
        out["bytes_by_source"] = fetched.report.get("bytes_by_source", {})
        zoo_repo = Path(job["zoo_repo"])
        files = [p.relative_to(fetched.path) for p in fetched.path.rglob("*") if p.is_file()]
        compared = [f for f in files if (zoo_repo / f).is_file()]
        mismatched = [
            str(f) for f in compared if _sha256(fetched.path / f) != _sha256(zoo_repo / f)
        ]
        out["files_checked"] = len(compared)
        out["mismatched_files"] = mismatched
        if not compared:
            out["error"] = f"no fetched file has a counterpart in {zoo_repo}"
        out["ok"] = bool(compared) and not mismatched
    except Exception as exc:  # every failure is a counted result, never a crash of the wave
        out["seconds"] = time.perf_counter() - start
        out["error"] = f"{type(exc).__name__}: {exc}"
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    return 0


def _edge_requests(edge_urls: list[str]) -> int:
    total = 0
    for url in edge_urls:
        total += int(httpx.get(f"{url}/v1/stats", timeout=10).json()["requests"])
    return total


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[k]


def _wave(
    state: dict[str, Any], models: list[dict[str, Any]], n: int, work: Path, timeout_s: float
) -> dict[str, Any]:
    procs: list[subprocess.Popen[str]] = []
    env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1", "OMP_NUM_THREADS": "1"}
    try:
        for i in range(n):
            model = models[i % len(models)]
            job = {
                "model_id": model["model_id"],
                "controller_url": state["controller_url"],
                "auth_token": state["auth_token"],
                "cache_dir": str(work / f"n{n}-client{i}"),
                "zoo_repo": str(Path(state["zoo_dir"]) / "repos" / model["repo_id"]),
            }
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "bench.load", "--worker", json.dumps(job)],
                    cwd=REPO_ROOT,
                    env=env,
                    text=True,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                )  # fmt: skip
            )
        for proc in procs:  # every process has imported the SDK before the clock starts
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError("a client process did not start")
        before = _edge_requests(state["edge_urls"])
        start = time.perf_counter()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        for proc in procs:
            try:
                stdout, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
                lines = [line for line in stdout.splitlines() if line.startswith("{")]
                no_result = {"ok": False, "error": "the client process wrote no result"}
                results.append(json.loads(lines[-1]) if lines else no_result)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                results.append({"ok": False, "error": f"timed out after {timeout_s:.0f} s"})
        wall = time.perf_counter() - start
        requests = _edge_requests(state["edge_urls"]) - before
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    seconds = [r["seconds"] for r in results if r.get("ok")]
    return {
        "clients": n,
        "ok": sum(1 for r in results if r.get("ok")),
        "errors": sum(1 for r in results if not r.get("ok")),
        "error_samples": sorted({r["error"] for r in results if r.get("error")})[:3],
        "p50_s": statistics.median(seconds) if seconds else float("nan"),
        "p99_s": _percentile(seconds, 0.99),
        "wall_s": wall,
        "edge_requests": requests,
        "edge_requests_per_s": requests / wall if wall else 0.0,
        "origin_bytes": sum(
            sum(
                v
                for k, v in r.get("bytes_by_source", {}).items()
                if k.rstrip("/") == state["origin_url"].rstrip("/")
            )
            for r in results
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__)
    parser.add_argument("--clients", default="10,50,100", help="comma-separated wave sizes")
    parser.add_argument("--timeout", type=float, default=300.0, help="bound per wave, seconds")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(json.loads(args.worker))
    try:
        sizes = [int(x) for x in args.clients.split(",")]
    except ValueError:
        parser.error(f"--clients must be comma-separated integers, got {args.clients!r}")
    if any(n < 1 for n in sizes):
        parser.error("--clients values must be at least 1")

    from testbed import launcher

    work = Path(tempfile.mkdtemp(prefix="bench-load-"))
    state_dir = work / "testbed"
    rows: list[dict[str, Any]] = []
    try:
        state = launcher.up(
            launcher.LaunchOptions(state_dir=state_dir, profile="test", controller_port=0),
            on_progress=lambda m: sys.stderr.write(m + "\n"),
        )
        catalogue = httpx.get(f"{state['controller_url']}/v1/models", timeout=10).json()
        models: list[dict[str, Any]] = catalogue["models"]
        for n in sizes:
            sys.stderr.write(f"wave: {n} client processes\n")
            row = _wave(state, models, n, work, args.timeout)
            rows.append(row)
            for i in range(n):
                shutil.rmtree(work / f"n{n}-client{i}", ignore_errors=True)
    finally:
        launcher.down(state_dir)
        shutil.rmtree(work, ignore_errors=True)

    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "load.jsonl", "a") as fh:
        for row in rows:
            fh.write(json.dumps({"bench": "load", **row}) + "\n")
    print(f"{'clients':>7} {'ok':>4} {'errors':>6} {'p50 s':>7} {'p99 s':>7} {'edge req/s':>10}")
    for r in rows:
        print(
            f"{r['clients']:>7} {r['ok']:>4} {r['errors']:>6} {r['p50_s']:>7.2f} "
            f"{r['p99_s']:>7.2f} {r['edge_requests_per_s']:>10.0f}"
        )
        for sample in r["error_samples"]:
            print(f"        error: {sample}")
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
