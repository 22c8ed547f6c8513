"""Plan pushes with one hung edge among three: ``python -m bench.plan_push [--tree DIR ...]``.

For each source tree given (default: this one; e.g. ``--tree /work/main --tree .`` compares
the code of main with this checkout in one run), real processes on loopback, started from that
tree (``python -m`` with the tree as working directory): redis-server, the origin serving a
small synthetic zoo (three models sharing a base), a controller (no automatic planning) and two
real edge nodes far apart (each serves its own area). A third registered node is *hung*: a
socket that accepts TCP connections and never answers. Then ``POST /v1/placement:plan`` and:

- ``plan_s``: until the plan request answered;
- ``others_applied_s``: until both real edges report the new version applied
  (``GET /v1/plan``), from the same start;
- the hung node's push status once the round ended.

Each tree runs with the hung node first (``edge-0``) and last (``edge-9``) in the order of
node ids, ``--repeats`` times. Prints a table and writes JSON lines to
``bench/results/plan_push.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from safetensors.numpy import save_file

from bench._net import free_port, wait_http
from core.waiting import wait_until

REPO_ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"
MODELS = ("m-a", "m-b", "m-c")


def _zoo(root: Path, *, base_mb: int) -> Path:
    """Three models sharing a ``base_mb`` MB base, each with a head of its own."""
    rng = np.random.default_rng(0)
    rows = base_mb * (1 << 20) // (4 * 256 * 4)
    base = {
        f"layer.{i}.weight": rng.standard_normal((rows, 256)).astype(np.float32) for i in range(4)
    }
    for name in MODELS:
        repo = root / "repos" / "bench" / name
        repo.mkdir(parents=True)
        tensors = dict(base)
        tensors[f"head.{name}.weight"] = rng.standard_normal((512, 256)).astype(np.float32)
        save_file(tensors, str(repo / "model.safetensors"))
        (repo / "config.json").write_text(json.dumps({"model_type": "bert", "name": name}))
    return root


def _git_sha(tree: Path) -> str:
    out = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return out.stdout.strip() or "?"


class Stack:
    """The processes of one run, started from ``tree``."""

    def __init__(self, tree: Path, work: Path, zoo: Path, *, stall_s: float) -> None:
        self.tree, self.work = tree, work
        self.procs: list[subprocess.Popen[bytes]] = []
        redis_port = free_port()
        redis = shutil.which("redis-server") or "redis-server"
        self._start([redis, "--port", str(redis_port), "--save", ""], {}, "redis")
        origin_port, controller_port = free_port(), free_port()
        self.origin = f"http://127.0.0.1:{origin_port}"
        self.controller = f"http://127.0.0.1:{controller_port}"
        py = sys.executable
        self._start(
            [py, "-m", "testbed.cli", "origin", "serve", "--root", str(zoo)]
            + ["--port", str(origin_port)],
            {},
            "origin",
        )
        wait_http(f"{self.origin}/healthz")
        self._start(
            [py, "-m", "testbed.cli", "controller", "serve", "--port", str(controller_port)],
            {
                "CONTROLLER_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
                "CONTROLLER_ORIGIN_URL": self.origin,
                "CONTROLLER_AUTO_PLAN": "false",
                "CONTROLLER_AUTH_TOKEN": TOKEN,
                "CONTROLLER_PUSH_STALL_S": str(stall_s),
                "CONTROLLER_HEARTBEAT_EXPIRY_S": "600",
            },
            "controller",
        )
        wait_http(f"{self.controller}/healthz")
        self.http = httpx.Client(
            base_url=self.controller, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=600
        )
        for model_id in MODELS:
            body = {"model_id": model_id, "repo_id": f"bench/{model_id}"}
            self.http.post("/v1/models", json=body).raise_for_status()
        self.edges: dict[str, str] = {}
        for node_id, x_m in (("edge-1", 5000), ("edge-2", 10000)):
            port = free_port()
            env = {
                "EDGE_NODE_ID": node_id,
                "EDGE_PORT": str(port),
                "EDGE_DATA_DIR": str(work / node_id),
                "EDGE_CONTROLLER_URL": self.controller,
                "EDGE_ORIGIN_URL": self.origin,
                "EDGE_AUTH_TOKEN": TOKEN,
                "EDGE_ALLOWED_HOSTS": "127.0.0.1",
                "EDGE_HEARTBEAT_INTERVAL_S": "0.3",
                "EDGE_POSITION_X_M": str(x_m),
                "EDGE_DURABLE": "false",
            }
            self._start([py, "-m", "edge_node"], env, node_id)
            self.edges[node_id] = f"http://127.0.0.1:{port}"
        for url in self.edges.values():
            wait_http(f"{url}/healthz")
        wait_until(
            lambda: (
                {n["node_id"] for n in self.http.get("/v1/nodes").json()["nodes"]}
                >= set(self.edges)
            ),
            timeout_s=30,
            what="edges registered",
        )

    def _start(self, args: list[str], env: dict[str, str], name: str) -> None:
        with (self.work / f"{name}.log").open("ab") as fh:
            full_env = {**os.environ, **env, "PYTHONWARNINGS": "ignore", "PYTHONPATH": ""}
            self.procs.append(
                subprocess.Popen(
                    args, cwd=self.tree, env=full_env, stdout=fh, stderr=subprocess.STDOUT
                )
            )

    def close(self) -> None:
        self.http.close()
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def _applied_version(url: str) -> int | None:
    status = httpx.get(f"{url}/v1/plan", timeout=5).json()
    version = status.get("version")
    return int(version) if status.get("status") == "applied" and version is not None else None


def one_run(stack: Stack, hung_id: str) -> dict[str, Any]:
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(64)
    try:
        body = {"url": f"http://127.0.0.1:{hung.getsockname()[1]}", "capacity_bytes": None}
        stack.http.put(f"/v1/nodes/{hung_id}", json=body).raise_for_status()
        answer: dict[str, Any] = {}

        def post() -> None:
            response = stack.http.post("/v1/placement:plan")
            answer["plan_s"] = time.monotonic() - start
            answer["response"] = response

        start, wall = time.monotonic(), time.time()
        poster = threading.Thread(target=post)
        poster.start()

        # Fresh edges: the first version either reports applied is this plan's.
        def both_applied() -> list[int] | None:
            versions = [_applied_version(u) for u in stack.edges.values()]
            return [v for v in versions if v is not None] if None not in versions else None

        applied = wait_until(
            both_applied, timeout_s=600, interval_s=0.02, what="both edges applied"
        )
        applied_s = time.monotonic() - start
        poster.join(timeout=600)
        response = answer["response"]
        response.raise_for_status()
        version = int(response.json()["version"])
        assert set(applied) == {version}, (applied, version)
        plan_s = answer["plan_s"]

        def round_over() -> dict[str, Any] | None:
            placement: dict[str, Any] = stack.http.get("/v1/placement").json()
            status = placement["push"].get(hung_id, {}).get("status")
            return placement if status not in (None, "pending", "pushing") else None

        placement = wait_until(round_over, timeout_s=600, what="hung push ended")
        hung_status = placement["push"][hung_id]
    finally:
        hung.close()
    stack.http.delete(f"/v1/nodes/{hung_id}")
    return {
        "hung_node": hung_id,
        "plan_s": round(plan_s, 3),
        "others_applied_s": round(applied_s, 3),
        "hung_status": hung_status.get("status"),
        "hung_code": hung_status.get("code"),
        # When each push started (s after the plan request), as the controller recorded it.
        "push_started_s": {
            n: round(float(p.get("at", wall)) - wall, 3)
            for n, p in sorted(placement["push"].items())
        },
    }


def run(trees: list[Path], *, repeats: int, stall_s: float, base_mb: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-plan-push-") as tmp:
        zoo = _zoo(Path(tmp) / "zoo", base_mb=base_mb)
        for index, tree in enumerate(trees):
            for hung_id in ("edge-0", "edge-9"):
                for repeat in range(repeats):
                    work = Path(tmp) / f"run-{index}-{hung_id}-{repeat}"
                    work.mkdir()
                    stack = Stack(tree, work, zoo, stall_s=stall_s)
                    try:
                        row = one_run(stack, hung_id)
                    finally:
                        stack.close()
                    row.update(
                        tree=str(tree),
                        git_sha=_git_sha(tree),
                        repeat=repeat,
                        stall_s=stall_s,
                        base_mb=base_mb,
                        load_avg=round(os.getloadavg()[0], 2),
                    )
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, action="append", help="source tree (repeatable)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--stall-s", type=float, default=10.0, help="CONTROLLER_PUSH_STALL_S")
    parser.add_argument("--base-mb", type=int, default=16, help="size of the shared base")
    args = parser.parse_args(argv)
    trees = [t.resolve() for t in (args.tree or [REPO_ROOT])]
    rows = run(trees, repeats=args.repeats, stall_s=args.stall_s, base_mb=args.base_mb)
    out = REPO_ROOT / "bench" / "results" / "plan_push.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    print(f"\n{'tree':<28} {'hung':<7} {'plan_s (median)':>16} {'others_applied_s':>17}  hung")
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["tree"], row["hung_node"]), []).append(row)
    for (tree, hung_id), group in groups.items():
        plan = statistics.median(r["plan_s"] for r in group)
        applied = statistics.median(r["others_applied_s"] for r in group)
        statuses = ",".join(sorted({str(r["hung_status"]) for r in group}))
        print(f"{tree[-28:]:<28} {hung_id:<7} {plan:>16.2f} {applied:>17.2f}  {statuses}")


if __name__ == "__main__":
    main()
