"""Split models into content-addressed blocks, rebuild them, and group blocks by sharing.

- :func:`build_manifest` reads a local HF-format model directory once and describes it as blocks
  (tensor blocks for ``*.safetensors`` files, one file block for anything else). It never
  re-serialises tensors: ids are hashes of the bytes exactly as stored (safetensors writes
  metadata keys in hash-map order, so a re-serialised file is a different file).
- :func:`split_model` does the same and stores every block in a :class:`BlockStore`.
- :func:`assemble` writes header + blocks back in order, atomically, and proves each rebuilt file
  by its sha256; :func:`iter_file_range` serves any byte range of a file from its blocks.
- :func:`group_by_sharing` turns tensor blocks into parameter blocks (the placement unit) and
  :func:`dedup_report` measures storage savings.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from core.digest import CHUNK_BYTES, BlockId
from core.errors import BlockNotFoundError, DigestMismatchError, ManifestError
from core.fsutil import atomic_write
from core.manifest import (
    BlockRef,
    FileEntry,
    ModelManifest,
    check_model_id,
    check_relpath,
    check_repo_id,
)
from core.safetensors import read_header
from core.store import BlockStore

#: Directories inside a model directory that are never part of the model.
SKIPPED_DIRS = frozenset({".git", ".cache", "__pycache__"})
#: Blocks up to this size are hashed in memory before touching the store.
_INMEMORY_BLOCK_BYTES = 64 << 20
#: Threads that write blocks to the store during a split. Concurrent fsyncs share journal
#: commits on ext4: 105 fsynced MiniLM-sized blocks took ~1.2 s one at a time and ~0.4-0.6 s
#: from 8 threads (bench/blocks.py; same as without fsync).
_WRITER_THREADS = 8

# A sink receives one block's bytes as chunks and returns its id (hashing as it goes).
BlockSink = Callable[[Iterable[bytes], int], BlockId]


class _Pipeline:
    """Apply ``fn`` to submitted items on ``workers`` background threads, with bounded memory.

    With one worker, items are processed in submission order. At most ``max_pending_bytes`` of
    items wait or run (an item larger than that is still accepted when nothing else is
    pending). The first error of ``fn`` is kept and later items are skipped; :meth:`submit`
    then raises it, and :meth:`close` waits for the threads and raises it.
    """

    def __init__(
        self, fn: Callable[[Any], object], max_pending_bytes: int, *, workers: int = 1
    ) -> None:
        self._fn = fn
        self._max = max_pending_bytes
        self._items: deque[tuple[Any, int]] = deque()
        self._pending = 0
        self._closed = False
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, item: Any, nbytes: int) -> None:
        with self._cond:
            while self._pending and self._pending + nbytes > self._max and not self._error:
                self._cond.wait()
            if self._error is not None:
                raise self._error
            self._items.append((item, nbytes))
            self._pending += nbytes
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._closed:
                    self._cond.wait()
                if not self._items:
                    return
                item, nbytes = self._items.popleft()
                failed = self._error is not None
            try:
                if not failed:
                    self._fn(item)
            except BaseException as exc:  # handed to the submitting thread
                with self._cond:
                    if self._error is None:
                        self._error = exc
            finally:
                with self._cond:
                    self._pending -= nbytes
                    self._cond.notify_all()

    def close(self) -> None:
        """Wait until every item is processed; raise the first error, if any."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()
        if self._error is not None:
            raise self._error


class _FileHasher:
    """sha256 of a whole file computed on a second thread while the caller hashes blocks.

    hashlib releases the GIL on large updates, so the file digest and the block digests run on
    two cores and splitting costs about one hashing pass, not two. Chunks are queued by
    reference (no copy), at most ``_INMEMORY_BLOCK_BYTES`` of them at a time.
    """

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self._pipeline = _Pipeline(self._digest.update, _INMEMORY_BLOCK_BYTES)

    def update(self, chunk: bytes) -> None:
        self._pipeline.submit(chunk, len(chunk))

    def hexdigest(self) -> str:
        self._pipeline.close()
        return self._digest.hexdigest()


def _iter_model_files(model_dir: Path) -> list[tuple[str, Path]]:
    if not model_dir.is_dir():
        raise ManifestError(f"{model_dir}: not a directory")
    files: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(model_dir, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIRS)
        for name in filenames:
            full = Path(dirpath) / name
            rel = full.relative_to(model_dir).as_posix()
            if name.startswith(".tmp-") or not full.is_file():
                continue
            files.append((check_relpath(rel), full))
    files.sort()
    if not files:
        raise ManifestError(f"{model_dir}: no files")
    return files


def _hash_sink(chunks: Iterable[bytes], _size: int) -> BlockId:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return BlockId(digest.hexdigest())


def _store_sink(store: BlockStore, writer: _Pipeline) -> BlockSink:
    """Hash each in-memory block here and let ``writer`` store it (write, fsync, rename) while
    the next block is read and hashed: with a durable store the fsync waits overlap the work."""

    def sink(chunks: Iterable[bytes], size: int) -> BlockId:
        if size <= _INMEMORY_BLOCK_BYTES:
            data = b"".join(chunks)  # one chunk (see _read_exact): no copy
            block_id = BlockId(hashlib.sha256(data).hexdigest())
            if not store.has(block_id):
                writer.submit((data, block_id), size)
            return block_id
        return store.put_stream(chunks, size=size)

    return sink


def _read_exact(fh: Any, length: int, path: Path, hasher: _FileHasher) -> Iterator[bytes]:
    # A block that is hashed in memory anyway is read in one piece (no join copy later).
    chunk_bytes = length if length <= _INMEMORY_BLOCK_BYTES else CHUNK_BYTES
    remaining = length
    while remaining > 0:
        chunk = fh.read(min(chunk_bytes, remaining))
        if not chunk:
            raise ManifestError(f"{path}: file changed while reading (truncated)")
        hasher.update(chunk)
        remaining -= len(chunk)
        yield chunk


def describe_file(path: Path, relpath: str, sink: BlockSink = _hash_sink) -> FileEntry:
    """One file as a :class:`FileEntry`, passing each block's bytes to ``sink``."""
    if not relpath.endswith(".safetensors"):
        size = path.stat().st_size
        hasher = _FileHasher()
        try:
            with open(path, "rb") as fh:
                block_id = sink(_read_exact(fh, size, path, hasher), size)
        finally:
            file_sha = hasher.hexdigest()  # also ends the hashing thread on an error
        if file_sha != block_id:  # same bytes, two hashes: only a concurrent change differs
            raise ManifestError(f"{path}: file changed while reading")
        return FileEntry(relpath, size, file_sha, "file", (BlockRef(block_id, 0, size),))
    header = read_header(path)
    refs: list[BlockRef] = []
    hasher = _FileHasher()
    try:
        with open(path, "rb") as fh:
            hasher.update(header.header_bytes)
            fh.seek(header.data_offset)
            for tensor in header.tensors:
                block_id = sink(_read_exact(fh, tensor.nbytes, path, hasher), tensor.nbytes)
                refs.append(BlockRef(block_id, tensor.begin, tensor.nbytes, tensor.name))
    finally:
        file_sha = hasher.hexdigest()
    return FileEntry(
        relpath,
        header.file_size,
        file_sha,
        "safetensors",
        tuple(refs),
        header.header_bytes,
    )


def build_manifest(
    model_dir: str | Path,
    *,
    model_id: str,
    repo_id: str | None = None,
    revision: str = "main",
    store: BlockStore | None = None,
    on_file: Callable[[str, int], None] | None = None,
) -> ModelManifest:
    """Describe a local HF-format model directory as blocks.

    Args:
        model_dir: directory with ``config.json``, ``*.safetensors`` (sharded or not), etc.
        model_id: short id (``bert-sst2``).
        repo_id: Hub repo id; defaults to ``local/<model_id>``.
        revision: the repo revision the files come from.
        store: if given, every block is stored there too (see :func:`split_model`). Blocks
            are hashed here and written by background threads, so fsyncs overlap reading
            and hashing; all of them are stored before this returns (or raises).
        on_file: progress callback ``(relpath, size)`` after each file.

    Returns:
        The manifest.

    Raises:
        SafetensorsFormatError: a ``.safetensors`` file is invalid (names file and problem).
        ManifestError: the directory is empty or a path is unsafe.
    """
    model_dir = Path(model_dir)
    check_model_id(model_id)  # fail before any block is read or stored
    check_repo_id(repo_id or f"local/{model_id}")
    files = _iter_model_files(model_dir)
    writer = None
    sink: BlockSink = _hash_sink
    if store is not None:
        writer = _Pipeline(
            lambda item: store._put_hashed(*item),
            _INMEMORY_BLOCK_BYTES,
            workers=_WRITER_THREADS,
        )
        sink = _store_sink(store, writer)
    entries = []
    try:
        for relpath, full in files:
            entries.append(describe_file(full, relpath, sink))
            if on_file is not None:
                on_file(relpath, entries[-1].size)
    except BaseException:
        if writer is not None:
            # Let in-flight writes finish (each is atomic); the first error is the one to report.
            with contextlib.suppress(BaseException):
                writer.close()
        raise
    if writer is not None:
        writer.close()  # every block is stored before a manifest can refer to it
    return ModelManifest(
        model_id=model_id,
        repo_id=repo_id or f"local/{model_id}",
        revision=revision,
        files=tuple(entries),
    )


def split_model(
    model_dir: str | Path,
    store: BlockStore,
    *,
    model_id: str,
    repo_id: str | None = None,
    revision: str = "main",
    on_file: Callable[[str, int], None] | None = None,
) -> ModelManifest:
    """Store a model's blocks in ``store`` and record its manifest there; return the manifest.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()); _ = (d / "config.json").write_text("{}")
    >>> m = split_model(d, BlockStore(tempfile.mkdtemp()), model_id="demo")
    >>> [f.path for f in m.files]
    ['config.json']
    """
    manifest = build_manifest(
        model_dir,
        model_id=model_id,
        repo_id=repo_id,
        revision=revision,
        store=store,
        on_file=on_file,
    )
    store.put_manifest(manifest)
    return manifest


ReadBlock = Callable[[BlockId, int, int], Iterable[bytes]]
# What a block reader yields: bytes, or (on the edge node) a zero-copy file slice.
_Piece = TypeVar("_Piece")


def iter_file_range(
    entry: FileEntry,
    start: int,
    end: int,
    read_block: Callable[[BlockId, int, int], Iterable[_Piece]],
) -> Iterator[bytes | _Piece]:
    """Yield bytes ``[start, end)`` of a file rebuilt from its header and blocks.

    ``read_block(block_id, lo, hi)`` yields bytes ``[lo, hi)`` of one block, as bytes or as any
    other piece type the caller streams (the edge node yields zero-copy file slices).
    """
    if not 0 <= start <= end <= entry.size:
        raise ValueError(f"range [{start}, {end}) outside {entry.path} ({entry.size} bytes)")
    for seg_start, seg_end, source in entry.segments():
        if seg_end <= start or seg_start >= end or seg_start == seg_end:
            continue
        lo = max(start, seg_start) - seg_start
        hi = min(end, seg_end) - seg_start
        if isinstance(source, bytes):
            yield source[lo:hi]
        else:
            yield from read_block(source.block_id, lo, hi)


def store_reader(store: BlockStore) -> ReadBlock:
    def read(block_id: BlockId, lo: int, hi: int) -> Iterator[bytes]:
        return store.iter_range(block_id, lo, hi)

    return read


def assemble(
    manifest: ModelManifest,
    store: BlockStore,
    out_dir: str | Path,
    *,
    durable: bool = True,
) -> list[Path]:
    """Rebuild every file of ``manifest`` under ``out_dir`` from ``store``; return the paths.

    Each file is written atomically and hashed while written; it is put in place only if its
    sha256 equals the manifest's. On a mismatch the culprit block is found, quarantined and
    named in the error.

    Raises:
        BlockNotFoundError: a block is missing from the store.
        DigestMismatchError: a rebuilt file does not match (names the file and the bad block).
    """
    out_dir = Path(out_dir)
    missing = store.missing_blocks(manifest)
    if missing:
        first = next(iter(missing))
        raise BlockNotFoundError(
            first,
            f"{store.root} ({len(missing)} blocks of {manifest.model_id} missing)",
        )
    written: list[Path] = []
    for entry in manifest.files:
        dest = out_dir / entry.path
        digest = hashlib.sha256()

        def chunks(entry: FileEntry = entry, digest: Any = digest) -> Iterator[bytes]:
            for chunk in iter_file_range(entry, 0, entry.size, store_reader(store)):
                digest.update(chunk)
                yield chunk
            if digest.hexdigest() != entry.sha256:
                bad = [b.block_id for b in entry.blocks if not store.verify(b.block_id)]
                raise DigestMismatchError(
                    f"{entry.path} (bad blocks: {', '.join(bad) or 'none found'})",
                    entry.sha256,
                    digest.hexdigest(),
                )

        atomic_write(dest, chunks(), durable=durable)
        written.append(dest)
    return written


@dataclass(frozen=True, slots=True)
class ParameterBlock:
    """Tensor blocks used by exactly the same set of models: the unit placement moves."""

    pb_id: str
    model_ids: frozenset[str]
    block_ids: tuple[BlockId, ...]
    size_bytes: int


def group_by_sharing(manifests: Sequence[ModelManifest]) -> list[ParameterBlock]:
    """Group the blocks of several models into parameter blocks by their sharing set.

    Two blocks land in the same parameter block exactly when the same set of models uses them.
    Ordering is deterministic: groups by the first appearance of any of their blocks, walking
    models sorted by id and each model's blocks in file order; blocks inside a group in that
    same order. There is no optimisation beyond exact grouping: a block shared by {a, b} and one
    shared by {a, b, c} are different parameter blocks even if they sit side by side. ``pb_id``
    is ``pb-`` + the first 16 hex of the sha256 of the group's block ids, stable across runs.

    >>> from core.digest import sha256_bytes
    >>> def m(mid, *payloads):
    ...     refs, off = [], 0
    ...     for p in payloads:
    ...         refs.append(BlockRef(sha256_bytes(p), off, len(p))); off += len(p)
    ...     return ModelManifest(mid, f"o/{mid}", "main", (FileEntry(
    ...         "w.safetensors", off, sha256_bytes(b"".join(payloads)), "safetensors",
    ...         tuple(refs)),))
    >>> groups = group_by_sharing([m("a", b"base", b"head-a"), m("b", b"base", b"head-b")])
    >>> [(sorted(g.model_ids), g.size_bytes) for g in groups]
    [(['a', 'b'], 4), (['a'], 6), (['b'], 6)]
    """
    ordered = sorted(manifests, key=lambda m: m.model_id)
    sizes: dict[str, int] = {}
    for manifest in ordered:
        for block_id, size in manifest.block_sizes().items():
            sizes[block_id] = size
    return group_blocks({m.model_id: list(m.block_sizes()) for m in ordered}, sizes)


def group_blocks(
    model_blocks: Mapping[str, Sequence[str]], sizes: Mapping[str, int]
) -> list[ParameterBlock]:
    """The grouping of :func:`group_by_sharing` over plain ids (any block naming scheme).

    Models are walked in ``model_blocks`` order, each one's blocks in order (repeats ignored);
    groups come out in the order of their first block, ``pb_id`` as in
    :func:`group_by_sharing`. The controller's placement libraries use it too.

    >>> [(g.pb_id[:3], sorted(g.model_ids), g.size_bytes)
    ...  for g in group_blocks({"m0": ["a", "b", "c"], "m1": ["a", "b"]}, {"a": 1, "b": 2, "c": 3})]
    [('pb-', ['m0', 'm1'], 3), ('pb-', ['m0'], 3)]
    """
    users: dict[str, set[str]] = {}
    for model_id, block_ids in model_blocks.items():
        for block_id in block_ids:
            users.setdefault(block_id, set()).add(model_id)
    groups: dict[frozenset[str], list[str]] = {}
    for block_id, used_by in users.items():
        groups.setdefault(frozenset(used_by), []).append(block_id)
    result = []
    for model_ids, block_ids in groups.items():
        pb_hash = hashlib.sha256("\n".join(block_ids).encode()).hexdigest()
        result.append(
            ParameterBlock(
                pb_id=f"pb-{pb_hash[:16]}",
                model_ids=model_ids,
                block_ids=tuple(BlockId(b) for b in block_ids),
                size_bytes=sum(sizes[b] for b in block_ids),
            )
        )
    return result


def dedup_report(manifests: Sequence[ModelManifest]) -> dict[str, Any]:
    """Storage of several models: whole-file dedup vs tensor-level dedup.

    ``total_bytes`` is the sum of file sizes; ``file_dedup_bytes`` counts each distinct file
    (by sha256) once; ``unique_bytes`` counts each distinct block once plus every distinct
    safetensors header (which a store keeps in the manifest); ``savings`` is
    ``1 - unique_bytes / total_bytes``.
    """
    total = sum(m.total_bytes for m in manifests)
    files: dict[str, int] = {}
    blocks: dict[BlockId, int] = {}
    headers: dict[bytes, int] = {}
    for manifest in manifests:
        for entry in manifest.files:
            files[entry.sha256] = entry.size
            if entry.header:
                headers[hashlib.sha256(entry.header).digest()] = len(entry.header)
            for block in entry.blocks:
                blocks[block.block_id] = block.length
    unique = sum(blocks.values()) + sum(headers.values())
    groups = group_by_sharing(manifests)
    return {
        "models": [
            {
                "model_id": m.model_id,
                "total_bytes": m.total_bytes,
                "files": len(m.files),
            }
            for m in manifests
        ],
        "total_bytes": total,
        "file_dedup_bytes": sum(files.values()),
        "unique_bytes": unique,
        "savings": (1 - unique / total) if total else 0.0,
        "blocks": len(blocks),
        "parameter_blocks": len(groups),
        "shared_bytes": sum(g.size_bytes for g in groups if len(g.model_ids) > 1),
    }


def manifests_by_id(manifests: Iterable[ModelManifest]) -> Mapping[str, ModelManifest]:
    return {m.model_id: m for m in manifests}
