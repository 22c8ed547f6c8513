"""A bounded chaos run on loopback: clients fetch while the control plane and an edge crash.

Real processes (redis-server, the controller, two edge nodes), the real origin app, real SDK
clients in threads fetching the mini zoo into fresh device caches. Faults, one after the other:
an edge SIGKILLed and restarted, Redis SIGKILLed and restarted (append-only file), the
controller SIGKILLed and restarted, then one edge's disk (a real tmpfs) filled up and a block
corrupted at rest on that edge, so its repair meets a full disk; then the disk is freed. Every
fetch must end byte-identical to the zoo or with a clean ``TrimCacheError``; no client may
receive a wrong byte as success; while no stored byte is damaged, every placed model has an edge
copy (sampled); and once the disk is freed every placed model is held by an edge again. The run
prints how many of each fault it injected and how the fetches ended.
"""

from __future__ import annotations

import errno
import hashlib
import random
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.errors import TrimCacheError
from tests.controller.conftest import MINI_MODELS
from tests.controller.procs import ServiceProcess, controller_process, edge_process
from tests.controller.redis_proc import RedisProcess
from tests.helpers import wait_until

TOKEN = "chaos-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CLIENTS = 20


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def expected_files(mini_zoo: Path) -> dict[str, dict[str, str]]:
    out = {}
    for model_id in MINI_MODELS:
        repo = mini_zoo / "repos" / "mini" / model_id
        out[model_id] = {p.name: sha256(p) for p in repo.iterdir() if p.is_file()}
    return out


def mount_tmpfs(path: Path, size: str) -> bool:
    """A real small filesystem for an edge's data dir (False where mounting is not allowed)."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def fill_disk(path: Path) -> int:
    """Write a ballast file under ``path`` until its filesystem reports ENOSPC; its size."""
    chunk = b"\0" * (1 << 20)
    written = 0
    with open(path / "ballast", "wb", buffering=0) as fh:
        while True:
            try:
                written += fh.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                chunk = chunk[: len(chunk) // 2]
                if len(chunk) < 512:
                    return written


class Chaos:
    def __init__(self, tmp: Path, origin_url: str) -> None:
        self.tmp = tmp
        # Each edge's data dir on its own 32 MiB tmpfs, so one disk can really fill.
        self.mounts = [p for p in (tmp / "edge-1", tmp / "edge-2") if mount_tmpfs(p, "32m")]
        self.redis = RedisProcess(tmp / "redis", appendonly=True)
        self.redis.start()
        self.controller = controller_process(
            tmp,
            redis_url=self.redis.url,
            origin_url=origin_url,
            auth_token=TOKEN,
            heartbeat_expiry_s=4,
            plan_interval_s=0,
            check_interval_s=0.2,
            settle_s=0.5,
            retry_interval_s=0.5,
            redis_timeout_s=0.5,
            push_stall_s=5,
        ).start()
        self.edges: dict[str, ServiceProcess] = {
            node_id: edge_process(
                tmp,
                node_id,
                data_dir=tmp / node_id,
                controller_url=self.controller.url,
                origin_url=origin_url,
                auth_token=TOKEN,
                heartbeat_interval_s=0.3,
                durable="false",
                scrub_on_start="false",
            ).start()
            for node_id in ("edge-1", "edge-2")
        }
        self.down: set[str] = set()
        self.faults: Counter[str] = Counter()

    def placement(self) -> dict[str, Any]:
        doc: dict[str, Any] = httpx.get(f"{self.controller.url}/v1/placement", timeout=5).json()
        return doc

    def settled(self) -> bool:
        p = self.placement()
        return bool(p["servers"]) and all(s.get("status") == "applied" for s in p["push"].values())

    def held(self, node_id: str) -> set[str]:
        doc = httpx.get(f"{self.edges[node_id].url}/v1/models", timeout=5).json()
        return {m["model_id"] for m in doc["models"]}

    def close(self) -> None:
        for edge in self.edges.values():
            edge.stop()
        self.controller.stop()
        self.redis.stop()
        for mount in self.mounts:
            subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_chaos(tmp_path: Path, mini_zoo: Path, mini_origin: str) -> None:
    from client import Client

    want = expected_files(mini_zoo)
    chaos = Chaos(tmp_path, mini_origin)
    outcomes: Counter[str] = Counter()
    wrong: list[str] = []
    unclean: list[str] = []
    lost: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()
    phase = ["start"]  # the last fault injected, named in every sample
    ever_held: set[str] = set()  # models some edge has listed as held
    try:
        for model_id in MINI_MODELS:
            body = {"model_id": model_id, "repo_id": f"mini/{model_id}"}
            r = httpx.post(f"{chaos.controller.url}/v1/models", json=body, headers=AUTH)
            assert r.status_code == 201, r.text

        def all_placed_held() -> bool:
            placement = chaos.placement()
            placed = {m for s in placement["servers"].values() for m in s["models"]}
            return placed <= set().union(*(chaos.held(n) for n in chaos.edges))

        # Before any fault: the plan is applied and every placed copy delivered. (A later plan
        # may still place a model for the first time; the sampler counts only models some edge
        # has held as lost.)
        wait_until(lambda: chaos.settled() and all_placed_held(), timeout_s=60, interval_s=0.2)

        def fetch_loop(i: int) -> None:
            rng = random.Random(i)
            n = 0
            while not stop.is_set():
                n += 1
                model_id = rng.choice(MINI_MODELS)
                cache = tmp_path / "devices" / f"c{i}-{n}"
                try:
                    with Client(controller_url=chaos.controller.url, cache_dir=cache) as c:
                        fetched = c.fetch(model_id, load=False)
                    got = {
                        p.name: sha256(p)
                        for p in Path(fetched.path).iterdir()
                        if p.is_file() and not p.name.startswith(".")  # the SDK's own record
                    }
                    with lock:
                        if got != want[model_id]:
                            wrong.append(f"{model_id}: {got}")
                        outcomes["ok"] += 1
                except TrimCacheError as exc:
                    with lock:
                        outcomes[f"error:{exc.code}"] += 1
                except Exception as exc:  # noqa: BLE001 - anything else is an unclean failure
                    with lock:
                        unclean.append(repr(exc))

        def sample_copies() -> None:
            while not stop.is_set():
                time.sleep(0.2)
                if chaos.down:
                    continue
                # Edges are read one after the other, so a handover completing between two reads
                # could look like a loss in one order: a model counts as lost only when it is
                # missing from both a forward and a backward pass over the edges.
                try:
                    placement = chaos.placement()
                    placed = {m for s in placement["servers"].values() for m in s["models"]}
                    order = sorted(chaos.edges)
                    by_edge = {n: chaos.held(n) for n in order}
                    again = {n: chaos.held(n) for n in reversed(order)}
                except (httpx.HTTPError, ValueError, KeyError):
                    continue  # the controller or an edge is restarting
                held = set().union(*by_edge.values(), *again.values())
                ever_held.update(held)
                # A loss is a placed model some edge held before and none holds now (a model
                # placed for the first time is not lost while it is still being delivered).
                missing = (placed & ever_held) - held
                if not chaos.down and missing:
                    with lock:
                        lost.append(
                            f"[{phase[0]}] placed but held nowhere: {sorted(missing)};"
                            f" held {by_edge};"
                            f" placement v{placement['version']} {placement['push']}"
                        )

        threads = [threading.Thread(target=fetch_loop, args=(i,)) for i in range(CLIENTS)]
        threads.append(threading.Thread(target=sample_copies))
        for t in threads:
            t.start()
        time.sleep(2)

        phase[0] = "edge_sigkill"
        # 1. an edge crashes and comes back
        victim = chaos.edges["edge-1"]
        chaos.down.add("edge-1")
        victim.kill()
        chaos.faults["edge_sigkill"] += 1
        time.sleep(2)
        victim.launch().wait_healthy()
        chaos.down.discard("edge-1")
        time.sleep(2)
        phase[0] = "redis_sigkill"
        # 2. Redis crashes and comes back (append-only file: nothing lost)
        chaos.down.add("redis")
        chaos.redis.stop()
        chaos.faults["redis_sigkill"] += 1
        time.sleep(1)
        chaos.redis.start()
        chaos.down.discard("redis")
        time.sleep(2)
        phase[0] = "controller_sigkill"
        # 3. the controller crashes and comes back on its port
        chaos.down.add("controller")
        chaos.controller.kill()
        chaos.faults["controller_sigkill"] += 1
        chaos.controller.launch().wait_healthy()
        chaos.down.discard("controller")
        time.sleep(2)

        # 4. the disk of an edge that holds blocks fills up (another tenant's ballast), and
        # a block flips a byte at rest there, so its repair meets a full disk; then the disk
        # is freed. While stored bytes are damaged the copy sampler pauses ("damaged" below);
        # the end of the run checks that every placed model is held again.
        def stored_blocks() -> list[Path]:
            return sorted(
                p
                for node_id in sorted(chaos.edges)
                for p in (tmp_path / node_id).glob("blocks/sha256/*/*")
                if p.is_file()
            )

        # The placement holds blocks again once the restarts above settled (on a loaded host a
        # re-plan after the controller's restart may still be delivering them).
        blocks = wait_until(stored_blocks, timeout_s=60, interval_s=0.2, what="stored blocks")
        target = max(blocks, key=lambda p: p.stat().st_size)
        damaged = target.relative_to(tmp_path).parts[0]
        chaos.down.add("damaged")
        if tmp_path / damaged in chaos.mounts:
            phase[0] = "disk_full"
            fill_disk(tmp_path / damaged)
            chaos.faults["disk_full"] += 1
        phase[0] = "block_corrupted"
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        with open(target, "r+b") as fh:  # in place: a full disk has no room for a copy
            fh.write(bytes(data))
        chaos.faults["block_corrupted"] += 1
        time.sleep(3)
        (tmp_path / damaged / "ballast").unlink(missing_ok=True)
        # The damage lasts until the copy is whole again: repaired by the edge or re-pushed
        # by the controller, within a bound; then the sampler resumes.
        wait_until(all_placed_held, timeout_s=60, interval_s=0.2)
        phase[0] = "recovered"
        chaos.down.discard("damaged")
        time.sleep(2)
        stop.set()
        for t in threads:
            t.join(timeout=120)
        wait_until(chaos.settled, timeout_s=60, interval_s=0.2)

        wait_until(all_placed_held, timeout_s=60, interval_s=0.5)
    finally:
        stop.set()
        chaos.close()
    print(f"chaos: faults={dict(chaos.faults)} fetches={dict(outcomes)} clients={CLIENTS}")
    assert wrong == [], wrong[:3]
    assert unclean == [], unclean[:3]
    # A placed model without an edge copy while no stored byte was damaged would be a loss.
    assert lost == [], lost[:2]
    assert outcomes["ok"] > 0
    assert chaos.faults["block_corrupted"] == 1
    if chaos.mounts:  # only where tmpfs can be mounted (root); said in the printed line
        assert chaos.faults["disk_full"] == 1
