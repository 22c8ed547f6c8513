"""Broadcast of shared blocks on the testbed: ``python -m bench.broadcast --windows 0,0.5,3``.

For each broadcast window W (0 = off, the baseline, in the same run) it starts the process
testbed with one edge emulating the default world (``testbed up --world FILE
--broadcast-window-s W``, test zoo, backhaul unshaped so only the downlink is emulated), waits
until the edge holds the three sibling classifiers, then releases three SDK client processes in
``area-1`` together (each fetches one sibling with ``client.fetch_model``) and reports the edge's
radio counters (airtime, bytes on the air and delivered, block transmissions, group sizes),
each client's fetch seconds, and beside them the simulator's prediction for the same world and
requests (``evaluate_delay``: broadcast for W > 0, unicast for W = 0; pure airtime schedule, no
client or HTTP overhead). Writes JSON lines to ``bench/results/broadcast.jsonl``.

The client processes are :func:`start_clients` / :func:`finish_client`; the e2e test
(tests/e2e/test_broadcast.py) drives the same ones.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from controller.delay.model import evaluate_delay
from core.manifest import ModelManifest
from core.waiting import wait_until
from core.world import Link, World
from testbed import launcher
from testbed.topology import grid_topology
from testbed.world import build_world, world_problem, write_world

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS = ("bert-sst2", "bert-spam", "bert-question")
RESULTS = REPO_ROOT / "bench" / "results" / "broadcast.jsonl"
FIGURES = ("airtime_s", "bytes_on_air", "bytes_delivered", "block_transmissions", "group_sizes")

# One client process: "ready" once imported, fetches when the start file appears. It reports
# when it was released and finished on the machine's monotonic clock (the edge's too). Its read
# timeout is 120 s: on a shared downlink serving the shortest user first, the K-th user's first
# byte waits for the others' airtime (about 36 s at K = 16 in bench.delivery), more than the
# SDK's default 30 s. The Client is built before "ready" (its HTTP pools, device cache and TLS
# context are not part of the fetch the bench times from the release).
CLIENT = """
import json, os, sys, time
from client import Client
model, controller, cache, start, area = sys.argv[1:6]
c = Client(controller_url=controller, cache_dir=cache, area_id=area, timeout_s=120.0)
print("ready", flush=True)
while not os.path.exists(start):
    time.sleep(0.005)
released = time.monotonic()
with c:
    fetched = c.fetch(model, load=False)
report = {"path": str(fetched.path), "bytes_by_source": fetched.report["bytes_by_source"],
          "seconds": fetched.report["seconds"], "released_at": released,
          "finished_at": time.monotonic(),
          "phase_seconds": fetched.report.get("phase_seconds", {})}
print(json.dumps(report))
"""


def world_file(path: Path) -> Path:
    """The default one-edge world (20 MHz reference channel), backhaul not shaped."""
    doc = build_world(grid_topology(1), backhaul=Link(None, 0.0), radio_latency_ms=0.0)
    return write_world(path, doc)


def radio_stats(edge_url: str) -> dict[str, Any]:
    radio: dict[str, Any] = httpx.get(f"{edge_url}/v1/stats", timeout=30).json()["radio"]
    return radio


def start_clients(
    controller_url: str,
    run_dir: Path,
    models: Sequence[str],
    areas: Sequence[str] | None = None,
    *,
    name: str = "device",
) -> list[subprocess.Popen[str]]:
    """One client process per model (in ``areas[i]``, default ``area-1``); they fetch
    together once every one is ready."""
    run_dir.mkdir(parents=True, exist_ok=True)
    start = run_dir / f"start-{name}"
    areas = areas if areas is not None else ["area-1"] * len(models)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                CLIENT,
                model,
                controller_url,
                str(run_dir / f"{name}-{i}"),
                str(start),
                area,
            ],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i, (model, area) in enumerate(zip(models, areas, strict=True))
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                err = proc.stderr.read() if proc.stderr else ""
                raise RuntimeError(f"a client process did not start: {err[-2000:]}")
    except BaseException:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=30)
        raise
    start.touch()
    return procs


def finish_client(proc: subprocess.Popen[str]) -> dict[str, Any]:
    """The client's report (``path``, ``bytes_by_source``, ``seconds``); raises if it failed."""
    out, err = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"client exited {proc.returncode}: {err[-3000:]}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def holds_models(edge_url: str, models: Sequence[str]) -> bool:
    held = httpx.get(f"{edge_url}/v1/models", timeout=30).json()["models"]
    return set(models) <= {m["model_id"] for m in held}


def predicted(
    world: World, manifests: Sequence[ModelManifest], *, broadcast: bool
) -> dict[str, float]:
    """The simulator's delays for the same world and requests: one slot, the three users in
    ``area-1``, every block held by the edge (controller/delay/model.py's ``evaluate_delay``)."""
    blocks: dict[str, int] = {b: n for m in manifests for b, n in m.block_sizes().items()}
    problem = world_problem(
        world,
        blocks=blocks,
        models={m.model_id: sorted(m.block_sizes()) for m in manifests},
        capacities={"edge-1": sum(blocks.values())},
        slots=[{f"area-1#{i}": m.model_id for i, m in enumerate(manifests)}],
    )
    stats = evaluate_delay(
        problem, {"edge-1": list(blocks)}, delivery="broadcast" if broadcast else "unicast"
    )
    return {"sim_mean_s": round(stats.mean_s, 3), "sim_makespan_s": round(stats.makespan_s, 3)}


def run_window(window_s: float, zoo_dir: Path, work: Path) -> dict[str, Any]:
    """One testbed at window ``window_s``: the edge's figures and the clients' fetch seconds."""
    world = world_file(work / "world.json")
    options = launcher.LaunchOptions(
        state_dir=work / "testbed", edges=1, zoo_dir=zoo_dir, profile="test",
        controller_port=0, world=str(world), broadcast_window_s=window_s,
    )  # fmt: skip
    state = launcher.up(options)
    try:
        edge = state["edge_urls"][0]
        wait_until(lambda: holds_models(edge, MODELS), timeout_s=300, what="the placement")
        manifests = [
            ModelManifest.from_dict(httpx.get(f"{edge}/v1/models/{m}/manifest", timeout=30).json())
            for m in MODELS
        ]
        before = radio_stats(edge)
        results = [finish_client(p) for p in start_clients(state["controller_url"], work, MODELS)]
        after = radio_stats(edge)
    finally:
        launcher.down(work / "testbed")
    seconds = [round(r["seconds"], 2) for r in results]
    row: dict[str, Any] = {"window_s": window_s, **{k: after[k] for k in FIGURES}}
    row["airtime_s"] = round(after["airtime_s"] - before["airtime_s"], 3)
    row["fetch_s"] = seconds
    row["mean_fetch_s"] = round(sum(seconds) / len(seconds), 2)
    row.update(predicted(World.load(world), manifests, broadcast=window_s > 0))
    return row


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.broadcast", description=__doc__)
    parser.add_argument("--windows", default="0,0.5,3", help="comma-separated W in seconds")
    args = parser.parse_args(argv)
    from testbed.zoo import ensure_test_zoo

    zoo_dir = ensure_test_zoo()
    rows = []
    for w in (float(x) for x in args.windows.split(",")):
        with tempfile.TemporaryDirectory(prefix="bench-broadcast-") as tmp:
            row = run_window(w, zoo_dir, Path(tmp))
        rows.append(row)
        print(json.dumps(row), flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    header = ("W s", "airtime s", "sim airtime s", "MB on air", "MB delivered")
    print(" ".join(f"{h:>13}" for h in (*header, "mean fetch s", "sim mean s")))
    for row in rows:
        print(
            f"{row['window_s']:>13g} {row['airtime_s']:>13.3f} {row['sim_makespan_s']:>13.3f}"
            f" {row['bytes_on_air'] / 1e6:>13.1f}"
            f" {row['bytes_delivered'] / 1e6:>13.1f} {row['mean_fetch_s']:>13.2f}"
            f" {row['sim_mean_s']:>13.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
