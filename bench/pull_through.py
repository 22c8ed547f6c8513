"""Pull-through throughput: ``python -m bench.pull_through [--repeats N]``.

Real processes on loopback: redis-server, the origin, the controller and two edge nodes. The
test zoo is indexed; ``bert-sst2`` is placed on edge-1 only. Then ``model.safetensors`` is
downloaded with ``curl -o /dev/null`` through the Hub API (``resolve``):

- ``held``: from edge-1, which holds every block;
- ``peer``: from edge-2, which holds none of it and pulls every block from edge-1;
- ``origin``: ``bert-question`` (same size, held by no edge) from edge-2, pulled from the origin;
- ``held-py``: ``held`` again, received and sha256-hashed by one Python thread with httpx (the
  floor of any verifying Python receiver, which pull-through is).

Prints MB/s (10^6 bytes/s, median and best of ``--repeats``) and the CPU seconds per GB that
the services (origin, controller, edges) spent, which a busy shared machine does not distort;
writes JSON lines to ``bench/results/pull_through.jsonl``.
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

from bench._net import free_port, stop_processes, wait_http
from core.waiting import wait_until

REPO_ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"


def _curl(url: str) -> tuple[int, float]:
    cmd = ["curl", "-s", "-f", "-o", "/dev/null", "-w", "%{size_download} %{time_total}", url]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()
    return int(out[0]), float(out[1])


def _httpx_sha256(url: str) -> tuple[int, float]:
    """The same download received and hashed by one Python thread (what any verifying
    Python receiver pays, pull-through included)."""
    digest = hashlib.sha256()
    size = 0
    start = time.perf_counter()
    with httpx.stream("GET", url, timeout=60, headers={"Accept-Encoding": "identity"}) as r:
        for chunk in r.iter_raw(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, time.perf_counter() - start


def _cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds used so far by these processes (Linux ``/proc``)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


def _start(
    procs: list[subprocess.Popen[bytes]], args: list[str], env: dict[str, str], log: Path
) -> None:
    with log.open("ab") as fh:
        full_env = {**os.environ, **env, "PYTHONWARNINGS": "ignore"}
        procs.append(
            subprocess.Popen(args, cwd=REPO_ROOT, env=full_env, stdout=fh, stderr=subprocess.STDOUT)
        )


def run(repeats: int) -> list[dict[str, Any]]:
    from testbed.zoo import ensure_test_zoo

    zoo = ensure_test_zoo()
    work = Path(tempfile.mkdtemp(prefix="bench-pull-"))
    procs: list[subprocess.Popen[bytes]] = []
    py = sys.executable
    try:
        redis_port = free_port()
        redis = shutil.which("redis-server") or "redis-server"
        _start(procs, [redis, "--port", str(redis_port), "--save", ""], {}, work / "redis.log")
        origin_port, controller_port = free_port(), free_port()
        origin = f"http://127.0.0.1:{origin_port}"
        controller = f"http://127.0.0.1:{controller_port}"
        _start(
            procs,
            [py, "-m", "testbed.cli", "origin", "serve", "--root", str(zoo)]
            + ["--port", str(origin_port)],
            {},
            work / "origin.log",
        )
        wait_http(f"{origin}/healthz")
        _start(
            procs,
            [py, "-m", "testbed.cli", "controller", "serve", "--port", str(controller_port)],
            {
                "CONTROLLER_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
                "CONTROLLER_ORIGIN_URL": origin,
                "CONTROLLER_AUTO_PLAN": "false",
            },
            work / "controller.log",
        )
        wait_http(f"{controller}/healthz")
        for model_id in ("bert-sst2", "bert-question"):
            body = {"model_id": model_id, "repo_id": f"trimcache-zoo/{model_id}"}
            httpx.post(f"{controller}/v1/models", json=body, timeout=300).raise_for_status()
        edges = []
        for node_id in ("edge-1", "edge-2"):
            port = free_port()
            env = {
                "EDGE_NODE_ID": node_id,
                "EDGE_PORT": str(port),
                "EDGE_DATA_DIR": str(work / node_id),
                "EDGE_CONTROLLER_URL": controller,
                "EDGE_ORIGIN_URL": origin,
                "EDGE_AUTH_TOKEN": TOKEN,
                "EDGE_HEARTBEAT_INTERVAL_S": "0.3",
                "EDGE_DURABLE": "false",
            }
            _start(procs, [py, "-m", "edge_node"], env, work / f"{node_id}.log")
            edges.append(f"http://127.0.0.1:{port}")
        for url in edges:
            wait_http(f"{url}/healthz")
        manifest = httpx.get(f"{controller}/v1/models/bert-sst2").json()["manifest"]
        plan = {
            "schema": "trimcache.edge-plan/v1",
            "version": 1,
            "manifests": [manifest],
            "peers": {},
            "origin_url": origin,
        }
        headers = {"Authorization": f"Bearer {TOKEN}"}
        accepted = httpx.put(f"{edges[0]}/v1/plan", json=plan, headers=headers, timeout=60)
        accepted.raise_for_status()  # 202: the edge applies the plan in the background
        plan_id = accepted.json()["plan_id"]
        wait_until(
            lambda: (
                (s := httpx.get(f"{edges[0]}/v1/plan", timeout=5).json())["plan_id"] == plan_id
                and s["state"] == "applied"
            ),
            timeout_s=300,
            what="plan applied on the first edge",
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            route = httpx.get(f"{controller}/v1/routes/bert-sst2").json()
            if edges[0] in {s["url"] for s in route["sources"]}:
                break
            time.sleep(0.1)
        held_url = f"{edges[0]}/trimcache-zoo/bert-sst2/resolve/main/model.safetensors"
        cases = {
            "held": held_url,
            "peer": f"{edges[1]}/trimcache-zoo/bert-sst2/resolve/main/model.safetensors",
            "origin": f"{edges[1]}/trimcache-zoo/bert-question/resolve/main/model.safetensors",
        }
        rows = []
        runs = [(case, url, _curl) for case, url in cases.items()]
        runs.append(("held-py", held_url, _httpx_sha256))
        # Everything but redis: origin, controller, both edges.
        services = [p.pid for p in procs[1:]]
        for case, url, download in runs:
            download(url)  # warm-up: page cache, connections, catalogue lookups
            rates = []
            size = 0
            cpu_before = _cpu_s(services)
            for _ in range(repeats):
                size, seconds = download(url)
                rates.append(size / seconds / 1e6)
            cpu_per_gb = (_cpu_s(services) - cpu_before) / (repeats * size / 1e9)
            rows.append(
                {
                    "bench": "pull_through",
                    "case": case,
                    "bytes": size,
                    "repeats": repeats,
                    "median_mb_s": round(statistics.median(rates), 1),
                    "best_mb_s": round(max(rates), 1),
                    "service_cpu_s_per_gb": round(cpu_per_gb, 2),
                }
            )
        stats = httpx.get(f"{edges[1]}/v1/stats").json()
        for row in rows:
            row["edge2_physical_bytes"] = stats["physical_bytes"]
        return rows
    finally:
        stop_processes(procs)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows = run(args.repeats)
    out = REPO_ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    with (out / "pull_through.jsonl").open("a") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    lines = [f"{'case':8} {'bytes':>10} {'median MB/s':>12} {'best MB/s':>10} {'CPU s/GB':>9}"]
    for row in rows:
        lines.append(
            f"{row['case']:8} {row['bytes']:>10} {row['median_mb_s']:>12} {row['best_mb_s']:>10}"
            f" {row['service_cpu_s_per_gb']:>9}"
        )
    lines.append(f"edge-2 physical_bytes after: {rows[0]['edge2_physical_bytes']}")
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
