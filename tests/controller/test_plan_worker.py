"""Planning in the worker process (controller.plan_worker): the same placement as planning in
the planner's thread, the plan lock still fences the store, and a worker that dies (killed
between plans or in the middle of one) is replaced. Real Redis, real worker processes; the
nodes' URLs are a closed port (their pushes fail at once: only the plan is under test)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import signal
from pathlib import Path
from typing import Any, Literal

import pytest

from controller import plan_compute
from controller.metrics import Metrics
from controller.plan_worker import PlanWorker, PlanWorkerError
from controller.planner import Planner
from controller.settings import Settings
from controller.state import (
    PLACEMENT_KEY,
    PLAN_LOCK_KEY,
    CatalogueEntry,
    NodeRecord,
    RedisState,
)
from core.digest import BlockId
from core.manifest import BlockRef, FileEntry, ModelManifest
from tests.helpers import wait_until

MODELS = [f"m{i}" for i in range(6)]
NODES = [f"edge-{n}" for n in range(8)]


def _manifest(model_id: str, family: int) -> ModelManifest:
    """Ten 1-2 MB file blocks, the first six shared by the model's family."""
    files = []
    for i in range(10):
        owner = f"family{family}" if i < 6 else model_id
        bid = BlockId(hashlib.sha256(f"{owner}/{i}".encode()).hexdigest())
        size = 1_000_000 + int(bid[:5], 16)
        files.append(FileEntry(f"f{i}.bin", size, bid, "file", (BlockRef(bid, 0, size),)))
    return ModelManifest(model_id, f"test/{model_id}", "0" * 40, tuple(files))


def _fill(state: RedisState) -> None:
    for i, model_id in enumerate(MODELS):
        state.put_model(CatalogueEntry.of(_manifest(model_id, i % 2), requested_revision="main"))
    for n, node_id in enumerate(NODES):
        record = NodeRecord(
            node_id=node_id,
            url="http://127.0.0.1:9",
            capacity_bytes=30_000_000,
            position=(n * 150.0, 0.0),
            models=(MODELS[n % len(MODELS)],),
        )
        state.put_node(record, ttl_s=600)
    for n, node_id in enumerate(NODES):  # demand steers the placement (not the prior alone)
        for _ in range(1 + n % 3):
            state.record_demand(
                area_id=f"area-{node_id}",
                model_id=MODELS[n % 3],
                outcome="hit",
                bytes_by_kind={},
                half_life_s=3600,
            )


def _planner(
    redis_url: str, plan_worker: Literal["process", "thread"]
) -> tuple[Planner, RedisState]:
    settings = Settings(
        redis_url=redis_url,
        origin_url="http://127.0.0.1:9",
        auto_plan=False,
        plan_worker=plan_worker,
        push_timeout_s=5,
    )
    state = RedisState(redis_url)
    return Planner(state, settings, metrics=Metrics()), state


def _placed(record: dict[str, Any]) -> dict[str, Any]:
    return {k: record[k] for k in ("servers", "hit_ratio", "status", "solver", "problem")}


def test_the_worker_plans_the_same_placement_and_the_store_stays_fenced(redis_url: str) -> None:
    placements = {}
    modes: tuple[Literal["thread", "process"], ...] = ("thread", "process")
    for mode in modes:
        planner, state = _planner(redis_url, mode)
        try:
            state.client.flushdb()
            _fill(state)
            record = planner.plan(trigger="test")
            assert planner.wait_rounds(timeout_s=60)
            stored = state.get_placement()
            assert stored is not None and stored["version"] == record["version"]
            attempt = state.get_plan_attempt() or {}
            assert attempt["outcome"] == "ok"
            assert set(attempt["timings_s"]) >= {"read", "compute", "problem", "solve", "store"}
            placements[mode] = _placed(stored)
            # The lock lapses while the plan is computed (the worker never sees the lock):
            # the placement is not stored over the one a successor would write.
            settings = planner.settings
            guard = state.plan_lock(timeout_s=settings.plan_lock_ttl_s, blocking_timeout_s=0)
            with guard as acquired:
                assert acquired
                state.client.set(PLAN_LOCK_KEY, "a successor's token")
                state.client.delete(PLACEMENT_KEY)
                planner._plan_locked("lapsed", guard)
            assert state.get_placement() is None
        finally:
            planner.close()
            state.close()
    # The same placement; the hit ratio up to the demand's decay between the two runs.
    process, thread = placements["process"], placements["thread"]
    assert process.pop("hit_ratio") == pytest.approx(thread.pop("hit_ratio"), rel=1e-9)
    assert process == thread
    assert any(p["models"] for p in process["servers"].values())


def test_a_killed_worker_is_replaced(redis_url: str) -> None:
    planner, state = _planner(redis_url, "process")
    try:
        _fill(state)
        assert planner._worker is not None
        catalogue = state.list_models()
        nodes = state.live_nodes()
        first = planner._compute(nodes, catalogue, planner.active_topology(nodes), None)
        assert first.pid not in (0, os.getpid())
        os.kill(first.pid, signal.SIGKILL)  # between plans: the next one gets a fresh worker
        record = planner.plan(trigger="after-kill")
        assert record["version"] >= 1
        assert (state.get_plan_attempt() or {})["outcome"] == "ok"
        again = planner._compute(nodes, catalogue, planner.active_topology(nodes), None)
        assert again.pid != first.pid
        assert again.servers == first.servers
    finally:
        planner.close()
        state.close()


def die_once(marker: str) -> int:
    """Killed by SIGKILL the first time (leaving ``marker``), then answers its pid."""
    if not Path(marker).exists():
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return os.getpid()


def die_always() -> int:
    os.kill(os.getpid(), signal.SIGKILL)
    return 0


def test_a_worker_killed_mid_job_is_retried_once_then_reported(tmp_path: Path) -> None:
    worker = PlanWorker()
    try:
        pid = worker.run(die_once, str(tmp_path / "died"))
        assert pid != os.getpid() and (tmp_path / "died").exists()
        with pytest.raises(PlanWorkerError):
            worker.run(die_always)
        assert worker.run(os.getpid) not in (pid, os.getpid())  # a fresh worker again
    finally:
        worker.close()


def test_a_plan_whose_worker_keeps_dying_is_an_error_attempt(redis_url: str) -> None:
    planner, state = _planner(redis_url, "process")
    try:
        _fill(state)
        assert planner._worker is not None
        planner._worker.close()  # as dead as can be: every job fails at once
        record = planner.plan(trigger="test")
        assert record == {"version": 0, "servers": {}}
        attempt = state.get_plan_attempt() or {}
        assert attempt["outcome"] == "error" and "PlanWorkerError" in attempt["error"]
        assert state.get_placement() is None
    finally:
        planner.close()
        state.close()


def test_the_worker_computes_exactly_what_the_thread_computes() -> None:
    """The job and its answer cross the process boundary (pickle) unchanged, and the worker's
    answer is the thread's, bit for bit (but the pid and the wall times)."""
    import pickle

    from controller.topology import default_topology

    nodes = [
        NodeRecord(node_id=n, url="http://127.0.0.1:9", capacity_bytes=30_000_000)
        for n in NODES[:3]
    ]
    job = plan_compute.PlanJob(
        settings=Settings(redis_url="redis://127.0.0.1:9/0", origin_url="http://127.0.0.1:9"),
        nodes=nodes,
        catalogue=[CatalogueEntry.of(_manifest(m, 0)) for m in MODELS[:2]],
        topology=plan_compute.PlainTopology.of(
            default_topology({n.node_id: (0, 0) for n in nodes})
        ),
        demand_counts={},
        previous=None,
    )
    computed = plan_compute.compute(pickle.loads(pickle.dumps(job)))
    assert pickle.loads(pickle.dumps(computed)) == computed
    assert computed.replace and computed.problem["models"] == 2
    worker = PlanWorker()
    try:
        remote = worker.compute(job)
    finally:
        worker.close()
    assert remote.pid != os.getpid()

    def plain(c: plan_compute.Computed) -> plan_compute.Computed:
        return dataclasses.replace(c, pid=0, problem_s=0.0, solve_s=0.0, solve_seconds=0.0)

    assert plain(remote) == plain(computed)


def _gone(pid: int) -> bool:
    """The process no longer runs (no such pid, or a zombie waiting to be reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def test_the_worker_ends_with_a_killed_controller(tmp_path: Path) -> None:
    """SIGKILL of the process that started the worker: the worker (and with it the fork
    server) exits by itself instead of waiting for a job forever."""
    import subprocess
    import sys

    code = (
        "import os, time\n"
        "from controller.plan_worker import PlanWorker\n"
        "worker = PlanWorker()  # kept: a collected pool shuts its worker down\n"
        "print(worker.run(os.getpid), flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        worker_pid = int(parent.stdout.readline())
        assert not _gone(worker_pid)
    finally:
        parent.kill()
        parent.wait(timeout=30)
    wait_until(lambda: _gone(worker_pid), timeout_s=30, what="the orphaned worker exits")
