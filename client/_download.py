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
   first retried ``retries`` times under :class:`core.transfer.RetryPolicy` (full-jitter backoff,
   ``retry_budget_s``); the batch POST is not retried, its blocks move on at once. A block with
   no candidate left is in :class:`NoSourceError`, which names every source tried.

Coalescing (:func:`core.transfer.contiguous_runs`, :func:`core.transfer.even_batches`), the cut
of a body into blocks (:class:`core.transfer.Cutter`) and the retry policy are the transfer
layer the edge's ingest uses too; this module adds the client's receive ring and store stage.
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from core.digest import BlockId
from core.manifest import ModelManifest
from core.transfer import (
    Cutter,
    RetryPolicy,
    Span,
    byte_range,
    contiguous_runs,
    even_batches,
    total_bytes,
)

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
#: The batch POST is not retried (its blocks move on to their next candidate source).
_NO_RETRY = RetryPolicy(attempts=1)


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
        retry_budget_s: no retry starts after this long (None: attempts alone bound them).
    """

    connections_per_source: int = 2
    batch_bytes: int = 256 * 1024 * 1024
    range_bytes: int = 64 * 1024 * 1024
    read_bytes: int = READ_CHUNK_BYTES
    buffers: int = 16
    retries: int = 2
    backoff_s: float = 0.05
    retry_budget_s: float | None = 30.0

    def retry_policy(self) -> RetryPolicy:
        """The policy of idempotent reads (data-path Range GETs and control GETs)."""
        return RetryPolicy(
            attempts=self.retries + 1, backoff_s=self.backoff_s, budget_s=self.retry_budget_s
        )


@dataclass(slots=True)
class _Task:
    source: int
    kind: TaskKind
    items: list[Span]
    pulled: bool = False  # the edge pulls these blocks (migrate / via the origin) first


@dataclass(slots=True)
class _Outcome:
    stored: list[Span] = field(default_factory=list)
    failed: list[tuple[Span, str]] = field(default_factory=list)
    source_dead: bool = False
    pulled_bytes: int = 0  # what an on-demand edge fetched upstream to answer


@dataclass(slots=True)
class DownloadResult:
    """What a download moved: verified bytes and blocks per source URL, plus failed attempts."""

    bytes_by_source: dict[str, int] = field(default_factory=dict)
    blocks_by_source: dict[str, int] = field(default_factory=dict)
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (url, block, reason)
    wasted_bytes: int = 0
    #: Bytes on-demand edges announced (``X-TrimCache-Pulled-Bytes``) they fetched upstream to
    #: answer this download: an edge cache miss, per edge URL.
    pulled_by_source: dict[str, int] = field(default_factory=dict)

    def add(self, more: DownloadResult) -> None:
        """Count ``more`` (a later download of the same fetch) into this one."""
        for total, extra in (
            (self.bytes_by_source, more.bytes_by_source),
            (self.blocks_by_source, more.blocks_by_source),
            (self.pulled_by_source, more.pulled_by_source),
        ):
            for url, n in extra.items():
                total[url] = total.get(url, 0) + n
        self.failures.extend(more.failures)
        self.wasted_bytes += more.wasted_bytes


class _Check:
    """One block's running sha256 in the store stage; ``ok`` is set at its last byte."""

    __slots__ = ("item", "digest", "ok")

    def __init__(self, item: Span) -> None:
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
        self._retry = self._opts.retry_policy()
        self._slots = [
            threading.Semaphore(self._opts.connections_per_source) for _ in route.sources
        ]
        self._dead: set[int] = set()
        self._lock = threading.Lock()
        self._stage: _Stage | None = None

    # -- planning --------------------------------------------------------------------------
    def _plan(self, by_source: dict[int, list[Span]]) -> list[_Task]:
        tasks: list[_Task] = []
        for index, items in by_source.items():
            items.sort(key=lambda i: (i.path, i.offset))
            if self._route.sources[index].kind == "origin":
                runs = contiguous_runs(items, max_bytes=self._opts.range_bytes)
                tasks.extend(_Task(index, "range", run) for run in runs)
            else:
                # Blocks the edge pulls (migrate / via the origin) travel apart from those it
                # holds, in one batch sent first: the edge answers it once they are in, and its
                # radio sends the held ones meanwhile. The held ones then take the source's
                # other connections only, so every request of the fetch is in flight from the
                # start: a broadcast edge groups blocks by the requests it has when they go
                # on the air, and a batch queued behind the pull would come seconds late.
                pulled = [i for i in items if self._route.pulled(i.block_id, index)]
                held = [i for i in items if not self._route.pulled(i.block_id, index)]
                if pulled:
                    tasks.append(_Task(index, "batch", pulled, pulled=True))
                if held:
                    runs = self._plan_edge(
                        held, connections=self._opts.connections_per_source - bool(pulled)
                    )
                    tasks.extend(_Task(index, "batch", run) for run in runs)
        # Pulled batches, then largest first, so the long transfers start early and the tail
        # stays short.
        tasks.sort(key=lambda t: (not t.pulled, -total_bytes(t.items)))
        return tasks

    def _plan_edge(self, items: list[Span], *, connections: int) -> list[list[Span]]:
        """Split the blocks, in file order, into a few batches of about equal bytes (one per
        connection, more only past ``batch_bytes``)."""
        total = total_bytes(items)
        count = max(connections, 1, -(-total // max(1, self._opts.batch_bytes)))
        count = min(count, max(1, total // READ_CHUNK_BYTES), len(items))
        return even_batches(items, parts=count)

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
        items: list[Span] = []
        for block_id in missing:
            path, offset, length = locate[block_id]
            items.append(Span(block_id, length, path, offset))
            remaining[block_id] = list(self._route.candidates(block_id))
        exhausted: list[BlockId] = []

        def assign(pending: list[Span]) -> list[_Task]:
            by_source: dict[int, list[Span]] = defaultdict(list)
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
                retry: list[Span] = []
                for future in done:
                    task = futures.pop(future)
                    outcome = future.result()
                    url = self._route.sources[task.source].url
                    if outcome.source_dead:
                        with self._lock:
                            self._dead.add(task.source)
                    if outcome.pulled_bytes:
                        result.pulled_by_source[url] = (
                            result.pulled_by_source.get(url, 0) + outcome.pulled_bytes
                        )
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
        # The batch POST is not retried: its blocks move on to their next source at once.
        policy = self._retry if task.kind == "range" else _NO_RETRY
        reason = "no attempt left"
        for _attempt in policy.attempts():
            try:
                self._request(source, task, pending, outcome)
                return outcome
            except DiskFullError:
                raise
            except (EdgeUnavailableError, BlockIntegrityError) as exc:
                # Transport error, 5xx or a short body: blocks already verified stay verified.
                done = {i.block_id for i in outcome.stored} | {
                    i.block_id for i, _ in outcome.failed
                }
                pending = [i for i in pending if i.block_id not in done]
                reason = str(exc)
                if not pending or exc.http_status not in (None, 503):
                    break
            except ClientError as exc:  # 404 and other 4xx: this source lacks them
                done = {i.block_id for i in outcome.stored}
                outcome.failed.extend((i, str(exc)) for i in pending if i.block_id not in done)
                return outcome
        outcome.failed.extend((i, reason) for i in pending)
        outcome.source_dead = True
        return outcome

    def _request(self, source: Source, task: _Task, items: list[Span], out: _Outcome) -> None:
        if task.kind == "batch":
            # model_id: an on-demand edge caches the model (and pulls what it lacks).
            doc: dict[str, Any] = {
                "block_ids": [i.block_id for i in items],
                "model_id": self._manifest.model_id,
            }
            # A serving edge the route says migrates some of them pulls those from a peer.
            hints = {
                i.block_id: url
                for i in items
                if (url := self._route.migrate_from(i.block_id, task.source)) is not None
            }
            via = [i.block_id for i in items if self._route.via_origin(i.block_id, task.source)]
            if hints or via:
                doc.update(migrate=True, migrate_from=hints)
            if via:
                doc["via_origin"] = via
            body = json.dumps(doc).encode()
            self._stream(source, "POST", f"{source.url}/v1/blocks:batch", items, out, body=body)
            return
        # Re-plan the remaining run as contiguous pieces (a retry may have left gaps).
        for run in contiguous_runs(items):
            url = (
                f"{source.url}/{self._manifest.repo_id}/resolve/"
                f"{self._manifest.revision}/{run[0].path}"
            )
            headers = byte_range(run)
            self._stream(source, "GET", url, run, out, headers=headers, skip=run[0].offset)

    def _stream(
        self,
        source: Source,
        method: str,
        url: str,
        items: list[Span],
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
                out.pulled_bytes += _pulled_bytes(reply)
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
        self, reply: Reply, items: list[Span], checks: list[_Check], source: Source
    ) -> None:
        """Cut the body into the items' blocks, buffer by buffer.

        ``checks`` gets every block whose last byte was handed to the stage.
        """
        stage = self._stage
        assert stage is not None
        cutter = Cutter([i.length for i in items])
        current: _Check | None = None  # the block whose bytes are being received
        while not cutter.done:
            buf = stage.buffer()
            view = memoryview(buf)
            filled = 0
            want = cutter.wanted
            try:
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
            ended: list[_Check] = []
            for cut in cutter.cut(filled):
                if current is None:
                    current = _Check(items[cut.index])
                pieces.append((current, cut.lo, cut.hi, cut.pos, cut.ends))
                if cut.ends:
                    ended.append(current)
                    current = None
            stage.submit(buf, pieces)
            checks.extend(ended)
            if filled < want and filled < len(buf):
                raise BlockIntegrityError(
                    f"{reply.url}: short body ({want - filled} bytes missing)", url=reply.url
                )


PULLED_HEADER = "x-trimcache-pulled-bytes"


def _pulled_bytes(reply: Reply) -> int:
    """The bytes an on-demand edge says it fetched upstream for this answer (0: none, or not
    an on-demand edge)."""
    for key, value in reply.headers.items():
        if key.lower() == PULLED_HEADER:
            try:
                return max(0, int(value))
            except ValueError:
                return 0
    return 0
