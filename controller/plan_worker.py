"""The planner's worker process: runs :func:`controller.plan_compute.compute` (the problem,
the solver runs, the replan decision) outside the controller process.

Why: that work is ~1 s of pure-Python CPU per plan over 1,000 nodes. In a thread of the
controller it holds the GIL against every request thread, and ``GET /v1/status`` (a ~1 MB
answer whose reads and writes each give the GIL up and wait to get it back) waited behind it
(README, the #18 scale rows). In its own process (niced, :data:`WORKER_NICE`) it costs the
API a pipe read.

One process, started from a ``forkserver`` (never ``fork``: the controller has threads and
sockets), with this module's imports preloaded, so a new worker is a fork of a warm
interpreter. It is started on the first job and kept. A worker that dies (killed, out of
memory) is replaced and the job run once more in a fresh one; a second death raises
:class:`PlanWorkerError`. The caller keeps the plan lock, its renewal and the fenced store
(:mod:`controller.planner`): a worker never touches Redis.

A worker ends with the controller, however that ends: it checks every
:data:`PARENT_CHECK_S` that the controller process still exists and exits when it does not
(a pool worker otherwise waits for its next job forever once its parent was killed, and
keeps the fork server alive with it).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from controller import plan_compute

logger = logging.getLogger(__name__)

T = TypeVar("T")
#: Imported once by the fork server, so every worker starts with them.
PRELOAD = ["controller.plan_worker"]
#: The worker's niceness above the controller's: a plan is background work, so on a busy
#: machine the controller's requests get the CPU before the solver (the plan takes longer
#: only while they need it).
WORKER_NICE = 5
#: How often a worker looks whether the controller process that started it still exists.
PARENT_CHECK_S = 1.0


class PlanWorkerError(RuntimeError):
    """The worker process died twice on one job, or the worker is closed (the planner
    records the plan attempt as ``error``; the next plan starts a fresh worker)."""


class PlanWorker:
    """A one-process pool for plan computations (module docstring); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self._closed = False

    def compute(self, job: plan_compute.PlanJob) -> plan_compute.Computed:
        """:func:`controller.plan_compute.compute` of ``job`` in the worker process."""
        return self.run(plan_compute.compute, job)

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the worker (``fn`` importable by name, arguments and result
        picklable); an exception ``fn`` raises is raised here. A worker that dies is replaced
        and ``fn`` run once more; raises PlanWorkerError when the second one dies too."""
        for attempt in (1, 2):
            pool = self._current()
            try:
                return pool.submit(fn, *args).result()
            except BrokenProcessPool as exc:
                self._discard(pool)
                logger.warning("plan worker died (attempt %d): %s", attempt, exc)
        raise PlanWorkerError("the plan worker process died twice computing this plan")

    def close(self) -> None:
        """Stop the worker (a job in flight is left to end; no new one starts)."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def _current(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._closed:
                raise PlanWorkerError("the plan worker is closed")
            if self._pool is None:
                context = multiprocessing.get_context("forkserver")
                context.set_forkserver_preload(PRELOAD)
                self._pool = ProcessPoolExecutor(
                    max_workers=1,
                    mp_context=context,
                    initializer=_init_worker,
                    initargs=(os.getpid(),),
                )
            return self._pool

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool = None
        pool.shutdown(wait=False, cancel_futures=True)


def _init_worker(parent_pid: int) -> None:
    """In the worker: lower its CPU priority by :data:`WORKER_NICE` and exit as soon as the
    process ``parent_pid`` is gone (module docstring)."""
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICE)

    def watch() -> None:
        while True:
            try:
                os.kill(parent_pid, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:
                pass  # exists (another user's pid would mean reuse: keep waiting)
            threading.Event().wait(PARENT_CHECK_S)

    threading.Thread(target=watch, name="plan-worker-parent", daemon=True).start()
