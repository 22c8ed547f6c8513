"""`make demo`: TrimCache end to end on the process testbed, with a measured report.

``python -m testbed.demo --out results/demo``:

1. take the model zoo from the machine's shared zoo cache
   (``~/.cache/trimcache-testbed/zoo``, shared with ``trimcache testbed up`` and the test
   suite; built once, with progress);
2. ``testbed up``: Redis, the origin behind an emulated backhaul, the controller and three edge
   nodes behind emulated radio links; it returns once the controller has indexed every repo of
   the origin and every edge node applied the first placement;
3. as a user in ``area-1`` (next to ``edge-1``), fetch ``bert-sst2``, a sibling task model and a
   LoRA model through the controller's routes; then fetch the same models straight from the origin
   (a fresh device cache each way, same order), for the comparison;
4. predict sentences with ``bert-sst2``;
5. write ``report.md``, ``report.json`` and PNG plots to ``--out``: per model, download time from
   the edge vs. the origin and bytes by source; per edge node, physical vs. logical bytes; the hit
   ratio of the current placement;
6. ``testbed down``, always (in ``finally``);
7. placement matters: at the same capacity, ``trimcaching-gen`` vs ``independent`` vs
   ``popularity`` (testbed/experiment_compare.py: a fresh testbed per solver, the same seeded
   workload of emulated users in every area, ``--compare-requests`` each, bounded in time),
   measured hit ratio and download times next to the hit ratio each plan predicts, added to the
   report and printed (``--compare-requests 0`` skips it).

Every number in the report is measured in this run; nothing is copied from elsewhere.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from core.fsutil import atomic_write_text
from testbed import launcher

MIB = 1024 * 1024
SENTENCES = (
    "I loved it",
    "What a terrible, boring film.",
    "An absolute delight from start to end.",
)


def _say(message: str) -> None:
    sys.stderr.write(f"[demo] {message}\n")
    sys.stderr.flush()


def _pick_models(catalogue: Mapping[str, Any]) -> list[dict[str, Any]]:
    """bert-sst2, a sibling classifier (same base, another task) and a LoRA adapter."""
    models = [m for m in catalogue["models"] if not m.get("synthetic")]
    by_id = {m["model_id"]: m for m in models}
    if "bert-sst2" not in by_id:
        raise SystemExit("the zoo has no bert-sst2")
    sibling = next(
        (m for m in models if m["kind"] == "classifier" and m["model_id"] != "bert-sst2"), None
    )
    lora = next((m for m in models if m["kind"] == "lora"), None)
    return [m for m in (by_id["bert-sst2"], sibling, lora) if m is not None]


def _fetch_all(
    models: Sequence[Mapping[str, Any]], *, cache_dir: Path, **where: str
) -> dict[str, Any]:
    from client import fetch_model

    results: dict[str, Any] = {}
    for model in models:
        kwargs: dict[str, Any] = dict(where)
        if "origin_url" in where:
            kwargs["repo_id"] = model["repo_id"]
        fetched = fetch_model(model["model_id"], cache_dir=cache_dir, **kwargs)
        results[model["model_id"]] = fetched
        report = fetched.report
        _say(
            f"fetched {model['model_id']} via {'origin' if 'origin_url' in where else 'edge route'}"
            f" in {report['seconds']:.2f} s: "
            + ", ".join(f"{src} {n / MIB:.1f} MiB" for src, n in report["bytes_by_source"].items())
        )
    return results


def _label_sources(bytes_by_source: Mapping[str, int], state: Mapping[str, Any]) -> dict[str, int]:
    names = {
        url: record["node_id"]
        for url, record in zip(state["edge_urls"], state["edges"], strict=True)
    }
    names[state["origin_url"]] = "origin"
    return {names.get(src, src): int(n) for src, n in bytes_by_source.items() if n}


def _plots(report: Mapping[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files: list[str] = []
    models = list(report["models"])
    # 1. download time, edge route vs origin.
    fig, ax = plt.subplots(figsize=(7, 4))
    xs = range(len(models))
    edge = [report["models"][m]["edge"]["download_seconds"] for m in models]
    origin = [report["models"][m]["origin"]["download_seconds"] for m in models]
    bars = ax.bar([x - 0.2 for x in xs], edge, width=0.4, label="via edge (controller route)")
    ax.bar_label(bars, fmt="%.2f s", fontsize=8)
    bars = ax.bar([x + 0.2 for x in xs], origin, width=0.4, label="from origin (cloud)")
    ax.bar_label(bars, fmt="%.2f s", fontsize=8)
    ax.set_xticks(list(xs), models, rotation=10)
    ax.set_ylabel("download time (s)")
    ax.set_title("Model download time, user in area-1")
    ax.set_ylim(top=max([*edge, *origin], default=1.0) * 1.3 or 1.0)
    ax.legend(loc="upper center", ncol=2)
    fig.tight_layout()
    fig.savefig(out / "download_time.png", dpi=120)
    plt.close(fig)
    files.append("download_time.png")
    # 2. bytes by source, edge route.
    fig, ax = plt.subplots(figsize=(7, 4))
    sources = sorted({s for m in models for s in report["models"][m]["edge"]["bytes_by_source"]})
    bottom = [0.0] * len(models)
    for source in sources:
        values = [
            report["models"][m]["edge"]["bytes_by_source"].get(source, 0) / MIB for m in models
        ]
        bars = ax.bar(list(xs), values, bottom=bottom, label=source)
        ax.bar_label(bars, labels=[f"{v:.1f}" if v else "" for v in values],
                     label_type="center", fontsize=8)  # fmt: skip
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_xticks(list(xs), models, rotation=10)
    ax.set_ylabel("MiB")
    ax.set_title("Bytes by source (edge route; 'local' = device cache)")
    ax.set_ylim(top=max(bottom, default=1.0) * 1.3 or 1.0)
    ax.legend(loc="upper center", ncol=max(1, len(sources)))
    fig.tight_layout()
    fig.savefig(out / "bytes_by_source.png", dpi=120)
    plt.close(fig)
    files.append("bytes_by_source.png")
    # 3. per edge node, physical vs logical bytes.
    nodes = list(report["edges"])
    if nodes:
        fig, ax = plt.subplots(figsize=(7, 4))
        nx = range(len(nodes))
        logical = [report["edges"][n]["logical_bytes"] / MIB for n in nodes]
        physical = [report["edges"][n]["physical_bytes"] / MIB for n in nodes]
        bars = ax.bar([x - 0.2 for x in nx], logical, width=0.4, label="logical (sum of models)")
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
        bars = ax.bar(
            [x + 0.2 for x in nx], physical, width=0.4, label="physical (deduplicated blocks)"
        )
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
        # Each node's capacity as a dashed line across its pair of bars.
        known = []
        for x, n in zip(nx, nodes, strict=True):
            if capacity := report["edges"][n].get("capacity_bytes"):
                known.append(capacity / MIB)
                label = "capacity" if len(known) == 1 else "_nolegend_"
                ax.hlines(capacity / MIB, x - 0.45, x + 0.45, colors="black",
                          linestyles="--", linewidth=1, label=label)  # fmt: skip
                ax.annotate(f"{capacity / MIB:.0f} MiB", (x + 0.45, capacity / MIB),
                            fontsize=8, ha="right", va="bottom")  # fmt: skip
        ax.set_xticks(list(nx), nodes)
        ax.set_ylabel("MiB")
        ax.set_title("Edge storage: logical vs physical")
        ax.set_ylim(top=max([*logical, *known], default=1.0) * 1.3 or 1.0)
        ax.legend(loc="upper center", ncol=2)
        fig.tight_layout()
        fig.savefig(out / "edge_storage.png", dpi=120)
        plt.close(fig)
        files.append("edge_storage.png")
    return files


def _comparison_plot(points: Sequence[Mapping[str, Any]], out: Path) -> str:
    """Measured vs predicted hit ratio per solver (one capacity), numbers on the bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(points, key=lambda p: p["solver"])
    xs = range(len(rows))
    fig, ax = plt.subplots(figsize=(7, 4))
    bars = ax.bar([x - 0.2 for x in xs], [p["hit_ratio"] for p in rows], width=0.4,
                  label="measured")  # fmt: skip
    ax.bar_label(bars, fmt="%.2f", fontsize=8)
    bars = ax.bar([x + 0.2 for x in xs], [p["predicted_hit_ratio"] for p in rows], width=0.4,
                  label="predicted by the placement problem")  # fmt: skip
    ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_xticks(list(xs), [p["solver"] for p in rows])
    ax.set_ylabel("hit ratio")
    ax.set_ylim(0, 1.25)
    capacity = rows[0].get("capacity_mib")
    ax.set_title(f"Solvers on the same workload, {capacity} MiB per edge node")
    ax.legend(loc="upper center", ncol=2)
    fig.tight_layout()
    fig.savefig(out / "solver_comparison.png", dpi=120)
    plt.close(fig)
    return "solver_comparison.png"


def _markdown(report: Mapping[str, Any], plots: Sequence[str]) -> str:
    lines = [
        "# TrimCache demo report",
        "",
        f"Produced by `make demo` (`python -m testbed.demo`) at {report['finished_at']}, "
        f"profile `{report['profile']}`, {len(report['edges'])} edge nodes. "
        "Every number below was measured in this run.",
        "",
        f"Links: backhaul (origin) {_link(report['links']['backhaul'])}, "
        f"radio (edge) {_link(report['links']['radio'])}. The user stands in `area-1`, "
        "next to `edge-1`.",
        "",
        "## Downloads per model",
        "",
        "| model | via edge: download s | total s | from origin: download s | total s | speed-up |"
        " bytes by source (edge route) |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for model_id, row in report["models"].items():
        edge, origin = row["edge"], row["origin"]
        speedup = (
            origin["download_seconds"] / edge["download_seconds"] if edge["download_seconds"] else 0
        )
        sources = ", ".join(f"{s}: {n / MIB:.1f} MiB" for s, n in edge["bytes_by_source"].items())
        lines.append(
            f"| {model_id} | {edge['download_seconds']:.2f} | {edge['seconds']:.2f} | "
            f"{origin['download_seconds']:.2f} | {origin['seconds']:.2f} | {speedup:.1f}x | "
            f"{sources} |"
        )
    lines += [
        "",
        "`download` is the time until the model's files are on the device, byte-identical "
        "(route, download with per-block sha256 checks, reassembly); `total` adds loading the "
        "model with transformers. The origin path is a plain Hub download of whole files; the "
        "edge path reuses blocks already in the device cache (`local`), so a sibling model "
        "moves only its own bytes.",
        "",
        "## Edge storage",
        "",
        "| edge node | models | logical MiB | physical MiB | savings |",
        "|---|---:|---:|---:|---:|",
    ]
    for node_id, stats in report["edges"].items():
        lines.append(
            f"| {node_id} | {stats.get('models', 0)} | {stats['logical_bytes'] / MIB:.1f} | "
            f"{stats['physical_bytes'] / MIB:.1f} | {stats.get('savings', 0.0):.1%} |"
        )
    placement = report["placement"]
    lines += [
        "",
        "## Placement",
        "",
        f"Solver `{placement.get('solver')}`, hit ratio of the current placement "
        f"**{placement.get('hit_ratio', 0.0):.3f}** (version {placement.get('version')}; "
        f"`testbed up` indexed the zoo, planned and pushed before returning, in "
        f"{placement.get('up_seconds', 0.0):.1f} s).",
        "",
        "## Prediction (bert-sst2)",
        "",
    ]
    for text, pred in zip(
        report["prediction"]["texts"], report["prediction"]["labels"], strict=True
    ):
        lines.append(f'- "{text}" → **{pred["label"]}** ({pred["score"]:.3f})')
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(lines)


def _edge_row(stats: Mapping[str, Any]) -> dict[str, Any]:
    models = stats.get("models", 0)
    capacity = stats.get("capacity_bytes")
    return {
        "capacity_bytes": int(capacity) if capacity is not None else None,
        "physical_bytes": int(stats.get("physical_bytes", 0)),
        "logical_bytes": int(stats.get("logical_bytes", 0)),
        "savings": float(stats.get("savings", 0.0)),
        "models": len(models) if isinstance(models, list | dict) else int(models),
        "blocks": stats.get("blocks", 0),
    }


def _link(link: Mapping[str, Any]) -> str:
    rate = f"{link['rate_mbps']:g} Mbit/s" if link.get("rate_mbps") else "unshaped"
    return f"{rate}, {link.get('latency_ms', 0):g} ms"


def run(args: argparse.Namespace) -> int:
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="trimcache-demo-"))
    state_dir = (args.state_dir or work / "testbed").resolve()
    started = time.perf_counter()
    state: dict[str, Any] | None = None
    try:
        state = launcher.up(
            launcher.LaunchOptions(
                state_dir=state_dir,
                edges=args.edges,
                zoo_dir=args.zoo.resolve() if args.zoo else None,  # None: the shared cache
                capacity_bytes=args.capacity_mb * MIB,
                profile=args.profile,
                timeout_s=180,
            ),
            on_progress=_say,
        )
        zoo_dir = Path(state["zoo_dir"])
        catalogue = json.loads((zoo_dir / "zoo.json").read_text())

        chosen = _pick_models(catalogue)
        via_edge = _fetch_all(
            chosen, cache_dir=work / "device-edge", controller_url=state["controller_url"],
            area_id=state["edges"][0]["area_id"], auth_token=state["auth_token"],
        )  # fmt: skip
        via_origin = _fetch_all(
            chosen, cache_dir=work / "device-origin", origin_url=state["origin_url"]
        )
        sst2 = via_edge["bert-sst2"]
        labels = sst2.predict(list(SENTENCES))
        for text, pred in zip(SENTENCES, labels, strict=True):
            _say(f"bert-sst2: {text!r} -> {pred['label']} ({pred['score']:.3f})")

        edges: dict[str, Any] = {}
        for record in state["edges"]:
            edges[record["node_id"]] = httpx.get(f"{record['url']}/v1/stats", timeout=30).json()
        placement = httpx.get(f"{state['controller_url']}/v1/placement", timeout=30).json() | {
            "up_seconds": state.get("up_seconds", 0.0)
        }

        def row(fetched: Any) -> dict[str, Any]:
            rep = fetched.report
            return {
                "seconds": rep["seconds"],
                # Files on the device: route + download + verify + reassembly. The origin mode
                # downloads inside its route phase, so the phases are summed, not "download".
                "download_seconds": rep["seconds"] - rep.get("phase_seconds", {}).get("load", 0.0),
                "bytes_by_source": _label_sources(rep["bytes_by_source"], state or {}),
            }

        report: dict[str, Any] = {
            "profile": args.profile,
            "links": json.loads(json.dumps(state["links"])),
            "models": {
                m["model_id"]: {
                    "edge": row(via_edge[m["model_id"]]),
                    "origin": row(via_origin[m["model_id"]]),
                }
                for m in chosen
            },
            "edges": {node_id: _edge_row(stats) for node_id, stats in edges.items()},
            "placement": {
                key: placement.get(key) for key in ("version", "solver", "hit_ratio", "up_seconds")
            },
            "prediction": {"model_id": "bert-sst2", "texts": list(SENTENCES), "labels": labels},
            "finished_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "wall_seconds": time.perf_counter() - started,
        }
        plots = _plots(report, out)
        atomic_write_text(out / "report.json", json.dumps(report, indent=2, default=str) + "\n")
        markdown = _markdown(report, plots)
        atomic_write_text(out / "report.md", markdown)
    finally:
        if state is not None or launcher.load_state(state_dir) is not None:
            stopped = launcher.down(state_dir)
            _say(f"testbed down: stopped {', '.join(stopped) or 'nothing'}")
        if args.state_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.compare_requests > 0:
        section, points = _comparison(args, catalogue, out)
        report["comparison"] = points
        if points:
            section += f"\n![solver comparison]({_comparison_plot(points, out)})\n"
        markdown += section
        atomic_write_text(out / "report.json", json.dumps(report, indent=2, default=str) + "\n")
        atomic_write_text(out / "report.md", markdown)
    sys.stdout.write(markdown + "\n")
    _say(f"report written to {out / 'report.md'}")
    return 0


COMPARE_SOLVERS = ("trimcaching-gen", "independent", "popularity")


def _comparison(
    args: argparse.Namespace, catalogue: Mapping[str, Any], out: Path
) -> tuple[str, list[dict[str, Any]]]:
    """Step 7: the same seeded workload against a fresh testbed per solver, same capacity."""
    from testbed.experiment import ExperimentConfig
    from testbed.experiment_compare import CompareOptions, compare
    from testbed.experiment_report import headline, table

    # Adapters included: the placement problem counts the base model a LoRA request also needs
    # (controller.adapters), so their predicted hits compare with the measured ones.
    models = tuple(m["model_id"] for m in catalogue["models"] if not m.get("synthetic"))
    config = ExperimentConfig(
        seed=0, requests=args.compare_requests, concurrency=3, users_per_area=4,
        device_cache="fresh", models=models, max_seconds=args.compare_seconds,
    )  # fmt: skip
    options = CompareOptions(
        solvers=COMPARE_SOLVERS, capacities_mib=(args.capacity_mb,), profile=args.profile,
        edges=args.edges, zoo_dir=args.zoo.resolve() if args.zoo else None,
    )  # fmt: skip
    _say(
        f"placement comparison at {args.capacity_mb} MiB per edge: "
        f"{', '.join(COMPARE_SOLVERS)} ({args.compare_requests} requests each)"
    )
    points = compare(config, options, out / "comparison", say=_say)
    section = "\n".join(
        [
            "",
            "## Placement matters: solvers on the same workload",
            "",
            f"A fresh testbed per solver at {args.capacity_mb} MiB per edge node, the same seeded "
            f"workload (users in every area, Zipf per area as the controller assumes, "
            f"{args.compare_requests} requests, each into an empty device cache; config "
            f"`{json.dumps(config.to_json(), sort_keys=True)}`). A hit: every byte from edge "
            "nodes within the model's deadline. `predicted`: the hit ratio the placement "
            "problem gives the plan for this demand.",
            "",
            table(points),
            "",
            headline(points, args.capacity_mb),
            "",
        ]
    )
    return section, points


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.demo", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("results/demo"))
    parser.add_argument(
        "--zoo", type=Path, default=None, help="zoo dir (default: the shared zoo cache)"
    )
    parser.add_argument("--state-dir", type=Path, default=None, help="keep the testbed state here")
    parser.add_argument("--edges", type=int, default=3)
    parser.add_argument(
        "--capacity-mb", type=int, default=160, help="per edge; the zoo dedups to ~234 MiB"
    )
    parser.add_argument("--profile", choices=("full", "test"), default="full")
    parser.add_argument(
        "--compare-requests", type=int, default=20,
        help="requests per solver in the placement comparison (0: skip it)",
    )  # fmt: skip
    parser.add_argument(
        "--compare-seconds", type=float, default=20.0,
        help="time bound of each solver's workload in the comparison",
    )  # fmt: skip
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
