"""Verified block download with per-block fallback: few large requests, one hash per byte.

Internal logic:

1. Plan. The missing blocks, in file order, start at their best candidate source (the route's
   order). On an edge node, contiguous runs of them travel as one ``POST /v1/blocks:batch``: the
   bytes are split into ``connections_per_source`` runs (more only past ``batch_bytes``); on the
   origin, adjacent blocks of one file become one Range read
   (``GET {origin}/{repo_id}/resolve/{revision}/{path}``, up to ``range_bytes``). Requests run on
   one thread pool per fetch, at most ``connections_per_source`` at a time per source.
2. Receive. A request's body is read with :class:`client._wire.Wire` straight into 1 MiB
   buffers taken from a fixed ring (``buffers`` of them: the bound on bytes in flight). A full
   buffer goes to the store stage (:class:`_Stage`, one thread) and the receiver reads on.
3. Store and verify, off the receive path. The stage writes each buffer's pieces at their
   manifest offsets (:meth:`client._files.ModelWriter.write`) and feeds each block's sha256;
   at a block's end it compares. A verified block is journaled (resume for free); a bad one is
   sent, alone, to its next candidate source (its bytes are overwritten there). Each byte is
   received once, written once and hashed once.
4. Failures fall back per block: a transport error, 5xx or short body sends the request's blocks
   not yet received on, and marks the source dead for the rest of this fetch. Idempotent GETs are
   first retried ``retries`` times with full-jitter backoff (style E6); the batch POST is not
   retried, its blocks move on at once. A block with no candidate left is in
   :class:`NoSourceError`, which names every source tried.
"""

from __future__ import annotations

import hashlib
import json
import queue
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Literal, Protocol

from core.digest import BlockId
from core.manifest import ModelManifest

from ._errors import (
    BlockIntegrityError,
    ClientError,
    DiskFullError,
    EdgeUnavailableError,
    NoSourceError,
)
from ._route import Route, Source
from ._wire import Reply, Wire

ByteCallback = Callable[[str, int], None]
TaskKind = Literal["batch", "range"]

READ_CHUNK_BYTES = 1024 * 1024


class BlockSink(Protocol):
    """Where verified blocks go (:class:`client._files.ModelWriter`)."""

    def write(self, block_id: BlockId, pos: int, data: memoryview) -> None: ...

    def mark_verified(self, block_id: BlockId) -> None: ...


@dataclass(frozen=True, slots=True)
class DownloadOptions:
    """Tuning knobs of the downloader (see bench/client.py for measurements).

    Attributes:
        connections_per_source: parallel requests per source (2 fill loopback on 2 cores).
        batch_bytes: upper bound of one ``POST /v1/blocks:batch``.
        range_bytes: upper bound of one coalesced Range read from the origin.
        read_bytes: size of one receive buffer (one read call fills it).
        buffers: receive buffers per fetch (bytes in flight <= buffers x read_bytes).
        retries: extra attempts of an idempotent GET after a transport error or 503.
        backoff_s: base of the full-jitter backoff between attempts.
    """

    connections_per_source: int = 2
    batch_bytes: int = 256 * 1024 * 1024
    range_bytes: int = 64 * 1024 * 1024
    read_bytes: int = READ_CHUNK_BYTES
    buffers: int = 16
    retries: int = 2
    backoff_s: float = 0.05


@dataclass(slots=True)
class _Item:
    block_id: BlockId
    length: int
    path: str
    offset: int


@dataclass(slots=True)
class _Task:
    source: int
    kind: TaskKind
    items: list[_Item]


@dataclass(slots=True)
class _Outcome:
    stored: list[_Item] = field(default_factory=list)
    failed: list[tuple[_Item, str]] = field(default_factory=list)
    source_dead: bool = False


@dataclass(slots=True)
class DownloadResult:
    """What a download moved: verified bytes and blocks per source URL, plus failed attempts."""

    bytes_by_source: dict[str, int] = field(default_factory=dict)
    blocks_by_source: dict[str, int] = field(default_factory=dict)
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (url, block, reason)
    wasted_bytes: int = 0


class _Check:
    """One block's running sha256 in the store stage; ``ok`` is set at its last byte."""

    __slots__ = ("item", "digest", "ok")

    def __init__(self, item: _Item) -> None:
        self.item = item
        self.digest = hashlib.sha256()
        self.ok: bool | None = None


# (check, buffer start, buffer end, position in the block, block ends here)
_Piece = tuple[_Check, int, int, int, bool]


class _Stage:
    """The store stage: one thread writes and hashes full buffers; a fixed ring bounds memory.

    :meth:`buffer` blocks while every buffer is in flight (back-pressure on the receivers);
    :meth:`drain` waits until everything submitted so far is written and hashed.
    """

    def __init__(self, sink: BlockSink, *, count: int, size: int) -> None:
        self._sink = sink
        self._free: queue.Queue[bytearray] = queue.Queue()
        for _ in range(count):
            self._free.put(bytearray(size))
        self._work: queue.Queue[tuple[bytearray, list[_Piece]] | threading.Event | None] = (
            queue.Queue()
        )
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="trimcache-stage", daemon=True)
        self._thread.start()

    def buffer(self) -> bytearray:
        self._raise()
        return self._free.get()

    def give_back(self, buf: bytearray) -> None:
        self._free.put(buf)

    def submit(self, buf: bytearray, pieces: list[_Piece]) -> None:
        self._work.put((buf, pieces))

    def drain(self) -> None:
        done = threading.Event()
        self._work.put(done)
        done.wait()
        self._raise()

    def close(self) -> None:
        self._work.put(None)
        self._thread.join()

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        while True:
            job = self._work.get()
            if job is None:
                return
            if isinstance(job, threading.Event):
                job.set()
                continue
            buf, pieces = job
            try:
                if self.error is None:
                    view = memoryview(buf)
                    for check, lo, hi, pos, ends in pieces:
                        piece = view[lo:hi]
                        self._sink.write(check.item.block_id, pos, piece)
                        check.digest.update(piece)
                        if ends:
                            check.ok = check.digest.hexdigest() == check.item.block_id
                    view.release()
            except BaseException as exc:  # reported to the receivers (DiskFullError first)
                self.error = exc
            finally:
                self._free.put(buf)


def full_jitter(attempt: int, base_s: float) -> float:
    """Full-jitter backoff: uniform in ``[0, base_s * 2**attempt]``."""
    return random.uniform(0, base_s * (2**attempt))


class Downloader:
    """Fetch the missing blocks of one route into a sink (the model's files).

    Args:
        wire: the data-path HTTP reader.
        sink: where blocks are written and journaled once verified.
        route: sources and per-block candidates.
        options: batching, parallelism and retry settings.
        on_bytes: called with ``(source_url, nbytes)`` for every read (any thread).
    """

    def __init__(
        self,
        wire: Wire,
        sink: BlockSink,
        route: Route,
        *,
        options: DownloadOptions | None = None,
        on_bytes: ByteCallback | None = None,
    ) -> None:
        self._wire = wire
        self._sink = sink
        self._route = route
        self._manifest: ModelManifest = route.manifest
        self._opts = options or DownloadOptions()
        self._on_bytes = on_bytes
        self._slots = [
            threading.Semaphore(self._opts.connections_per_source) for _ in route.sources
        ]
        self._dead: set[int] = set()
        self._lock = threading.Lock()
        self._stage: _Stage | None = None

    # -- planning --------------------------------------------------------------------------
    def _plan(self, by_source: dict[int, list[_Item]]) -> list[_Task]:
        tasks: list[_Task] = []
        for index, items in by_source.items():
            items.sort(key=lambda i: (i.path, i.offset))
            if self._route.sources[index].kind == "origin":
                tasks.extend(self._plan_ranges(index, items))
            else:
                tasks.extend(self._plan_edge(index, items))
        # Largest first, so the long transfers start early and the tail stays short.
        tasks.sort(key=lambda t: -sum(i.length for i in t.items))
        return tasks

    def _plan_edge(self, index: int, items: list[_Item]) -> list[_Task]:
        """Split the blocks, in file order, into a few batches of about equal bytes."""
        total = sum(i.length for i in items)
        count = max(self._opts.connections_per_source, -(-total // max(1, self._opts.batch_bytes)))
        count = min(count, max(1, total // READ_CHUNK_BYTES), len(items))
        target = total / count
        tasks: list[_Task] = []
        run: list[_Item] = []
        run_bytes = 0
        for item in items:
            run.append(item)
            run_bytes += item.length
            if run_bytes >= target and len(tasks) < count - 1:
                tasks.append(_Task(index, "batch", run))
                run, run_bytes = [], 0
        if run:
            tasks.append(_Task(index, "batch", run))
        return tasks

    def _plan_ranges(self, index: int, items: list[_Item]) -> list[_Task]:
        tasks: list[_Task] = []
        run: list[_Item] = []
        for item in items:
            contiguous = (
                bool(run)
                and run[-1].path == item.path
                and run[-1].offset + run[-1].length == item.offset
            )
            size = sum(i.length for i in run)
            if run and (not contiguous or size + item.length > self._opts.range_bytes):
                tasks.append(_Task(index, "range", run))
                run = []
            run.append(item)
        if run:
            tasks.append(_Task(index, "range", run))
        return tasks

    # -- running ---------------------------------------------------------------------------
    def run(self, missing: Sequence[BlockId]) -> DownloadResult:
        """Download ``missing`` (block ids of the route's manifest) into the sink.

        Raises:
            NoSourceError: some block failed on every candidate source.
            DiskFullError: the device ran out of space.
        """
        result = DownloadResult()
        locate = self._manifest.locate()
        remaining: dict[BlockId, list[int]] = {}
        tried: dict[BlockId, list[tuple[str, str]]] = defaultdict(list)
        items: list[_Item] = []
        for block_id in missing:
            path, offset, length = locate[block_id]
            items.append(_Item(block_id, length, path, offset))
            remaining[block_id] = list(self._route.candidates(block_id))
        exhausted: list[BlockId] = []

        def assign(pending: list[_Item]) -> list[_Task]:
            by_source: dict[int, list[_Item]] = defaultdict(list)
            for item in pending:
                queue_ = remaining[item.block_id]
                while queue_ and queue_[0] in self._dead:
                    tried[item.block_id].append(
                        (self._route.sources[queue_.pop(0)].url, "source failed earlier")
                    )
                if not queue_:
                    exhausted.append(item.block_id)
                    continue
                by_source[queue_.pop(0)].append(item)
            return self._plan(by_source)

        workers = min(16, max(1, self._opts.connections_per_source * len(self._route.sources)))
        self._stage = _Stage(self._sink, count=self._opts.buffers, size=self._opts.read_bytes)
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="trimcache-dl")
        futures: dict[Future[_Outcome], _Task] = {
            pool.submit(self._execute, task): task for task in assign(items)
        }
        try:
            while futures:
                done, _ = wait(futures, return_when=FIRST_COMPLETED)
                retry: list[_Item] = []
                for future in done:
                    task = futures.pop(future)
                    outcome = future.result()
                    url = self._route.sources[task.source].url
                    if outcome.source_dead:
                        with self._lock:
                            self._dead.add(task.source)
                    for item in outcome.stored:
                        result.bytes_by_source[url] = (
                            result.bytes_by_source.get(url, 0) + item.length
                        )
                        result.blocks_by_source[url] = result.blocks_by_source.get(url, 0) + 1
                    for item, reason in outcome.failed:
                        tried[item.block_id].append((url, reason))
                        result.failures.append((url, item.block_id, reason))
                        retry.append(item)
                for task in assign(retry):
                    futures[pool.submit(self._execute, task)] = task
        finally:
            for future in futures:
                future.cancel()
            pool.shutdown(wait=True)
            self._stage.close()
        if exhausted:
            raise NoSourceError(self._manifest.model_id, {b: tried[b] for b in exhausted})
        return result

    def _execute(self, task: _Task) -> _Outcome:
        source = self._route.sources[task.source]
        with self._slots[task.source]:
            if task.source in self._dead:
                return _Outcome(failed=[(i, "source failed earlier") for i in task.items])
            return self._transfer(source, task)

    def _transfer(self, source: Source, task: _Task) -> _Outcome:
        outcome = _Outcome()
        pending = list(task.items)
        attempt = 0
        while pending:
            try:
                self._request(source, task.kind, pending, outcome)
                return outcome
            except DiskFullError:
                raise
            except (EdgeUnavailableError, BlockIntegrityError) as exc:
                # Transport error, 5xx or a short body: blocks already verified stay verified.
                done = {i.block_id for i in outcome.stored} | {
                    i.block_id for i, _ in outcome.failed
                }
                pending = [i for i in pending if i.block_id not in done]
                retryable = task.kind != "batch" and (
                    exc.http_status is None or exc.http_status == 503
                )
                if retryable and attempt < self._opts.retries and pending:
                    time.sleep(full_jitter(attempt, self._opts.backoff_s))
                    attempt += 1
                    continue
                outcome.failed.extend((i, str(exc)) for i in pending)
                outcome.source_dead = True
                return outcome
            except ClientError as exc:  # 404 and other 4xx: this source lacks them
                done = {i.block_id for i in outcome.stored}
                outcome.failed.extend((i, str(exc)) for i in pending if i.block_id not in done)
                return outcome
        return outcome

    def _request(self, source: Source, kind: TaskKind, items: list[_Item], out: _Outcome) -> None:
        if kind == "batch":
            body = json.dumps({"block_ids": [i.block_id for i in items]}).encode()
            self._stream(source, "POST", f"{source.url}/v1/blocks:batch", items, out, body=body)
            return
        # Re-plan the remaining run as contiguous pieces (a retry may have left gaps).
        runs: list[list[_Item]] = []
        for item in items:
            if runs and runs[-1][-1].offset + runs[-1][-1].length == item.offset:
                runs[-1].append(item)
            else:
                runs.append([item])
        for run in runs:
            start = run[0].offset
            end = run[-1].offset + run[-1].length
            url = (
                f"{source.url}/{self._manifest.repo_id}/resolve/"
                f"{self._manifest.revision}/{run[0].path}"
            )
            headers = {"Range": f"bytes={start}-{end - 1}"} if end > start else {}
            self._stream(source, "GET", url, run, out, headers=headers, skip=start)

    def _stream(
        self,
        source: Source,
        method: str,
        url: str,
        items: list[_Item],
        out: _Outcome,
        *,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        skip: int = 0,
    ) -> None:
        """One request: read its body into ring buffers, hand them to the store stage.

        Whatever happens, the blocks whose last byte arrived are judged (after the stage has
        drained): verified ones are journaled and ``stored``, bad ones ``failed``.
        """
        stage = self._stage
        assert stage is not None
        checks: list[_Check] = []
        try:
            with self._wire.request(method, url, headers=headers, body=body) as reply:
                if skip and reply.status == 200:
                    self._discard(reply, skip, source)  # the server ignored our Range
                self._receive(reply, items, checks, source)
        finally:
            stage.drain()
            for check in checks:
                if check.ok:
                    self._sink.mark_verified(check.item.block_id)
                    out.stored.append(check.item)
                else:
                    reason = f"bad sha256 ({check.digest.hexdigest()[:12]}...)"
                    out.failed.append((check.item, reason))

    def _read(self, reply: Reply, view: memoryview, source: Source) -> int:
        n = reply.readinto(view)
        if n and self._on_bytes is not None:
            self._on_bytes(source.url, n)
        return n

    def _discard(self, reply: Reply, nbytes: int, source: Source) -> None:
        scratch = memoryview(bytearray(min(nbytes, READ_CHUNK_BYTES)))
        while nbytes > 0:
            n = self._read(reply, scratch[: min(nbytes, len(scratch))], source)
            if n == 0:
                raise BlockIntegrityError(f"{reply.url}: short body", url=reply.url)
            nbytes -= n

    def _receive(
        self, reply: Reply, items: list[_Item], checks: list[_Check], source: Source
    ) -> None:
        """Cut the body into the items' blocks, buffer by buffer.

        ``checks`` gets every block whose last byte was handed to the stage.
        """
        stage = self._stage
        assert stage is not None
        index, pos = 0, 0  # current item, bytes of it received
        current: _Check | None = None
        while index < len(items):
            buf = stage.buffer()
            view = memoryview(buf)
            filled = 0
            try:
                want = sum(i.length for i in items[index:]) - pos
                while filled < len(buf) and filled < want:
                    n = self._read(reply, view[filled : min(len(buf), want)], source)
                    if n == 0:
                        break
                    filled += n
            except BaseException:
                view.release()
                stage.give_back(buf)
                raise
            view.release()
            pieces: list[_Piece] = []
            lo = 0
            ended: list[_Check] = []
            while index < len(items) and (lo < filled or items[index].length == pos):
                item = items[index]
                if current is None:
                    current = _Check(item)
                n = min(filled - lo, item.length - pos)
                ends = pos + n == item.length
                pieces.append((current, lo, lo + n, pos, ends))
                lo += n
                pos += n
                if ends:
                    ended.append(current)
                    index, pos, current = index + 1, 0, None
            stage.submit(buf, pieces)
            checks.extend(ended)
            if filled < want and filled < len(buf):
                raise BlockIntegrityError(
                    f"{reply.url}: short body ({want - filled} bytes missing)", url=reply.url
                )
