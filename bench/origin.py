"""Origin serving throughput vs nginx and ``python -m http.server``, same file, one run.

Run: ``.venv/bin/python -m bench.origin [--size-mib 256] [--repeats 3]``.

One file of random bytes (``--size-mib``) is placed in a scratch zoo as
``repos/bench/big/model.safetensors`` and served on loopback by three servers, each its own process:

- ``origin``: ``trimcache origin serve`` (``GET /bench/big/resolve/main/model.safetensors``,
  Starlette `FileResponse` in 1 MiB chunks, no link emulation);
- ``nginx``: ``/usr/sbin/nginx`` with a generated config (one worker, ``sendfile on``);
- ``http.server``: the standard library's static server;
- ``origin@R Mbit`` (``--shaped-mbps R``, default 400, 0 skips it): the origin emulating a
  backhaul link of R Mbit/s, which checks that the pacing hits the asked rate.

Clients: httpx streaming (``iter_raw``, bytes discarded), as our services download, and curl
(``-o /dev/null``), a C client that shows what the server side can do when the Python client is
the bottleneck. All servers run at once and the downloads go round-robin, ``--repeats`` times
each, so every server sees the same background load. The table gives MB/s (10^6 bytes/s),
median and best; JSON lines go to ``bench/results/origin.jsonl`` with the load average.
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
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

from bench._net import free_port, wait_http

NGINX = "/usr/sbin/nginx"
REPO_ROOT = Path(__file__).resolve().parent.parent
CHUNK_BYTES = 1024 * 1024


@contextmanager
def _process(cmd: list[str], url: str, **kwargs: Any) -> Iterator[str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kwargs)
    try:
        try:
            wait_http(url, method="HEAD")
        except RuntimeError:
            proc.terminate()
            _, err = proc.communicate(timeout=10)
            raise RuntimeError(f"{cmd[0]} failed: {err.decode()[-2000:]}") from None
        yield url
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _nginx_conf(root: Path, port: int, state: Path) -> str:
    return f"""
worker_processes 1;
daemon off;
user root;
pid {state}/nginx.pid;
error_log {state}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {state}/body;
    proxy_temp_path {state}/proxy;
    fastcgi_temp_path {state}/fastcgi;
    uwsgi_temp_path {state}/uwsgi;
    scgi_temp_path {state}/scgi;
    types {{ application/octet-stream safetensors; }}
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ }}
    }}
}}
"""


def _download(url: str) -> tuple[int, float]:
    """httpx streaming download; ``iter_raw`` so the client copies as little as it can."""
    started = time.perf_counter()
    received = 0
    with (
        httpx.Client(timeout=120.0) as client,
        client.stream("GET", url) as response,
    ):
        response.raise_for_status()
        for chunk in response.iter_raw():
            received += len(chunk)
    return received, time.perf_counter() - started


def _curl(url: str) -> tuple[int, float]:
    """The same download with curl, a C client, to show what the server side can do."""
    result = subprocess.run(
        ["curl", "-s", "-f", "-o", "/dev/null", "-w", "%{size_download} %{time_total}", url],
        capture_output=True,
        text=True,
        check=True,
    )
    size, seconds = result.stdout.split()
    return int(size), float(seconds)


def _write_random(path: Path, size_mib: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        for _ in range(size_mib):
            fh.write(os.urandom(CHUNK_BYTES))


def _git_sha() -> str:
    result = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    return result.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    parser.add_argument(
        "--servers", default="origin,nginx,http.server", help="comma-separated subset"
    )
    parser.add_argument(
        "--clients", default="httpx,curl", help="httpx (streaming, Python) and/or curl"
    )
    parser.add_argument(
        "--shaped-mbps",
        type=float,
        default=400.0,
        help="also measure the origin with link emulation at this rate (Mbit/s; 0: skip)",
    )
    args = parser.parse_args(argv)

    scratch = Path(tempfile.mkdtemp(prefix="bench-origin-"))
    rel = "repos/bench/big/model.safetensors"
    try:
        _write_random(scratch / rel, args.size_mib)
        size = (scratch / rel).stat().st_size
        servers: dict[str, Any] = {}
        port = free_port()
        servers["origin"] = (
            [sys.executable, "-m", "testbed.cli", "origin", "serve", "--root", str(scratch)]
            + ["--port", str(port)],
            f"http://127.0.0.1:{port}/bench/big/resolve/main/model.safetensors",
            {"cwd": REPO_ROOT},
        )
        if args.shaped_mbps:
            port = free_port()
            servers[f"origin@{args.shaped_mbps:g}Mbit"] = (
                [sys.executable, "-m", "testbed.cli", "origin", "serve", "--root", str(scratch)]
                + ["--port", str(port), "--rate-mbps", str(args.shaped_mbps)],
                f"http://127.0.0.1:{port}/bench/big/resolve/main/model.safetensors",
                {"cwd": REPO_ROOT},
            )
        if Path(NGINX).exists():
            port = free_port()
            state = scratch / "nginx"
            for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
                (state / sub).mkdir(parents=True, exist_ok=True)
            conf = state / "nginx.conf"
            conf.write_text(_nginx_conf(scratch, port, state))
            servers["nginx"] = (
                [NGINX, "-c", str(conf), "-p", str(state)],
                f"http://127.0.0.1:{port}/{rel}",
                {},
            )
        port = free_port()
        servers["http.server"] = (
            [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
            + ["--directory", str(scratch)],
            f"http://127.0.0.1:{port}/{rel}",
            {},
        )
        wanted = [s for s in args.servers.split(",") if s and s in servers]
        wanted += [s for s in servers if s.startswith("origin@")]
        clients = [c for c in args.clients.split(",") if c]
        if "curl" in clients and shutil.which("curl") is None:
            clients.remove("curl")
        rates: dict[tuple[str, str], list[float]] = {(s, c): [] for s in wanted for c in clients}
        with ExitStack() as stack:
            for name in wanted:
                cmd, url, kwargs = servers[name]
                stack.enter_context(_process(cmd, url, **kwargs))
                _download(url)  # warm the page cache and the server
            # Round-robin so every server sees the same background load (the machine is shared).
            for _ in range(args.repeats):
                for name in wanted:
                    url = servers[name][1]
                    for client in clients:
                        received, seconds = _curl(url) if client == "curl" else _download(url)
                        if received != size:
                            raise RuntimeError(f"{name}: got {received} of {size} bytes")
                        rates[(name, client)].append(received / seconds / 1e6)
        rows = [
            {
                "bench": "origin",
                "server": name,
                "client": client,
                "size_bytes": size,
                "repeats": args.repeats,
                "median_mb_s": round(statistics.median(values), 1),
                "best_mb_s": round(max(values), 1),
                "load_avg_1m": round(os.getloadavg()[0], 2),
                "cpus": os.cpu_count(),
                "git_sha": _git_sha(),
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            for (name, client), values in rates.items()
        ]
        sys.stdout.write(f"{'server':<18} {'client':<7} {'median MB/s':>12} {'best MB/s':>10}\n")
        for row in rows:
            sys.stdout.write(
                f"{row['server']:<18} {row['client']:<7} {row['median_mb_s']:>12.1f} "
                f"{row['best_mb_s']:>10.1f}\n"
            )
        sys.stdout.write(
            f"file {size / 1e6:.0f} MB, {args.repeats} repeats (round-robin), "
            f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs\n"
        )
        args.out.mkdir(parents=True, exist_ok=True)
        with (args.out / "origin.jsonl").open("a") as fh:
            for row in rows:
                fh.write(json.dumps(row, sort_keys=True) + "\n")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
