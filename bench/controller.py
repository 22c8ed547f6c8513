"""Controller costs at scale: route query latency and planning time, ``python -m bench.controller``.

For each (models, nodes) in the grid: a private ``redis-server``, a catalogue of synthetic
manifests (``--blocks`` blocks per model, the first ``--shared`` of them common to a family of
models, so parameter-block grouping has real work to do; no bytes exist, only manifests), nodes
registered with random confirmed holdings and unreachable URLs. Then, through the real app
(in-process ``TestClient``, real Redis):

- ``GET /v1/routes/{model}?area_id=...`` ``--routes`` times: median and p95 latency;
- ``POST /v1/placement:plan``: build the problem + solve + store, wall time (the pushes run in
  the background and fail fast: the nodes' URLs are closed ports); the solve time and hit ratio
  from the placement record.

Writes JSON lines (models, nodes, blocks, route_ms_p50/p95, plan_s, solve_s, hit_ratio,
parameter_blocks, git sha) to ``bench/results/controller.jsonl`` and prints a table.

``--wrk [--tree DIR ...]``: throughput instead, side by side for each source tree (default this
one; ``--tree /work/main --tree .`` compares main's code path with this one's), each as ONE
controller process (``python -m controller`` run from the tree) on loopback with its own
redis-server: the catalogue as above, ``--nodes`` nodes registered over HTTP, then ``wrk``
(Debian package ``wrk``) for ``--duration`` seconds over random (model, area) route requests
(requests/s, latency percentiles, non-2xx count); then ``--status-nodes`` more nodes registered
and ``GET /v1/status`` timed ``--status-requests`` times (median, p99). Rows (with the load
average) go to ``bench/results/controller_wrk.jsonl``.

``--replicas 1,2``: each tree is also run as that many controller processes on the one Redis
(stateless replicas, one leader), every replica loaded at once by its own ``wrk`` process (each
with ``--connections``): ``route_rps`` is their sum, ``route_rps_by_replica`` each one's, side by
side with the 1-replica row of the same run.

``--status-plans`` (with ``--wrk``; ``--duration 0`` skips wrk itself): ``/v1/status`` is also
timed while the controller plans and pushes over all those nodes, plan after plan
(:func:`_status_during_plans`), with ``--status-heartbeats`` heartbeats/s meanwhile; also
by the phase each request started in (``plan``: ``POST /v1/placement:plan`` running, ``push``:
its push round, ``other``: between them).

``--plan-nodes N[,N...]``: one plan over N simulated registrations (:func:`run_plan_case`):
plan time and its phases (read, problem, solve + replan decision, store), then the push round
to closed ports (its wall time, ``dispatch_s``, and this process's CPU seconds over it,
``dispatch_cpu_s``: the dispatcher's and the push workers'); rows to
``bench/results/controller_plan.jsonl``. With ``--tree DIR`` (repeat)
each size runs once per tree, side by side (another tree's code in a subprocess).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from core.digest import BlockId
from core.manifest import BlockRef, FileEntry, ModelManifest
from core.waiting import wait_until

REPO_ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench"


def _block_id(*parts: object) -> str:
    return hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()


def _manifest(model_id: str, family: int, *, blocks: int, shared: int) -> ModelManifest:
    files = []
    for i in range(blocks):
        owner = f"family{family}" if i < shared else model_id
        bid = BlockId(_block_id(owner, i))
        size = 1_000_000 + (int(bid[:6], 16) % 4_000_000)
        files.append(FileEntry(f"f{i:04d}.bin", size, bid, "file", (BlockRef(bid, 0, size),)))
    return ModelManifest(model_id, f"bench/{model_id}", "0" * 40, tuple(files))


def _start_redis(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found")
    sock = tmp / "redis.sock"
    proc = subprocess.Popen(
        [binary, "--port", "0", "--unixsocket", str(sock), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    url = f"unix://{sock}"

    def answers() -> bool:
        with redis.Redis.from_url(url) as client:
            return bool(client.ping())

    try:
        wait_until(answers, timeout_s=10.0, what="redis-server answers")
    except TimeoutError as exc:
        proc.kill()
        raise RuntimeError("redis-server did not start") from exc
    return proc, url


def run_case(n_models: int, n_nodes: int, args: argparse.Namespace) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from controller.app import create_app
    from controller.settings import Settings

    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="bench-controller-") as tmp:
        proc, url = _start_redis(Path(tmp))
        try:
            model_ids = [f"m{i:03d}" for i in range(n_models)]
            _load_model_catalogue(url, model_ids, args)
            settings = Settings(
                redis_url=url,
                origin_url="http://127.0.0.1:9",
                auth_token=TOKEN,
                auto_plan=False,
                solver=args.solver,
                push_timeout_s=5,
            )
            with TestClient(create_app(settings)) as client:
                client.headers["Authorization"] = f"Bearer {TOKEN}"  # node PUTs need it
                held = [rng.sample(model_ids, k=max(1, n_models // 4)) for _ in range(n_nodes)]
                _register(client, [f"edge-{n}" for n in range(n_nodes)], held, args)
                times = []
                for _ in range(args.routes):
                    model_id = rng.choice(model_ids)
                    area = f"area-edge-{rng.randrange(n_nodes)}"
                    started = time.perf_counter()
                    client.get(
                        f"/v1/routes/{model_id}", params={"area_id": area}
                    ).raise_for_status()
                    times.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                response = client.post(
                    "/v1/placement:plan", headers={"Authorization": f"Bearer {TOKEN}"}
                )
                response.raise_for_status()
                plan_s = time.perf_counter() - started
                placement = response.json()
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    times.sort()
    return {
        "bench": "controller",
        "solver": args.solver,
        "models": n_models,
        "nodes": n_nodes,
        "blocks_per_model": args.blocks,
        "route_ms_p50": round(statistics.median(times), 3),
        "route_ms_p95": round(times[int(0.95 * (len(times) - 1))], 3),
        "plan_s": round(plan_s, 3),
        "solve_s": round(placement.get("solve_seconds", 0.0), 4),
        "hit_ratio": round(placement.get("hit_ratio", 0.0), 4),
        "parameter_blocks": placement.get("problem", {}).get("parameter_blocks"),
        "git_sha": _git_sha(),
    }


def _load_model_catalogue(url: str, model_ids: list[str], args: argparse.Namespace) -> None:
    from controller.state import CatalogueEntry, RedisState

    state = RedisState(url)
    for i, model_id in enumerate(model_ids):
        manifest = _manifest(model_id, i % args.families, blocks=args.blocks, shared=args.shared)
        state.put_model(CatalogueEntry.of(manifest, requested_revision="main"))
    state.close()


def _register(
    http: Any, node_ids: list[str], held: list[list[str]], args: argparse.Namespace
) -> None:
    for n, (node_id, models) in enumerate(zip(node_ids, held, strict=True)):
        body = {
            "url": "http://127.0.0.1:9",
            "capacity_bytes": args.capacity_mb * 1_000_000,
            "position": [n * 300.0, 0.0],
            "models": models,
        }
        http.put(f"/v1/nodes/{node_id}", json=body).raise_for_status()


_WRK_SCRIPT = """
local paths = {%s}
math.randomseed(%d)
request = function()
  return wrk.format("GET", paths[math.random(#paths)])
end
"""


def _wrk(url: str, paths: list[str], work: Path, args: argparse.Namespace) -> dict[str, Any]:
    binary = shutil.which("wrk")
    if binary is None:
        raise SystemExit("wrk not found (Debian: apt-get install wrk)")
    script = work / "routes.lua"
    script.write_text(_WRK_SCRIPT % (",".join(json.dumps(p) for p in paths), args.seed))
    out = subprocess.run(
        [binary, "-t", str(args.wrk_threads), "-c", str(args.connections)]
        + ["-d", f"{args.duration}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    row: dict[str, Any] = {"route_rps": None, "non_2xx": 0}
    for line in out.splitlines():
        words = line.split()
        if line.startswith("Requests/sec:"):
            row["route_rps"] = float(words[1])
        elif line.startswith("Non-2xx"):
            row["non_2xx"] = int(words[-1])
        elif words and words[0] in ("50%", "99%"):
            row[f"route_latency_p{words[0][:-1]}"] = words[1]
        elif "requests in" in line:
            row["route_requests"] = int(words[0])
    return row


def _wrk_all(
    urls: list[str], paths: list[str], work: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """One ``wrk`` per controller replica, all at once; their requests/s summed."""
    from concurrent.futures import ThreadPoolExecutor

    dirs = [work / f"wrk-{i}" for i in range(len(urls))]
    for directory in dirs:
        directory.mkdir(exist_ok=True)
    with ThreadPoolExecutor(len(urls)) as pool:
        rows = list(pool.map(lambda u, d: _wrk(u, paths, d, args), urls, dirs))
    if len(rows) == 1:
        return rows[0]
    return {
        **rows[0],
        "route_rps": round(sum(float(r["route_rps"] or 0) for r in rows), 2),
        "route_rps_by_replica": [r["route_rps"] for r in rows],
        "non_2xx": sum(int(r["non_2xx"]) for r in rows),
        "route_requests": sum(int(r.get("route_requests", 0)) for r in rows),
        "route_latency_p50": [r.get("route_latency_p50") for r in rows],
        "route_latency_p99": [r.get("route_latency_p99") for r in rows],
    }


def run_wrk_case(tree: Path, args: argparse.Namespace, replicas: int = 1) -> dict[str, Any]:
    import sys

    import httpx

    from bench._net import free_port, stop_processes, wait_http

    rng = random.Random(args.seed)
    n_models, n_nodes = args.models[-1], args.nodes[-1]
    model_ids = [f"m{i:03d}" for i in range(n_models)]
    node_ids = [f"edge-{n}" for n in range(n_nodes)]
    held = [rng.sample(model_ids, k=max(1, n_models // 4)) for _ in node_ids]
    with tempfile.TemporaryDirectory(prefix="bench-controller-wrk-") as tmp:
        work = Path(tmp)
        procs: list[subprocess.Popen[bytes]] = []
        try:
            redis_port = free_port()
            ports = [free_port() for _ in range(replicas)]
            redis_bin = shutil.which("redis-server") or "redis-server"
            procs.append(
                subprocess.Popen(
                    [redis_bin, "--port", str(redis_port), "--save", "", "--appendonly", "no"],
                    stdout=subprocess.DEVNULL,
                )
            )
            redis_url = f"redis://127.0.0.1:{redis_port}/0"
            wait_until(lambda: _redis_answers(redis_url), timeout_s=10, what="redis answers")
            _load_model_catalogue(redis_url, model_ids, args)
            env = {
                **os.environ,
                "PYTHONPATH": "",
                "PYTHONWARNINGS": "ignore",
                "TRIMCACHE_LOG_LEVEL": "WARNING",
                "CONTROLLER_HOST": "127.0.0.1",
                "CONTROLLER_REDIS_URL": redis_url,
                "CONTROLLER_ORIGIN_URL": "http://127.0.0.1:9",
                "CONTROLLER_AUTO_PLAN": "false",
                "CONTROLLER_AUTH_TOKEN": TOKEN,
                "CONTROLLER_HEARTBEAT_EXPIRY_S": "600",
            }
            for i, port in enumerate(ports):
                with (work / f"controller-{i}.log").open("ab") as log:
                    procs.append(
                        subprocess.Popen(
                            [sys.executable, "-m", "controller"],
                            cwd=tree,
                            env={**env, "CONTROLLER_PORT": str(port)},
                            stdout=log,
                            stderr=subprocess.STDOUT,
                        )
                    )
            urls = [f"http://127.0.0.1:{port}" for port in ports]
            for replica_url in urls:
                wait_http(f"{replica_url}/healthz")
            url = urls[0]
            headers = {"Authorization": f"Bearer {TOKEN}"}
            with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
                _register(http, node_ids, held, args)
                paths = [f"/v1/routes/{m}?area_id=area-{n}" for m in model_ids for n in node_ids]
                for replica_url in urls:  # every route once: wrk measures answers, not first builds
                    for path in paths:
                        httpx.get(f"{replica_url}{path}", timeout=60).raise_for_status()
                load_before = os.getloadavg()
                row = _wrk_all(urls, paths, work, args) if args.duration > 0 else {"non_2xx": 0}
                load_after = os.getloadavg()
                more = [f"status-{n:04d}" for n in range(args.status_nodes - n_nodes)]
                _register(http, more, [[] for _ in more], args)
                listed = len(http.get("/v1/status").json()["nodes"])
                times = _status_times(http, args.status_requests)
                during = _status_during_plans(http, redis_url, args) if args.status_plans else {}
        finally:
            stop_processes(procs)
    times.sort()
    return {
        "bench": "controller_wrk",
        "tree": str(tree),
        "git_sha": _git_sha(tree),
        "replicas": replicas,
        "models": n_models,
        "nodes": n_nodes,
        "blocks_per_model": args.blocks,
        "distinct_routes": len(paths),
        "connections": args.connections,
        "wrk_threads": args.wrk_threads,
        "duration_s": args.duration,
        **row,
        "status_nodes": listed,
        "status_ms_p50": round(statistics.median(times), 2),
        "status_ms_p99": round(times[min(len(times) - 1, int(0.99 * len(times)))], 2),
        **during,
        "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in load_after],
    }


def _status_times(http: Any, count: int, starts: list[float] | None = None) -> list[float]:
    """Milliseconds of ``count`` sequential ``GET /v1/status`` (the body read, not parsed);
    ``starts`` gets each request's ``perf_counter()`` start."""
    times = []
    for _ in range(count):
        started = time.perf_counter()
        http.get("/v1/status").raise_for_status()
        times.append((time.perf_counter() - started) * 1000)
        if starts is not None:
            starts.append(started)
    return times


def _by_phase(
    times: list[float], starts: list[float], spans: list[tuple[str, float, float]]
) -> dict[str, dict[str, float | int]]:
    """The requests grouped by the phase of the plan cycle they started in (``spans``:
    (phase, start, end) in ``perf_counter()`` time; "other" outside every span): count, p50
    and p99 ms of each."""
    groups: dict[str, list[float]] = {}
    for ms, at in zip(times, starts, strict=True):
        phase = next((name for name, a, b in spans if a <= at < b), "other")
        groups.setdefault(phase, []).append(ms)
    out: dict[str, dict[str, float | int]] = {}
    for phase, values in sorted(groups.items()):
        values.sort()
        out[phase] = {
            "n": len(values),
            "p50": round(statistics.median(values), 2),
            "p99": round(values[min(len(values) - 1, int(0.99 * len(values)))], 2),
        }
    return out


def _status_during_plans(http: Any, redis_url: str, args: argparse.Namespace) -> dict[str, Any]:
    """``GET /v1/status`` timed while the controller plans and pushes over every registered
    node: plan cycles run back to back in a thread (each deletes ``ctl:placement`` so the plan
    is a first one, stored and pushed to every node, then ``POST /v1/placement:plan`` and
    waiting for the round's ``dispatch`` to be ``done``), optionally with ``--status-heartbeats``
    heartbeats/s re-sent for the registered nodes, while ``--status-requests`` requests are
    timed (median, p99 and the load average over that window)."""
    import threading

    import redis

    stop = threading.Event()
    rounds: list[float] = []
    plans: list[float] = []
    spans: list[tuple[str, float, float]] = []  # ("plan" | "push", start, end)
    beats = [0]
    # Heartbeats repeat each node's registration (an edge's usual, unchanged report).
    bodies = {
        n["node_id"]: {k: n[k] for k in ("url", "capacity_bytes", "position", "models")}
        for n in http.get("/v1/nodes").json()["nodes"]
    }
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:

        def cycles() -> None:
            while not stop.is_set():
                client.delete("ctl:placement")
                started = time.perf_counter()
                http.post("/v1/placement:plan").raise_for_status()
                planned = time.perf_counter()
                spans.append(("plan", started, planned))
                while not stop.is_set():
                    dispatch = client.hget("ctl:placement:status", "dispatch")
                    if dispatch and json.loads(dispatch).get("state") == "done":
                        rounds.append(time.perf_counter() - planned)
                        break
                    time.sleep(0.05)
                spans.append(("push", planned, time.perf_counter()))
                plans.append(planned - started)

        def heartbeats() -> None:
            import httpx

            gap = 1.0 / args.status_heartbeats
            with httpx.Client(base_url=str(http.base_url), headers=http.headers) as beat:
                next_at = time.monotonic()
                for node_id in itertools.cycle(list(bodies)):
                    next_at += gap  # a steady rate: a slow answer is caught up on
                    if stop.wait(max(0.0, next_at - time.monotonic())):
                        return
                    beat.put(f"/v1/nodes/{node_id}", json=bodies[node_id]).raise_for_status()
                    beats[0] += 1

        workers = [threading.Thread(target=cycles, daemon=True)]
        if args.status_heartbeats > 0:
            workers.append(threading.Thread(target=heartbeats, daemon=True))
        for worker in workers:
            worker.start()
        time.sleep(0.5)  # the first plan is being computed
        load_before = os.getloadavg()
        starts: list[float] = []
        times = _status_times(http, args.status_requests, starts)
        load_after = os.getloadavg()
        stop.set()
        for worker in workers:
            worker.join(timeout=600)
    phases = _by_phase(times, starts, spans)
    times.sort()
    return {
        "plan_status_by_phase": phases,
        "plan_status_ms_p50": round(statistics.median(times), 2),
        "plan_status_ms_p99": round(times[min(len(times) - 1, int(0.99 * len(times)))], 2),
        "plan_status_ms_max": round(times[-1], 2),
        "plan_cycles_s": [round(v, 2) for v in plans],
        "plan_rounds_s": [round(v, 2) for v in rounds],
        "plan_heartbeats": beats[0],
        "plan_loadavg": [round(v, 2) for v in load_before + load_after],
    }


def run_plan_case(n_nodes: int, args: argparse.Namespace) -> dict[str, Any]:
    """One plan over ``n_nodes`` simulated registrations (records written through
    ``RedisState.put_node``, no processes): the planner in-process on a private Redis, with the
    phase times it records (``ctl:plan:last`` ``timings_s``) and the push round to the nodes'
    URLs (a closed port: every push fails at once, so the round's time is the dispatcher's own
    cost: waits, plan bodies, push status writes)."""
    from controller.metrics import Metrics
    from controller.planner import Planner
    from controller.settings import Settings
    from controller.state import NodeRecord, RedisState

    rng = random.Random(args.seed)
    n_models = args.models[-1]
    model_ids = [f"m{i:03d}" for i in range(n_models)]
    with tempfile.TemporaryDirectory(prefix="bench-controller-plan-") as tmp:
        proc, url = _start_redis(Path(tmp))
        try:
            _load_model_catalogue(url, model_ids, args)
            state = RedisState(url)
            for n in range(n_nodes):
                record = NodeRecord(
                    node_id=f"edge-{n:04d}",
                    url="http://127.0.0.1:9",
                    capacity_bytes=args.capacity_mb * 1_000_000,
                    position=(n * 300.0, 0.0),
                    models=tuple(rng.sample(model_ids, k=max(1, n_models // 4))),
                )
                state.put_node(record, ttl_s=3600)
            settings = Settings(
                redis_url=url,
                origin_url="http://127.0.0.1:9",
                auto_plan=False,
                solver=args.solver,
                push_timeout_s=30,
            )
            planner = Planner(state, settings, metrics=Metrics())
            try:
                started = time.perf_counter()
                record_doc = planner.plan(trigger="bench")
                plan_s = time.perf_counter() - started
                cpu_before = time.process_time()
                finished = planner.wait_rounds(timeout_s=args.plan_timeout)
                round_s = time.perf_counter() - started - plan_s
                # This process's CPU over the round: the dispatcher and the push workers (this
                # thread only waits; Redis and the plan worker are other processes).
                round_cpu_s = time.process_time() - cpu_before
                attempt = state.get_plan_attempt() or {}
                placement = state.get_placement() or {}
            finally:
                planner.close()
                state.close()
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    pushes = placement.get("push", {})
    statuses: dict[str, int] = {}
    for push in pushes.values():
        statuses[push.get("status")] = statuses.get(push.get("status"), 0) + 1
    return {
        "bench": "controller_plan",
        "solver": args.solver,
        "models": n_models,
        "nodes": n_nodes,
        "blocks_per_model": args.blocks,
        "version": record_doc.get("version"),
        "plan_s": round(plan_s, 3),
        "timings_s": attempt.get("timings_s"),
        "dispatch_s": round(round_s, 3),
        "dispatch_cpu_s": round(round_cpu_s, 3),
        "dispatch_done": finished and (placement.get("dispatch") or {}).get("state") == "done",
        "push_statuses": statuses,
        "hit_ratio": round(placement.get("hit_ratio", 0.0), 4),
        "git_sha": _git_sha(),
        "loadavg": [round(v, 2) for v in os.getloadavg()],
    }


def run_plans(args: argparse.Namespace) -> None:
    """``--plan-nodes``: every size, for each ``--tree`` (default this one; another tree's
    controller code runs in a subprocess with that tree first on ``sys.path``, this bench
    measuring it)."""
    import logging
    import sys

    logging.disable(logging.WARNING)  # one line per failed push, as in the subprocess
    trees = [t.resolve() for t in (args.tree or [REPO_ROOT])]
    rows = []
    with (args.out / "controller_plan.jsonl").open("a") as out:
        for n_nodes in args.plan_nodes:
            for tree in trees:
                if tree == REPO_ROOT:
                    row = {**run_plan_case(n_nodes, args), "tree": str(tree)}
                else:
                    # ``-c`` (not the script's path): sys.path[0] is then the tree (cwd).
                    bench_argv = ["bench", "--plan-one", "1", "--plan-nodes", str(n_nodes)]
                    for name in ("blocks", "shared", "families", "capacity_mb", "solver", "seed"):
                        bench_argv += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
                    bench_argv += ["--models", str(args.models[-1])]
                    bench_argv += ["--plan-timeout", str(args.plan_timeout)]
                    script = str(Path(__file__).resolve())
                    code = f"import runpy, sys; sys.argv = {bench_argv!r}; "
                    code += f"runpy.run_path({script!r}, run_name='__main__')"
                    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONWARNINGS": "ignore"}
                    done = subprocess.run(
                        [sys.executable, "-c", code],
                        env=env,
                        capture_output=True,
                        text=True,
                        check=True,
                        cwd=tree,
                    )
                    row = {**json.loads(done.stdout.splitlines()[-1]), "tree": str(tree)}
                row["git_sha"] = _git_sha(tree)
                rows.append(row)
                out.write(json.dumps(row, sort_keys=True) + "\n")
    print(
        f"{'tree':<26} {'sha':<8} {'nodes':>5} {'models':>6} {'plan s':>7} {'dispatch s':>10} "
        f"{'cpu s':>6}  phases s / pushes / load"
    )
    for r in rows:
        print(
            f"{r['tree'][-26:]:<26} {r['git_sha']:<8} {r['nodes']:>5} {r['models']:>6} "
            f"{r['plan_s']:>7} {r['dispatch_s']:>10} {r['dispatch_cpu_s']:>6}  "
            f"{r['timings_s']} {r['push_statuses']} {r['loadavg']}"
        )


def _redis_answers(url: str) -> bool:
    import redis

    try:
        with redis.Redis.from_url(url) as client:
            return bool(client.ping())
    except redis.ConnectionError:
        return False


def run_wrk(args: argparse.Namespace) -> None:
    trees = [t.resolve() for t in (args.tree or [REPO_ROOT])]
    rows = []
    with (args.out / "controller_wrk.jsonl").open("a") as out:
        for tree in trees:
            for replicas in args.replicas:
                row = run_wrk_case(tree, args, replicas)
                rows.append(row)
                out.write(json.dumps(row, sort_keys=True) + "\n")
    print(
        f"{'tree':<26} {'sha':<8} {'replicas':>8} {'route req/s':>11} {'p50':>8} {'p99':>8} "
        f"{'non2xx':>6} "
        f"{'status nodes':>12} {'p50 ms':>7} {'p99 ms':>7}  load"
    )
    for r in rows:
        print(
            f"{r['tree'][-26:]:<26} {r['git_sha']:<8} {r['replicas']:>8} "
            f"{r.get('route_rps')!s:>11} "
            f"{_first(r.get('route_latency_p50')):>8} {_first(r.get('route_latency_p99')):>8} "
            f"{r['non_2xx']:>6} {r['status_nodes']:>12} {r['status_ms_p50']:>7} "
            f"{r['status_ms_p99']:>7}  {r['loadavg_before']}"
        )
    for r in rows:
        if "plan_status_ms_p99" in r:
            print(
                f"{r['tree'][-26:]:<26} status while planning + pushing: "
                f"p50 {r['plan_status_ms_p50']} ms, p99 {r['plan_status_ms_p99']} ms, "
                f"max {r['plan_status_ms_max']} ms; plans {r['plan_cycles_s']} s, "
                f"rounds {r['plan_rounds_s']} s, heartbeats {r['plan_heartbeats']}, "
                f"load {r['plan_loadavg']}; by phase {r['plan_status_by_phase']}"
            )


def _first(value: Any) -> str:
    """A latency cell: one replica's, or the first replica's of several."""
    if isinstance(value, list):
        value = value[0] if value else None
    return "?" if value is None else str(value)


def _git_sha(tree: Path = REPO_ROOT) -> str:
    result = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=tree
    )
    return result.stdout.strip()


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=_ints, default=[10, 50])
    parser.add_argument("--nodes", type=_ints, default=[3, 10])
    parser.add_argument("--blocks", type=int, default=100, help="blocks per model")
    parser.add_argument("--shared", type=int, default=80, help="of which shared in a family")
    parser.add_argument("--families", type=int, default=3)
    parser.add_argument("--capacity-mb", type=int, default=1000)
    parser.add_argument("--routes", type=int, default=200)
    parser.add_argument("--solver", default="trimcaching-gen")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    parser.add_argument("--wrk", action="store_true", help="route req/s with wrk (docstring)")
    parser.add_argument("--tree", type=Path, action="append", help="source tree (repeatable)")
    parser.add_argument("--duration", type=int, default=10, help="wrk seconds")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument(
        "--replicas", type=_ints, default=[1], help="controller replica counts, e.g. 1,2 (--wrk)"
    )
    parser.add_argument("--status-nodes", type=int, default=1000)
    parser.add_argument("--status-requests", type=int, default=200)
    parser.add_argument(
        "--plan-nodes", type=_ints, help="plan over N simulated nodes (comma list; docstring)"
    )
    parser.add_argument("--plan-timeout", type=float, default=600.0, help="push round bound, s")
    parser.add_argument("--plan-one", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--status-plans",
        action="store_true",
        help="also time /v1/status while plans run back to back (--wrk; --duration 0: no wrk)",
    )
    parser.add_argument(
        "--status-heartbeats", type=float, default=0.0, help="heartbeats/s meanwhile"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.wrk:
        run_wrk(args)
        return
    if args.plan_one:  # one tree's row of run_plans (its subprocess): JSON on stdout
        import logging

        logging.disable(logging.WARNING)
        print(json.dumps(run_plan_case(args.plan_nodes[0], args)))
        return
    if args.plan_nodes:
        run_plans(args)
        return
    rows = []
    with (args.out / "controller.jsonl").open("a") as out:
        for n_models, n_nodes in itertools.product(args.models, args.nodes):
            row = run_case(n_models, n_nodes, args)
            rows.append(row)
            out.write(json.dumps(row, sort_keys=True) + "\n")
    header = f"{'models':>6} {'nodes':>5} {'route p50 ms':>12} {'p95 ms':>8} {'plan s':>7} "
    print(header + f"{'solve s':>8} {'PBs':>5} {'hit':>6}")
    for r in rows:
        print(
            f"{r['models']:>6} {r['nodes']:>5} {r['route_ms_p50']:>12} {r['route_ms_p95']:>8} "
            f"{r['plan_s']:>7} {r['solve_s']:>8} {r['parameter_blocks']!s:>5} {r['hit_ratio']:>6}"
        )


if __name__ == "__main__":
    main()
