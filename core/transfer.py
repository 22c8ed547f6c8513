"""The block transfer layer shared by edge ingest and the client SDK (transport-agnostic).

Both sides move blocks the same way: plan a few large requests (contiguous blocks of one file
coalesced into one Range read, or runs of blocks into one ``POST /v1/blocks:batch``), cut each
response body at the blocks' exact lengths, hash every block as it arrives and keep only those
whose bytes hash to their id, and retry idempotent reads under one policy. This module owns
those pieces; each side supplies its own HTTP call (the edge: httpx, :mod:`edge_node.ingest`;
the client: the ``http.client`` reader of :mod:`client._wire`) and its own store:

- :class:`Span`: where a block sits in a repo file;
- :func:`contiguous_runs`, :func:`batches`, :func:`even_batches`, :func:`byte_range`: coalescing;
- :class:`Cutter`: a body's bytes, as they arrive, mapped onto consecutive blocks (push: the
  client fills 1 MiB buffers and asks where their bytes go); :func:`split_body` is the same cut
  for an iterator of chunks (pull: one iterator of pieces per block, fed to
  :meth:`core.store.BlockStore.put_stream`, which verifies);
- :class:`RetryPolicy`: bounded attempts, full-jitter exponential backoff and a time budget,
  with an injectable clock, sleep and random source.

Nothing here does I/O: no HTTP client, no files (style L2).
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from core.digest import BlockId


class ShortBodyError(Exception):
    """A response body ended before the bytes its blocks need."""


@dataclass(frozen=True, slots=True)
class Span:
    """A block's first place in a repo file: ``length`` bytes at ``offset`` of ``path``."""

    block_id: BlockId
    length: int
    path: str
    offset: int
    repo_id: str = ""
    revision: str = ""

    @property
    def end(self) -> int:
        """The offset just past the block."""
        return self.offset + self.length

    @property
    def file(self) -> tuple[str, str, str]:
        """``(repo_id, revision, path)``: spans of one file may share one Range read."""
        return (self.repo_id, self.revision, self.path)


def total_bytes(spans: Iterable[Span]) -> int:
    return sum(s.length for s in spans)


def contiguous_runs(spans: Iterable[Span], *, max_bytes: int | None = None) -> list[list[Span]]:
    """Group ``spans`` by file and coalesce adjacent ones into runs (one Range read each).

    Files keep the order of their first span, spans inside a file are sorted by offset; a run
    is cut where the next span is not adjacent or would take it past ``max_bytes`` (a single
    larger span is a run alone).

    >>> a, b, c = (Span(BlockId(x), 4, "f", o) for x, o in (("a", 0), ("b", 4), ("c", 12)))
    >>> [[s.block_id for s in run] for run in contiguous_runs([c, b, a])]
    [['a', 'b'], ['c']]
    >>> [[s.block_id for s in run] for run in contiguous_runs([a, b], max_bytes=4)]
    [['a'], ['b']]
    """
    by_file: dict[tuple[str, str, str], list[Span]] = {}
    for span in spans:
        by_file.setdefault(span.file, []).append(span)
    runs: list[list[Span]] = []
    for group in by_file.values():
        group.sort(key=lambda s: s.offset)
        run: list[Span] = []
        run_bytes = 0
        for span in group:
            adjacent = bool(run) and run[-1].end == span.offset
            too_big = max_bytes is not None and run_bytes + span.length > max_bytes
            if run and (not adjacent or too_big):
                runs.append(run)
                run, run_bytes = [], 0
            run.append(span)
            run_bytes += span.length
        if run:
            runs.append(run)
    return runs


def batches(
    spans: Sequence[Span], *, max_bytes: int, max_count: int | None = None
) -> Iterator[list[Span]]:
    """Consecutive runs of ``spans`` of at most ``max_bytes`` (and ``max_count`` blocks) each.

    >>> spans = [Span(BlockId(x), 3, "f", 0) for x in "abcde"]
    >>> [len(b) for b in batches(spans, max_bytes=6)]
    [2, 2, 1]
    >>> [len(b) for b in batches(spans, max_bytes=100, max_count=4)]
    [4, 1]
    """
    batch: list[Span] = []
    nbytes = 0
    for span in spans:
        full = max_count is not None and len(batch) >= max_count
        if batch and (nbytes + span.length > max_bytes or full):
            yield batch
            batch, nbytes = [], 0
        batch.append(span)
        nbytes += span.length
    if batch:
        yield batch


def even_batches(spans: Sequence[Span], *, parts: int) -> list[list[Span]]:
    """``spans``, in order, cut into at most ``parts`` runs of about equal bytes.

    >>> spans = [Span(BlockId(x), n, "f", 0) for x, n in zip("abcd", (5, 5, 5, 5))]
    >>> [len(b) for b in even_batches(spans, parts=2)]
    [2, 2]
    """
    target = total_bytes(spans) / max(1, parts)
    out: list[list[Span]] = []
    run: list[Span] = []
    run_bytes = 0
    for span in spans:
        run.append(span)
        run_bytes += span.length
        if run_bytes >= target and len(out) < parts - 1:
            out.append(run)
            run, run_bytes = [], 0
    if run:
        out.append(run)
    return out


def byte_range(run: Sequence[Span]) -> dict[str, str]:
    """The ``Range`` header reading ``run`` (contiguous spans) in one request; ``{}`` if empty.

    >>> byte_range([Span(BlockId("a"), 4, "f", 10), Span(BlockId("b"), 2, "f", 14)])
    {'Range': 'bytes=10-15'}
    """
    start, end = run[0].offset, run[-1].end
    return {"Range": f"bytes={start}-{end - 1}"} if end > start else {}


@dataclass(frozen=True, slots=True)
class Cut:
    """Bytes ``[lo, hi)`` of the fed buffer are bytes ``[pos, pos + hi - lo)`` of block
    ``index``; ``ends`` when they are its last bytes (a zero-length block is one empty cut)."""

    index: int
    lo: int
    hi: int
    pos: int
    ends: bool


class Cutter:
    """Maps the consecutive bytes of one body onto consecutive blocks of known ``lengths``.

    :meth:`cut` is told how many bytes just arrived and answers where they go; :attr:`wanted`
    is how many more bytes the blocks need.

    >>> c = Cutter([3, 0, 2])
    >>> [(x.index, x.lo, x.hi, x.ends) for x in c.cut(4)]
    [(0, 0, 3, True), (1, 3, 3, True), (2, 3, 4, False)]
    >>> c.wanted, [(x.index, x.pos, x.ends) for x in c.cut(1)], c.done
    (1, [(2, 1, True)], True)
    """

    __slots__ = ("_lengths", "index", "pos", "wanted")

    def __init__(self, lengths: Sequence[int]) -> None:
        self._lengths = lengths
        self.index = 0  # the block the next byte belongs to
        self.pos = 0  # bytes of it already cut
        self.wanted = sum(lengths)

    @property
    def done(self) -> bool:
        return self.index >= len(self._lengths)

    def cut(self, nbytes: int) -> list[Cut]:
        """Where the next ``nbytes`` bytes go (bytes past the last block are not cut)."""
        lengths = self._lengths
        cuts: list[Cut] = []
        lo = 0
        while self.index < len(lengths) and (lo < nbytes or lengths[self.index] == self.pos):
            length = lengths[self.index]
            n = min(nbytes - lo, length - self.pos)
            ends = self.pos + n == length
            cuts.append(Cut(self.index, lo, lo + n, self.pos, ends))
            lo += n
            self.wanted -= n
            if ends:
                self.index, self.pos = self.index + 1, 0
            else:
                self.pos += n
        return cuts


def split_body(chunks: Iterator[bytes], lengths: Sequence[int]) -> Iterator[Iterator[memoryview]]:
    """One iterator of pieces per block of ``lengths``, cut from ``chunks`` by a :class:`Cutter`.

    Consume each block's iterator before asking for the next one (a block left half-read is
    skipped to its end first). A body that ends early raises :class:`ShortBodyError`.

    >>> body = split_body(iter([b"abc", b"de"]), [2, 3])
    >>> [b"".join(block) for block in body]
    [b'ab', b'cde']
    """
    cutter = Cutter(lengths)
    pending: deque[tuple[Cut, memoryview]] = deque()

    def pieces(index: int) -> Iterator[memoryview]:
        while True:
            while not pending:
                try:
                    chunk = memoryview(next(chunks))
                except StopIteration:
                    raise ShortBodyError(f"body ended {cutter.wanted} bytes early") from None
                pending.extend((c, chunk[c.lo : c.hi]) for c in cutter.cut(len(chunk)))
            cut, view = pending[0]
            if cut.index != index:
                return  # this block already ended (a zero-length one has no pieces)
            pending.popleft()
            if view:
                yield view
            if cut.ends:
                return

    for index in range(len(lengths)):
        block = pieces(index)
        yield block
        for _ in block:  # what the caller left unread
            pass


class RetryPolicy:
    """One retry policy for idempotent reads: bounded attempts, full-jitter backoff, a budget.

    Attempt ``k`` (from 0) waits ``uniform(0, backoff_s * 2**(k-1))`` before it starts, and no
    retry starts once its wait would take the attempts past ``budget_s``. ``clock``, ``sleep``
    and ``rng`` are injectable, so tests run the policy without waiting on the wall clock.

    >>> slept: list[float] = []
    >>> policy = RetryPolicy(attempts=3, backoff_s=1.0, sleep=slept.append, rng=random.Random(1))
    >>> list(policy.attempts()), len(slept), all(0 <= s <= 2 for s in slept)
    ([0, 1, 2], 2, True)
    """

    __slots__ = ("max_attempts", "backoff_s", "budget_s", "clock", "sleep", "rng")

    def __init__(
        self,
        *,
        attempts: int = 3,
        backoff_s: float = 0.05,
        budget_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {attempts}")
        self.max_attempts = attempts
        self.backoff_s = backoff_s
        self.budget_s = budget_s
        self.clock = clock
        self.sleep = sleep
        self.rng = rng if rng is not None else random.Random()

    def __repr__(self) -> str:
        return (
            f"RetryPolicy(attempts={self.max_attempts}, backoff_s={self.backoff_s}, "
            f"budget_s={self.budget_s})"
        )

    def delay(self, attempt: int) -> float:
        """The full-jitter wait before attempt ``attempt`` (0 before the first)."""
        if attempt <= 0:
            return 0.0
        return self.rng.uniform(0, self.backoff_s * (2 ** (attempt - 1)))

    def attempts(self) -> Iterator[int]:
        """Attempt numbers 0, 1, ...; sleeps before each retry; stops at the count or budget."""
        started = self.clock()
        for attempt in range(self.max_attempts):
            wait = self.delay(attempt)
            if (
                attempt
                and self.budget_s is not None
                and self.clock() - started + wait > self.budget_s
            ):
                return
            if wait:
                self.sleep(wait)
            yield attempt
