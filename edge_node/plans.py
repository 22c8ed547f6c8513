"""The edge node's plan worker: accepted plans are applied in the background, one at a time.

``PUT /v1/plan`` validates a plan synchronously (schema, manifests, allow-list, block ids,
fencing and capacity: :func:`edge_node.ingest.check_fits`) and hands it to
:meth:`PlanWorker.submit`, which answers at once with a :class:`~core.wire.PlanAccepted`
(``plan_id``, version; 202). The worker thread owned by the node runs
:func:`edge_node.ingest.apply_plan` for one plan at a time (under the node's plan lock, so
repairs and deletes never race it). :class:`PlanProgress` is what ``GET /v1/plan`` reports
(:class:`~core.wire.PlanStatus`).

Rules:

- A plan older than the applied version, or than the plan queued or running, is refused
  (409 ``stale_plan``) and changes nothing: fencing holds for queued plans too.
- A plan of the same or a newer version supersedes the queued one (which never starts) and
  the running one: its transfer stops at the next chunk (:class:`~core.errors.PlanSupersededError`
  before any eviction; what it verified stays in the store, a half-received block leaves
  nothing). Its state becomes ``superseded`` and the newer plan runs next.
- ``GET /v1/plan`` describes the newest plan accepted: ``queued`` -> ``running`` ->
  ``applied`` | ``failed`` (with ``error_code``/``error``) | ``superseded``; progress counts
  belong to that plan only (a superseded transfer still winding down does not touch them).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

from core.errors import PlanSupersededError, TrimCacheError
from core.wire import PlanAccepted, PlanState, PlanStatus
from edge_node.errors import StalePlanError
from edge_node.ingest import Plan, apply_plan, check_fits
from edge_node.node import EdgeNode

logger = logging.getLogger(__name__)


@dataclass
class PlanJob:
    """One accepted plan and the flag that stops it."""

    plan_id: str
    plan: Plan
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass
class PlanProgress:
    """What ``GET /v1/plan`` reports; mutated under ``lock`` (by the worker and ``submit``)."""

    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    version: int | None = None  # last version applied successfully
    plan_id: str | None = None  # the newest plan accepted
    plan_version: int | None = None
    state: PlanState | None = None
    blocks_total: int = 0
    blocks_done: int = 0
    bytes_total: int = 0
    bytes_done: int = 0
    fetched_bytes_by_source: dict[str, int] = field(default_factory=dict)
    evicted_bytes: int = 0
    error_code: str | None = None
    error: str | None = None
    error_http_status: int | None = None
    held_models: list[str] = field(default_factory=list)
    started_at: float | None = None
    finished_at: float | None = None

    def accept(self, job: PlanJob) -> None:
        with self.lock:
            self.plan_id, self.plan_version, self.state = job.plan_id, job.plan.version, "queued"
            self.blocks_total = self.blocks_done = self.bytes_total = self.bytes_done = 0
            self.fetched_bytes_by_source = {}
            self.evicted_bytes = 0
            self.error_code = self.error = None
            self.error_http_status = None
            self.held_models = []
            self.started_at = self.finished_at = None

    def observer(self, plan_id: str) -> _Observer:
        return _Observer(self, plan_id)

    def finish(
        self,
        plan_id: str,
        state: PlanState,
        *,
        result: dict[str, Any] | None = None,
        error: TrimCacheError | None = None,
    ) -> None:
        """Record the end of ``plan_id`` (only while it is still the newest plan, except that
        an applied version always counts for fencing)."""
        with self.lock:
            if result is not None:
                self.version = int(result["version"])
            if self.plan_id != plan_id:
                return
            self.state = state
            self.finished_at = time.time()
            if result is not None:
                self.evicted_bytes = int(result["evicted_bytes"])
                self.held_models = list(result["held_models"])
            if error is not None:
                self.error_code, self.error = str(error.code), str(error)
                self.error_http_status = error.status_code

    def to_status(self) -> PlanStatus:
        with self.lock:
            busy = self.state in ("queued", "running")
            if busy:
                summary = "applying"
            elif self.state == "failed":
                summary = "failed"
            elif self.version is not None:
                summary = "applied"
            else:
                summary = "idle"
            return PlanStatus.model_validate(
                {
                    "version": self.version,
                    "status": summary,
                    "applying_version": self.plan_version if busy else None,
                    "plan_id": self.plan_id,
                    "plan_version": self.plan_version,
                    "state": self.state,
                    "progress": {
                        "blocks_total": self.blocks_total,
                        "blocks_done": self.blocks_done,
                        "bytes_total": self.bytes_total,
                        "bytes_done": self.bytes_done,
                    },
                    "fetched_bytes_by_source": dict(self.fetched_bytes_by_source),
                    "evicted_bytes": self.evicted_bytes,
                    "error_code": self.error_code,
                    "error": self.error,
                    "error_http_status": self.error_http_status,
                    "held_models": list(self.held_models),
                    "started_at": self.started_at,
                    "finished_at": self.finished_at,
                }
            )


@dataclass(frozen=True, slots=True)
class _Observer:
    """Progress callbacks of one plan: ignored once a newer plan is the current one."""

    progress: PlanProgress
    plan_id: str

    def started(self, blocks: int, nbytes: int) -> None:
        p = self.progress
        with p.lock:
            if p.plan_id == self.plan_id:
                p.state = "running"
                p.blocks_total, p.bytes_total = blocks, nbytes
                p.started_at = time.time()

    def fetched(self, source: str, nbytes: int) -> None:
        p = self.progress
        with p.lock:
            if p.plan_id == self.plan_id:
                p.blocks_done += 1
                p.bytes_done += nbytes
                p.fetched_bytes_by_source[source] = (
                    p.fetched_bytes_by_source.get(source, 0) + nbytes
                )


class PlanWorker:
    """Applies accepted plans in the background, newest first (see the module docstring)."""

    def __init__(self, node: EdgeNode, client: httpx.Client, progress: PlanProgress) -> None:
        self.node = node
        self.client = client
        self.progress = progress
        self._cond = threading.Condition()
        self._queued: PlanJob | None = None
        self._running: PlanJob | None = None
        self._stop = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="plan-worker", daemon=True)
        self._thread.start()

    def stop(self, *, timeout_s: float = 30.0) -> None:
        with self._cond:
            self._stop = True
            for job in (self._queued, self._running):
                if job is not None:
                    job.cancel.set()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            self._thread = None

    def submit(self, plan: Plan) -> PlanAccepted:
        """Queue ``plan`` (superseding an older queued or running one) or refuse it.

        Raises:
            StalePlanError: older than the applied plan or than the one queued or running.
            StoreFullError: the plan does not fit the node's capacity.
        """
        check_fits(self.node, plan)
        with self._cond:
            for job in (self._queued, self._running):
                if job is not None and plan.version < job.plan.version:
                    raise StalePlanError(
                        f"plan version {plan.version} is older than the version "
                        f"{job.plan.version} being applied"
                    )
            job = PlanJob(plan_id=uuid.uuid4().hex, plan=plan)
            for old in (self._queued, self._running):
                if old is not None:
                    old.cancel.set()
                    logger.info(
                        "plan superseded node_id=%s plan_id=%s version=%s by plan_id=%s",
                        self.node.node_id,
                        old.plan_id,
                        old.plan.version,
                        job.plan_id,
                    )
            self._queued = job
            self.progress.accept(job)
            self._cond.notify_all()
        return PlanAccepted(plan_id=job.plan_id, version=plan.version)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._queued is None and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                job, self._queued = self._queued, None
                assert job is not None
                self._running = job
            try:
                self._apply(job)
            finally:
                with self._cond:
                    self._running = None

    def _apply(self, job: PlanJob) -> None:
        progress = self.progress
        if job.cancel.is_set():  # superseded while queued: never started
            return
        try:
            result = apply_plan(
                self.node,
                job.plan,
                client=self.client,
                observer=progress.observer(job.plan_id),
                cancel=job.cancel,
            )
        except PlanSupersededError as exc:
            progress.finish(job.plan_id, "superseded", error=exc)
        except TrimCacheError as exc:
            logger.warning(
                "plan failed node_id=%s plan_id=%s version=%s: %s",
                self.node.node_id,
                job.plan_id,
                job.plan.version,
                exc,
            )
            progress.finish(job.plan_id, "failed", error=exc)
        except Exception as exc:  # noqa: BLE001 - the worker must survive anything
            logger.exception("plan failed node_id=%s plan_id=%s", self.node.node_id, job.plan_id)
            internal = TrimCacheError(f"{type(exc).__name__}: {exc}")
            progress.finish(job.plan_id, "failed", error=internal)
        else:
            progress.finish(job.plan_id, "applied", result=result)
