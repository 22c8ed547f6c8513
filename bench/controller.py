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
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
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
    from controller.state import CatalogueEntry, RedisState

    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="bench-controller-") as tmp:
        proc, url = _start_redis(Path(tmp))
        try:
            state = RedisState(url)
            model_ids = [f"m{i:03d}" for i in range(n_models)]
            for i, model_id in enumerate(model_ids):
                manifest = _manifest(
                    model_id, i % args.families, blocks=args.blocks, shared=args.shared
                )
                state.put_model(CatalogueEntry.of(manifest, requested_revision="main"))
            state.close()
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
                for n in range(n_nodes):
                    held = rng.sample(model_ids, k=max(1, n_models // 4))
                    body = {
                        "url": "http://127.0.0.1:9",
                        "capacity_bytes": args.capacity_mb * 1_000_000,
                        "position": [n * 300.0, 0.0],
                        "models": held,
                    }
                    client.put(f"/v1/nodes/edge-{n}", json=body).raise_for_status()
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


def _git_sha() -> str:
    result = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO_ROOT
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
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
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
