"""Delay of model delivery on the testbed vs K users: ``python -m bench.delivery --ks 1,2,4,8,16``.

Issue 17's must-show bench. For each mode it starts one process testbed (test zoo, one edge
emulating the one-edge world of :func:`world_file`: the delay model's 20 MHz downlink
(``--bandwidth-mhz``), the
default backhaul emulated (12.5 MB/s, 30 ms); blocks the edge lacks come from the origin
through the edge and its radio, the model's cloud path; ``testbed up --world FILE
--objective delay --solver S --broadcast-window-s W``), waits for the controller's first
placement, then for each K
releases K SDK client processes in ``area-1`` together (:func:`bench.broadcast.start_clients`),
each fetching a model drawn from the zoo's popularity (the controller's Zipf prior for
``area-1``, :func:`testbed.experiment.popularity`; seeded by K, so every mode gets the same
requests). Per (mode, K) it reports the clients' mean and p95 fetch seconds, the edge's
airtime, the origin's bytes during the fetches, and beside them the simulator's prediction
for the same world, placement and requests (``evaluate_delay`` on
:func:`testbed.world.world_problem`):

- ``coarse``: the ``coarse`` delay solver (whole models), unicast (W = 0); simulated at block
  granularity (the edge shares the blocks of the models it holds), unicast; the whole-model
  prediction (``granularity="model"``) is recorded too (``sim_model_mean_s``);
- ``fine-unicast``: the ``fine-unicast`` solver, unicast (W = 0); block granularity, unicast;
- ``fine+broadcast``: the ``delay-greedy`` solver with broadcast window W (default 0.1 s: the
  K clients' requests reach the edge within milliseconds; W is what a lone request waits);
  block granularity, broadcast;
- ``marl (decentralised)``: no central solver for the edge: it runs a ``marl`` checkpoint
  locally (``testbed up --agent-checkpoint``, :mod:`edge_node.agent`) trained first on the
  zoo's PBs in this world (:mod:`testbed.agent`; the reference 100 Mbit/s backhaul in the
  training instance, since with an unshaped one caching saves nothing in the model); a
  warm-up of :data:`WARMUP` clients (seed + 1) lets it observe demand and adapt; before each
  row the agent settles on the demand it has seen (it decided twice and holds what it wants),
  then it is frozen for the row (``PUT /v1/agent {"frozen": true}``: it keeps observing and
  deciding, applies nothing), so the placement the simulator gets is the one the edge held
  throughout the row (``agent_changes``, local plans applied during the row, is 0); thawed
  after the row; simulated like ``fine+broadcast`` (W > 0).

Per-row evidence beside the figures: the edge's radio counters during the row (``radio``:
airtime by job kind, block transmissions, group sizes, mid-air joins, broadcast windows),
each client's release offset and route seconds, the mean seconds
per fetch phase, when the radio's last airtime ended (``air_end_s``, from the release) and how
long after it the clients finished on average (``tail_after_air_s``: receiving, verifying and
writing K models on one machine, which the delay model does not have).

Writes JSON lines to ``bench/results/delivery.jsonl``, a markdown table
``bench/results/delivery.md`` and, when matplotlib is importable, ``docs/figures/delivery.png``
(``--plot-only`` redraws table and plot from the JSON lines, e.g. with another Python).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from bench.broadcast import finish_client, radio_stats, start_clients
from controller.adapters import base_models, with_bases
from controller.delay.model import P95, evaluate_delay, percentile_nearest_rank
from core.manifest import ModelManifest
from core.world import World
from testbed import launcher
from testbed.experiment import popularity
from testbed.topology import grid_topology
from testbed.world import (
    DEFAULT_BACKHAUL,
    DEFAULT_CHANNEL,
    build_world,
    world_problem,
    write_world,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = REPO_ROOT / "bench" / "results" / "delivery.jsonl"
TABLE = REPO_ROOT / "bench" / "results" / "delivery.md"
PLOT = REPO_ROOT / "docs" / "figures" / "delivery.png"
AREA = "area-1"
#: mode -> (delay solver, broadcast on); the window of broadcast modes is ``--window-s``.
MODES: dict[str, tuple[str, bool]] = {
    "coarse": ("coarse", False),
    "fine-unicast": ("fine-unicast", False),
    "fine+broadcast": ("delay-greedy", True),
}
#: The decentralised mode: every edge runs its own marl agent (broadcast on, like fine+broadcast).
DECENTRALISED = "marl (decentralised)"
MODES[DECENTRALISED] = ("marl", True)
#: Modes the bench lists without numbers (mode -> why).
NOT_BUILT: dict[str, str] = {}
#: Requests the decentralised edge observes before the first row.
WARMUP = 16
#: The training instance's backhaul when the world leaves it unshaped (reference 100 Mbit/s).
TRAIN_BACKHAUL_BYTES_PER_S = 12.5e6


def world_file(path: Path, *, bandwidth_hz: float = DEFAULT_CHANNEL.bandwidth_hz) -> Path:
    """The one-edge world of the bench: the delay model's reference downlink (20 MHz unless
    ``bandwidth_hz`` says otherwise) and the default emulated backhaul (12.5 MB/s, 30 ms;
    edge_node.wired), so blocks the edge lacks take the model's cloud path (backhaul, then the
    edge's radio)."""
    channel = dataclasses.replace(DEFAULT_CHANNEL, bandwidth_hz=bandwidth_hz)
    doc = build_world(
        grid_topology(1), channel=channel, backhaul=DEFAULT_BACKHAUL, radio_latency_ms=0.0
    )
    return write_world(path, doc)


def workload(k: int, catalogue: Sequence[str], seed: int) -> list[str]:
    """K models drawn from the zoo's popularity in ``area-1`` (same for every mode)."""
    row = popularity([AREA], catalogue, catalogue)[AREA]
    rng = random.Random(seed * 1000 + k)
    return rng.choices(list(row), [row[m] for m in row], k=k)


def delivered_blocks(
    rows: Sequence[dict[str, Any]], models: dict[str, list[str]]
) -> dict[str, list[str]]:
    """Model -> the blocks a client downloads for it: its own, plus its base model's for a
    LoRA adapter (the route names the base and the SDK fetches it alongside, client/_client.py).
    ``rows`` are the catalogue's (``GET /v1/models``); the adapter -> base rule is the
    controller's (:func:`controller.adapters.base_models`)."""
    return {m: sorted(b) for m, b in with_bases(models, base_models(rows)).items()}


def predicted(
    world: World,
    manifests: dict[str, ModelManifest],
    delivered: dict[str, list[str]],
    held: Sequence[str],
    requests: Sequence[str],
    *,
    capacity: int,
    coarse: bool,
    broadcast: bool,
) -> dict[str, float]:
    """``evaluate_delay`` for the same world, placement (the models the edge holds) and
    requests (one slot, user ``area-1#i`` asks for ``requests[i]``; a model is the blocks
    :func:`delivered_blocks` says a client downloads for it)."""
    blocks: dict[str, int] = {b: n for m in manifests.values() for b, n in m.block_sizes().items()}
    problem = world_problem(
        world,
        blocks=blocks,
        models=delivered,
        capacities={"edge-1": capacity},
        slots=[{f"{AREA}#{i}": model for i, model in enumerate(requests)}],
    )
    # The edge holds blocks: a coarse placement (whole models) is delivered block by block,
    # shared blocks of held models included, so the prediction is block-granular for every
    # mode; the whole-model (``granularity="model"``) figure is kept beside it for coarse.
    placement = {"edge-1": sorted({b for m in held for b in delivered[m]})}
    stats = evaluate_delay(problem, placement, delivery="broadcast" if broadcast else "unicast")
    out = {
        "sim_mean_s": round(stats.mean_s, 3),
        "sim_p95_s": round(stats.p95_s, 3),
        "sim_airtime_s": round(stats.makespan_s, 3),
    }
    if coarse:
        whole = evaluate_delay(
            problem, {"edge-1": list(held)}, granularity="model", delivery="unicast"
        )
        out["sim_model_mean_s"] = round(whole.mean_s, 3)
    return out


def run_mode(
    mode: str,
    ks: Sequence[int],
    zoo_dir: Path,
    work: Path,
    *,
    window_s: float,
    seed: int,
    bandwidth_hz: float = DEFAULT_CHANNEL.bandwidth_hz,
) -> list[dict[str, Any]]:
    """One testbed for ``mode``; one row per K."""
    solver, broadcast = MODES[mode]
    window = window_s if broadcast else 0.0
    world = world_file(work / "world.json", bandwidth_hz=bandwidth_hz)
    agent = work / "agent.pt" if mode == DECENTRALISED else None
    options = launcher.LaunchOptions(
        state_dir=work / "testbed", edges=1, zoo_dir=zoo_dir, profile="test",
        controller_port=0, world=str(world), broadcast_window_s=window,
        objective="delay", solver=None if agent else solver,
        agent_checkpoint=agent, agent_interval_s=1.0,
    )  # fmt: skip
    if agent is not None:
        started = time.monotonic()
        train_agent(agent, zoo_dir, World.load(world), options.capacity_bytes, seed=seed)
        print(f"[{mode}] agent trained in {time.monotonic() - started:.0f} s", flush=True)
    started = time.monotonic()
    state = launcher.up(options)
    print(f"[{mode}] testbed up in {time.monotonic() - started:.0f} s", flush=True)
    rows: list[dict[str, Any]] = []
    try:
        edge, controller = state["edge_urls"][0], state["controller_url"]
        catalogue_rows = httpx.get(f"{controller}/v1/models", timeout=30).json()["models"]
        catalogue = sorted(m["model_id"] for m in catalogue_rows)
        manifests = {
            m: ModelManifest.from_dict(
                httpx.get(f"{controller}/v1/models/{m}", timeout=30).json()["manifest"]
            )
            for m in catalogue
        }
        if agent is not None:
            warm_up(controller, edge, work / "warmup", workload(WARMUP, catalogue, seed + 1))
        for k in ks:
            if agent is not None:  # settle on the demand seen so far, then hold still
                settle(edge)
                freeze(edge, state["auth_token"], frozen=True)
            held = sorted(
                m["model_id"] for m in httpx.get(f"{edge}/v1/models", timeout=30).json()["models"]
            )
            applied = agent_applied(edge) if agent is not None else 0
            requests = workload(k, catalogue, seed)
            radio_before = radio_stats(edge)
            origin_before = httpx.get(f"{state['origin_url']}/v1/stats", timeout=30).json()
            procs = start_clients(controller, work / f"k{k}", requests)
            released = time.monotonic()
            results = [finish_client(p) for p in procs]
            radio_after = radio_stats(edge)
            origin_after = httpx.get(f"{state['origin_url']}/v1/stats", timeout=30).json()
            if agent is not None:
                freeze(edge, state["auth_token"], frozen=False)
            seconds = [float(r["seconds"]) for r in results]
            row: dict[str, Any] = {
                "mode": mode, "solver": solver, "window_s": window, "k": k,
                "bandwidth_mhz": bandwidth_hz / 1e6,
                "requests": requests, "held": held,
                "mean_s": round(sum(seconds) / k, 3),
                "p95_s": round(percentile_nearest_rank(seconds, P95), 3),
                "airtime_s": round(radio_after["airtime_s"] - radio_before["airtime_s"], 3),
                "origin_bytes": origin_after["bytes_served"] - origin_before["bytes_served"],
                "fetch_s": [round(s, 2) for s in seconds],
                "radio": radio_delta(radio_before, radio_after),
                "released_s": [round(float(r["released_at"]) - released, 3) for r in results],
                # The radio's last airtime ended this long after the release; the clients
                # finished (mean) this long after it: verifying, writing and the loopback
                # copies of K devices on one machine, which the delay model does not have.
                "air_end_s": round(radio_after["air_end_monotonic_s"] - released, 3),
                "tail_after_air_s": round(
                    sum(float(r["finished_at"]) for r in results) / k
                    - radio_after["air_end_monotonic_s"],
                    3,
                ),
                "route_s": [round(float(r["phase_seconds"].get("route", 0.0)), 3) for r in results],
                "phases_mean_s": {
                    phase: round(sum(float(r["phase_seconds"][phase]) for r in results) / k, 3)
                    for phase in results[0]["phase_seconds"]
                },
                "load_avg": [round(x, 1) for x in os.getloadavg()],
            }  # fmt: skip
            if agent is not None:
                row["agent_changes"] = agent_applied(edge) - applied
            row.update(
                predicted(
                    World.load(world),
                    manifests,
                    delivered_blocks(
                        catalogue_rows, {m: sorted(f.block_sizes()) for m, f in manifests.items()}
                    ),
                    held,
                    requests,
                    capacity=options.capacity_bytes,
                    coarse=solver == "coarse",
                    broadcast=broadcast,
                )  # fmt: skip
            )
            row["mean_err_pct"] = round(100 * (row["mean_s"] / row["sim_mean_s"] - 1), 1)
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        launcher.down(work / "testbed")
    return rows


def radio_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The edge's radio counters during a row (airtime by kind, groups, their sizes, mid-air
    joins): the per-request evidence behind a row's airtime."""
    sizes = {
        size: n - int(before["group_sizes"].get(size, 0))
        for size, n in after["group_sizes"].items()
    }
    return {
        "airtime_by_kind_s": {
            kind: round(v - before["airtime_by_kind_s"].get(kind, 0.0), 3)
            for kind, v in after["airtime_by_kind_s"].items()
        },
        **{
            key: after[key] - before[key]
            for key in (
                "block_requests",
                "block_transmissions",
                "broadcast_groups",
                "mid_joins",
                "windows",
            )  # fmt: skip
        },
        "group_sizes": {size: n for size, n in sizes.items() if n},
    }


def train_agent(out: Path, zoo_dir: Path, world: World, capacity: int, *, seed: int) -> None:
    """The edge's marl checkpoint for this world and the zoo (testbed/agent.py)."""
    from testbed.agent import train_checkpoint, zoo_manifests

    manifests = zoo_manifests(zoo_dir)

    def problem_for(blocks, models, slots):
        problem = world_problem(
            world, blocks=blocks, models=models, capacities={"edge-1": capacity}, slots=slots
        )
        if problem.backhaul_bytes_per_s >= 1e12:  # unshaped: caching would save nothing
            problem = dataclasses.replace(problem, backhaul_bytes_per_s=TRAIN_BACKHAUL_BYTES_PER_S)
        return problem

    catalogue = sorted(manifests)
    train_checkpoint(
        out, manifests=manifests, problem_for=problem_for, areas=[AREA],
        popularity=popularity([AREA], catalogue, catalogue), seed=seed,
    )  # fmt: skip


def agent_applied(edge: str) -> int:
    """Local plans the edge's agent has applied so far."""
    return int(httpx.get(f"{edge}/v1/agent", timeout=30).json()["applied"])


def warm_up(controller: str, edge: str, run_dir: Path, requests: Sequence[str]) -> None:
    """Clients fetch ``requests``; then the agent settles (:func:`settle`)."""
    for proc in start_clients(controller, run_dir, requests):
        finish_client(proc)
    held = settle(edge)
    print(f"[{DECENTRALISED}] after warm-up the edge holds {held}", flush=True)


def settle(edge: str) -> list[str]:
    """Wait until the agent has decided (twice) on the demand it has seen and holds what it
    wants (bounded: 120 s); the models it holds."""
    seen = int(httpx.get(f"{edge}/v1/agent", timeout=30).json()["decisions"])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        doc = httpx.get(f"{edge}/v1/agent", timeout=30).json()
        if doc["decisions"] > seen + 1 and doc["held_models"] == doc["wanted_models"]:
            break
        time.sleep(0.5)
    held: list[str] = doc["held_models"]
    return held


def freeze(edge: str, token: str, *, frozen: bool) -> None:
    """Freeze (or thaw) the edge's agent: while frozen it keeps its cache (``PUT /v1/agent``),
    so a row is measured against the placement it started with, the one the simulator gets."""
    httpx.put(
        f"{edge}/v1/agent",
        json={"enabled": True, "frozen": frozen},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    ).raise_for_status()


def table(rows: Sequence[dict[str, Any]]) -> str:
    """The markdown table of a run (one line per mode and K, then the modes not built)."""
    coarse = {r["k"]: r["mean_s"] for r in rows if r["mode"] == "coarse"}
    lines = [
        "| mode | K | mean s (sim) | p95 s (sim) | airtime s (sim) | origin MB | vs sim"
        " | vs coarse |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        base = coarse.get(r["k"])
        vs = f"{100 * (r['mean_s'] / base - 1):+.0f} %" if base else "-"
        lines.append(
            f"| {r['mode']} | {r['k']} | {r['mean_s']:.2f} ({r['sim_mean_s']:.2f})"
            f" | {r['p95_s']:.2f} ({r['sim_p95_s']:.2f})"
            f" | {r['airtime_s']:.2f} ({r['sim_airtime_s']:.2f})"
            f" | {r['origin_bytes'] / 1e6:.1f} | {r['mean_err_pct']:+.0f} % | {vs} |"
        )
    for mode, why in NOT_BUILT.items():
        lines.append(f"| {mode} | - | {why} | | | | | |")
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[dict[str, Any]], path: Path) -> bool:
    """Mean delay vs K per mode, measured (solid) and simulated (dashed); False without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for mode in dict.fromkeys(r["mode"] for r in rows):
        mine = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["k"])
        ks = [r["k"] for r in mine]
        (line,) = ax.plot(ks, [r["mean_s"] for r in mine], marker="o", label=f"{mode} (testbed)")
        ax.plot(
            ks, [r["sim_mean_s"] for r in mine], linestyle="--", color=line.get_color(),
            label=f"{mode} (simulator)",
        )  # fmt: skip
    ax.set_xscale("log", base=2)
    ks_all = sorted({r["k"] for r in rows})
    ax.set_xticks(ks_all, [str(k) for k in ks_all])
    ax.set_xlabel("K concurrent users (one area, one edge)")
    ax.set_ylabel("mean model download delay (s)")
    ax.set_title("Delivery delay vs K (bench/delivery.py)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


def last_run(path: Path) -> list[dict[str, Any]]:
    """The rows of the last run in the JSON lines (rows share a ``run`` stamp)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    last = rows[-1]["run"] if rows else None
    return [r for r in rows if r.get("run") == last]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.delivery", description=__doc__)
    parser.add_argument("--ks", default="1,2,4,8,16", help="comma-separated K values")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset")
    parser.add_argument("--window-s", type=float, default=0.1, help="broadcast window W")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--bandwidth-mhz",
        type=float,
        default=DEFAULT_CHANNEL.bandwidth_hz / 1e6,
        help="the world's reference downlink bandwidth (MHz)",
    )
    parser.add_argument("--plot-only", action="store_true", help="redraw from the JSON lines")
    args = parser.parse_args(argv)
    try:
        ks = [int(x) for x in args.ks.split(",")]
    except ValueError:
        parser.error(f"--ks: comma-separated integers, not {args.ks!r}")
    if any(k < 1 for k in ks):
        parser.error("--ks: every K must be >= 1")
    unknown = sorted(set(args.modes.split(",")) - set(MODES))
    if unknown:
        parser.error(f"--modes: unknown {', '.join(unknown)} (known: {', '.join(MODES)})")
    if args.bandwidth_mhz <= 0:
        parser.error("--bandwidth-mhz must be > 0")
    if not args.plot_only:
        from testbed.zoo import ensure_test_zoo

        zoo_dir = ensure_test_zoo()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        for mode in args.modes.split(","):
            with tempfile.TemporaryDirectory(prefix="bench-delivery-") as tmp:
                rows = run_mode(
                    mode, ks, zoo_dir, Path(tmp), window_s=args.window_s, seed=args.seed,
                    bandwidth_hz=args.bandwidth_mhz * 1e6,
                )  # fmt: skip
            with RESULTS.open("a") as fh:
                for row in rows:
                    fh.write(json.dumps({"run": stamp, **row}) + "\n")
    rows = last_run(RESULTS)
    TABLE.write_text(table(rows))
    print(TABLE.read_text(), end="")
    print(f"plot: {PLOT}" if plot(rows, PLOT) else "plot: matplotlib not installed", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
