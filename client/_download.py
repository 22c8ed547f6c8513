"""Parallel, verified block download with per-block fallback across sources.

Internal logic:

1. Each missing block starts at its best candidate source (the route's order). Blocks are grouped
   into requests per source: on an edge node, small blocks share one ``POST /v1/blocks:batch``
   (up to ``batch_bytes``), large blocks get their own ``GET /v1/blocks/{id}``, and very large
   ones (``split_bytes``) are read as parallel Range parts that are hashed in order; on the
   origin, blocks of one file are coalesced into Range reads of adjacent bytes
   (``GET {origin}/{repo_id}/resolve/{revision}/{path}``).
2. Requests run on a thread pool, at most ``connections_per_source`` at a time per source. A
   response is cut into blocks by the manifest's lengths; each block streams through
   :meth:`core.store.BlockStore.put_stream` with its id, which hashes while it writes and only
   renames the file into the store when the sha256 matches. So a block in the store is always
   verified, and an interrupted fetch keeps every block completed so far (resume for free).
3. Failures fall back per block: a bad hash sends that block to its next candidate; a transport
   error, 5xx or short body sends the request's remaining blocks on, and marks the source dead for
   the rest of this fetch. Idempotent GETs are first retried ``retries`` times with full-jitter
   backoff (style E6); the batch POST is not retried, its blocks move on at once.
4. When a block has no candidate left, :class:`NoSourceError` names every source tried.
"""

from __future__ import annotations

import errno
import random
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import httpx

from core.digest import BlockId
from core.errors import DigestMismatchError, StoreFullError
from core.manifest import ModelManifest
from core.store import BlockStore

from ._errors import (
    BlockIntegrityError,
    ClientError,
    DiskFullError,
    EdgeUnavailableError,
    NoSourceError,
    raise_for_error,
    transport_error,
)
from ._route import Route, Source

ByteCallback = Callable[[str, int], None]
TaskKind = Literal["block", "batch", "range"]

READ_CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class DownloadOptions:
    """Tuning knobs of the downloader (see bench/client.py for measurements).

    Attributes:
        connections_per_source: parallel requests per source (also the Range window of a split
            block).
        batch_bytes: upper bound of one ``POST /v1/blocks:batch``.
        large_block_bytes: blocks at least this big get their own ``GET``.
        range_bytes: upper bound of one coalesced Range read from the origin.
        split_bytes: blocks at least this big are read as parallel Range parts.
        part_bytes: size of one such part.
        retries: extra attempts of an idempotent GET after a transport error or 503.
        backoff_s: base of the full-jitter backoff between attempts.
    """

    connections_per_source: int = 4
    batch_bytes: int = 8 * 1024 * 1024
    large_block_bytes: int = 2 * 1024 * 1024
    range_bytes: int = 16 * 1024 * 1024
    split_bytes: int = 16 * 1024 * 1024
    part_bytes: int = 8 * 1024 * 1024
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


class _ShortBodyError(Exception):
    pass


class _Body:
    """Cut a streamed body into exact-length pieces."""

    def __init__(self, chunks: Iterator[bytes], on_bytes: Callable[[int], None]) -> None:
        self._chunks = chunks
        self._pending = memoryview(b"")
        self._on_bytes = on_bytes

    def finish(self) -> None:
        """Read to the end, so the connection goes back to the pool for reuse."""
        self._pending = memoryview(b"")
        for _ in self._chunks:
            pass

    def skip(self, nbytes: int) -> None:
        for _ in self.take(nbytes):
            pass

    def take(self, nbytes: int) -> Iterator[bytes | memoryview]:
        remaining = nbytes
        while remaining > 0:
            if not self._pending:
                try:
                    chunk = next(self._chunks)
                except StopIteration:
                    raise _ShortBodyError(f"body ended {remaining} bytes early") from None
                self._on_bytes(len(chunk))
                self._pending = memoryview(chunk)
            piece = self._pending[:remaining]
            self._pending = self._pending[len(piece) :]
            remaining -= len(piece)
            yield piece


def full_jitter(attempt: int, base_s: float) -> float:
    """Full-jitter backoff: uniform in ``[0, base_s * 2**attempt]``."""
    return random.uniform(0, base_s * (2**attempt))


class Downloader:
    """Fetch the missing blocks of one route into a store.

    Args:
        http: the shared HTTP client.
        store: the device block store (verified, atomic writes).
        route: sources and per-block candidates.
        options: batching, parallelism and retry settings.
        on_bytes: called with ``(source_url, nbytes)`` for every chunk received (any thread).
    """

    def __init__(
        self,
        http: httpx.Client,
        store: BlockStore,
        route: Route,
        *,
        options: DownloadOptions | None = None,
        on_bytes: ByteCallback | None = None,
    ) -> None:
        self._http = http
        self._store = store
        self._route = route
        self._manifest: ModelManifest = route.manifest
        self._opts = options or DownloadOptions()
        self._on_bytes = on_bytes
        self._slots = [
            threading.Semaphore(self._opts.connections_per_source) for _ in route.sources
        ]
        self._dead: set[int] = set()
        self._lock = threading.Lock()

    # -- planning --------------------------------------------------------------------------
    def _plan(self, by_source: dict[int, list[_Item]]) -> list[_Task]:
        tasks: list[_Task] = []
        for index, items in by_source.items():
            if self._route.sources[index].kind == "origin":
                tasks.extend(self._plan_ranges(index, items))
            else:
                tasks.extend(self._plan_edge(index, items))
        # Largest first, so the long transfers start early and the tail stays short.
        tasks.sort(key=lambda t: -sum(i.length for i in t.items))
        return tasks

    def _plan_edge(self, index: int, items: list[_Item]) -> list[_Task]:
        tasks: list[_Task] = []
        batch: list[_Item] = []
        batch_bytes = 0
        small = [i for i in items if i.length < self._opts.large_block_bytes]
        # Spread small blocks over a few batches so they use several connections.
        total_small = sum(i.length for i in small)
        cap = max(
            min(self._opts.batch_bytes, total_small // self._opts.connections_per_source + 1),
            256 * 1024,
        )
        for item in items:
            if item.length >= self._opts.large_block_bytes:
                tasks.append(_Task(index, "block", [item]))
                continue
            batch.append(item)
            batch_bytes += item.length
            if batch_bytes >= cap:
                tasks.append(_Task(index, "batch", batch))
                batch, batch_bytes = [], 0
        if batch:
            tasks.append(_Task(index, "batch", batch))
        return tasks

    def _plan_ranges(self, index: int, items: list[_Item]) -> list[_Task]:
        by_file: dict[str, list[_Item]] = defaultdict(list)
        for item in items:
            by_file[item.path].append(item)
        tasks: list[_Task] = []
        for file_items in by_file.values():
            file_items.sort(key=lambda i: i.offset)
            run: list[_Item] = []
            for item in file_items:
                contiguous = bool(run) and run[-1].offset + run[-1].length == item.offset
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
        """Download ``missing`` (block ids of the route's manifest) into the store.

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
                queue = remaining[item.block_id]
                while queue and queue[0] in self._dead:
                    tried[item.block_id].append(
                        (self._route.sources[queue.pop(0)].url, "source failed earlier")
                    )
                if not queue:
                    exhausted.append(item.block_id)
                    continue
                by_source[queue.pop(0)].append(item)
            return self._plan(by_source)

        workers = min(32, max(1, self._opts.connections_per_source * len(self._route.sources)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="trimcache-dl") as pool:
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
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
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
                # Transport error, 5xx or a short body: blocks already stored stay stored.
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
        if kind == "range":
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
                headers = {"Range": f"bytes={start}-{end - 1}"}
                self._stream(source, "GET", url, run, out, headers=headers, skip=start)
        elif kind == "block" and items[0].length >= self._opts.split_bytes:
            self._split(source, items[0], out)
        elif kind == "block":
            url = f"{source.url}/v1/blocks/{items[0].block_id}"
            self._stream(source, "GET", url, items, out)
        else:
            url = f"{source.url}/v1/blocks:batch"
            body = {"block_ids": [i.block_id for i in items]}
            self._stream(source, "POST", url, items, out, json=body)

    def _count(self, source: Source) -> Callable[[int], None]:
        def count(nbytes: int) -> None:
            if self._on_bytes is not None:
                self._on_bytes(source.url, nbytes)

        return count

    def _store_item(self, chunks: Iterable[bytes | memoryview], item: _Item, out: _Outcome) -> None:
        try:
            self._store.put_stream(chunks, block_id=item.block_id, size=item.length)
        except DigestMismatchError as exc:
            out.failed.append((item, f"bad sha256 ({exc.actual[:12]}...)"))
            return
        out.stored.append(item)

    def _stream(
        self,
        source: Source,
        method: str,
        url: str,
        items: list[_Item],
        out: _Outcome,
        *,
        headers: dict[str, str] | None = None,
        json: object = None,
        skip: int = 0,
    ) -> None:
        with _mapped_errors(url):
            with self._http.stream(method, url, headers=headers, json=json) as response:
                if response.status_code >= 400:
                    response.read()
                    raise_for_error(response)
                body = _Body(response.iter_raw(), self._count(source))
                if skip and response.status_code == 200:
                    body.skip(skip)  # the server ignored our Range: drop the prefix
                for item in items:
                    # On a bad hash the stream stays aligned (exactly item.length bytes read).
                    self._store_item(body.take(item.length), item, out)
                body.finish()

    def _get_part(self, source: Source, url: str, lo: int, hi: int) -> list[bytes | memoryview]:
        with self._http.stream("GET", url, headers={"Range": f"bytes={lo}-{hi - 1}"}) as response:
            if response.status_code >= 400:
                response.read()
                raise_for_error(response)
            body = _Body(response.iter_raw(), self._count(source))
            if response.status_code == 200:
                body.skip(lo)  # the server ignored our Range
            data = list(body.take(hi - lo))
            body.finish()
            return data

    def _split(self, source: Source, item: _Item, out: _Outcome) -> None:
        """One large block as parallel Range reads, hashed and stored in order.

        A sliding window of ``connections_per_source`` parts is in flight; the parts are fed
        to ``put_stream`` in order, so the hash runs while later parts still arrive and at most
        window x ``part_bytes`` bytes wait in memory.
        """
        url = f"{source.url}/v1/blocks/{item.block_id}"
        step = self._opts.part_bytes
        spans = deque((lo, min(lo + step, item.length)) for lo in range(0, item.length, step))
        window = max(1, self._opts.connections_per_source)
        pool = ThreadPoolExecutor(max_workers=window, thread_name_prefix="trimcache-part")
        pending: deque[Future[list[bytes | memoryview]]] = deque()

        def submit_next() -> None:
            if spans:
                lo, hi = spans.popleft()
                pending.append(pool.submit(self._get_part, source, url, lo, hi))

        def parts() -> Iterator[bytes | memoryview]:
            while pending:
                data = pending.popleft().result()
                submit_next()
                yield from data

        try:
            with _mapped_errors(url):
                for _ in range(window):
                    submit_next()
                self._store_item(parts(), item, out)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)


@contextmanager
def _mapped_errors(url: str) -> Iterator[None]:
    """Turn transport, short-body and disk errors into client errors (style E4)."""
    try:
        yield
    except _ShortBodyError as exc:
        raise BlockIntegrityError(f"{url}: short body: {exc}", url=url) from exc
    except httpx.TransportError as exc:
        raise transport_error(exc, url) from exc
    except StoreFullError as exc:
        raise DiskFullError(f"device cache full: {exc}") from exc
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DiskFullError(f"no space left for the device cache: {exc}") from exc
        raise
