"""Controller replicas on one Redis (issue 18, item 1): every replica serves, one plans.

Real processes: a redis-server, two controller processes (``trimcache controller serve``), edge
nodes given both controller URLs, and SDK clients given both. The planning replica (the leader
lease holder) is SIGKILLed while clients fetch: every fetch succeeds, the other replica takes the
lease and plans the change that follows, and both replicas answer the same placement version and
byte-identical routes before and after (the killed one restarted as a follower).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.controller.conftest import MINI_MODELS
from tests.controller.procs import ServiceProcess, controller_process, edge_process
from tests.controller.redis_proc import RedisProcess
from tests.helpers import wait_until

TOKEN = "replicas-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CLIENTS = 4
# Generous bounds of waits (not speed goals): a loaded 2-core CI host starts processes slowly.
WAIT_S = 90.0


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def get(url: str) -> Any:
    response = httpx.get(url, timeout=10)
    response.raise_for_status()
    return response.json()


class Replicas:
    def __init__(self, tmp: Path, origin_url: str) -> None:
        self.tmp, self.origin_url = tmp, origin_url
        self.redis = RedisProcess(tmp / "redis", appendonly=False)
        self.redis.start()
        self.controllers = {
            name: controller_process(
                tmp,
                name=name,
                replica_id=name,
                redis_url=self.redis.url,
                origin_url=origin_url,
                auth_token=TOKEN,
                heartbeat_expiry_s=4,
                plan_interval_s=0,
                check_interval_s=0.2,
                settle_s=0.5,
                retry_interval_s=0.5,
                plan_lock_ttl_s=3,
            )
            for name in ("ctl-a", "ctl-b")
        }
        self.edges: dict[str, ServiceProcess] = {}

    @property
    def urls(self) -> list[str]:
        return [c.url for c in self.controllers.values()]

    def start_edge(self, node_id: str) -> ServiceProcess:
        edge = edge_process(
            self.tmp,
            node_id,
            data_dir=self.tmp / node_id,
            controller_url=",".join(self.urls),  # both replicas: heartbeats fail over
            origin_url=self.origin_url,
            auth_token=TOKEN,
            heartbeat_interval_s=0.3,
            durable="false",
            scrub_on_start="false",
        ).start()
        self.edges[node_id] = edge
        return edge

    def placement(self, name: str) -> dict[str, Any]:
        doc: dict[str, Any] = get(f"{self.controllers[name].url}/v1/placement")
        return doc

    def planner(self, name: str) -> dict[str, Any]:
        doc: dict[str, Any] = get(f"{self.controllers[name].url}/v1/planner")
        return doc

    def settled(self, name: str, nodes: set[str]) -> dict[str, Any] | None:
        p = self.placement(name)
        done = set(p["servers"]) == nodes and all(
            s.get("status") == "applied" for s in p["push"].values()
        )
        return p if done else None

    def routes(self, name: str) -> dict[str, bytes]:
        base = self.controllers[name].url
        out = {}
        for model_id in MINI_MODELS:
            response = httpx.get(f"{base}/v1/routes/{model_id}", timeout=10)
            response.raise_for_status()
            out[model_id] = response.content
        return out

    def close(self) -> None:
        for edge in self.edges.values():
            edge.stop()
        for controller in self.controllers.values():
            controller.stop()
        self.redis.stop()


@pytest.mark.slow
def test_sigkill_of_the_planning_replica(tmp_path: Path, mini_zoo: Path, mini_origin: str) -> None:
    from client import Client

    want = {
        m: {p.name: sha256(p) for p in (mini_zoo / "repos" / "mini" / m).iterdir() if p.is_file()}
        for m in MINI_MODELS
    }
    bed = Replicas(tmp_path, mini_origin)
    outcomes: Counter[str] = Counter()
    failures: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()
    try:
        a, b = bed.controllers["ctl-a"], bed.controllers["ctl-b"]
        # ctl-a first, so it holds the leader lease (the planning replica) before ctl-b starts.
        a.start()
        wait_until(
            lambda: bed.planner("ctl-a")["leading"],
            timeout_s=WAIT_S,
            what="ctl-a taking the leader lease",
        )
        b.start()
        first = bed.planner("ctl-b")
        assert first["replica_id"] == "ctl-b" and not first["leading"]
        assert first["leader"]["replica_id"] == "ctl-a"
        term_a = first["leader"]["term"]

        # Registrations and catalogue writes through the follower: shared state, not its own.
        for model_id in MINI_MODELS:
            body = {"model_id": model_id, "repo_id": f"mini/{model_id}"}
            r = httpx.post(f"{b.url}/v1/models", json=body, headers=AUTH, timeout=30)
            assert r.status_code == 201, r.text
        bed.start_edge("edge-1")
        bed.start_edge("edge-2")
        before = wait_until(
            lambda: bed.settled("ctl-b", {"edge-1", "edge-2"}),
            timeout_s=WAIT_S,
            what="the first placement applied on edge-1 and edge-2",
        )
        assert before["planned_by"] == "ctl-a"
        # Before: both replicas answer the same placement version and the same routes.
        assert bed.placement("ctl-a")["version"] == before["version"]
        assert bed.routes("ctl-a") == bed.routes("ctl-b")
        assert {m for s in before["servers"].values() for m in s["models"]}

        def fetch_loop(i: int) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                model_id = MINI_MODELS[(i + n) % len(MINI_MODELS)]
                cache = tmp_path / "devices" / f"c{i}-{n}"
                try:
                    with Client(controller_url=bed.urls, cache_dir=cache) as c:
                        fetched = c.fetch(model_id, load=False)
                    got = {
                        p.name: sha256(p)
                        for p in Path(fetched.path).iterdir()
                        if p.is_file() and not p.name.startswith(".")
                    }
                    with lock:
                        if got != want[model_id]:
                            failures.append(f"{model_id}: wrong bytes {got}")
                        elif fetched.report.get("offline") or fetched.report.get("fallback_origin"):
                            failures.append(f"{model_id}: not routed: {fetched.report}")
                        else:
                            outcomes["ok"] += 1
                except Exception as exc:  # noqa: BLE001 - every failure is a test failure
                    with lock:
                        failures.append(f"{model_id}: {exc!r}")

        threads = [threading.Thread(target=fetch_loop, args=(i,)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        wait_until(lambda: outcomes["ok"] >= CLIENTS, timeout_s=WAIT_S, what="first fetches")

        a.kill()  # SIGKILL the planning replica: it releases nothing
        killed = time.monotonic()
        killed_at_ok = outcomes["ok"]
        # A change the planner must act on, while only ctl-b is up: a third edge joins.
        bed.start_edge("edge-3")
        took = wait_until(
            lambda: (p := bed.planner("ctl-b"))["leading"] and p,
            timeout_s=WAIT_S,
            what="ctl-b taking the leader lease after ctl-a was SIGKILLed",
        )
        assert took["leader"] == {"replica_id": "ctl-b", "term": took["leader"]["term"]}
        assert took["leader"]["term"] > term_a
        took_s = time.monotonic() - killed
        after = wait_until(
            lambda: bed.settled("ctl-b", {"edge-1", "edge-2", "edge-3"}),
            timeout_s=WAIT_S,
            what="ctl-b planning (and edge-3 applying) a placement with edge-3",
        )
        assert after["version"] > before["version"]
        assert after["planned_by"] == "ctl-b"
        applied_s = time.monotonic() - killed
        # Clients keep fetching through ctl-b.
        wait_until(
            lambda: outcomes["ok"] >= killed_at_ok + CLIENTS,
            timeout_s=WAIT_S,
            what="fetches after the SIGKILL",
        )

        # ctl-a comes back: a follower now, answering what ctl-b planned.
        a.launch().wait_healthy()
        back = bed.planner("ctl-a")
        assert not back["leading"] and back["leader"]["replica_id"] == "ctl-b"
        time.sleep(0.5)  # let a few more fetches run against both
        stop.set()
        for t in threads:
            t.join(timeout=120)
        current = bed.placement("ctl-b")
        assert bed.placement("ctl-a")["version"] == current["version"] >= after["version"]
        assert bed.routes("ctl-a") == bed.routes("ctl-b")
    finally:
        stop.set()
        bed.close()
    print(
        f"replicas: fetches={dict(outcomes)} failures={len(failures)} lease taken "
        f"{took_s:.1f} s after the SIGKILL, v{after['version']} (with edge-3) applied after "
        f"{applied_s:.1f} s; lease 3 s"
    )
    assert failures == [], failures[:3]
    assert outcomes["ok"] > 0
