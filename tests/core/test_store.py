"""BlockStore: ids, capacity, atomic writes, crash leftovers, corruption, concurrency."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.digest import sha256_bytes
from core.errors import (
    BlockNotFoundError,
    DigestMismatchError,
    InvalidBlockIdError,
    StoreFullError,
)
from core.fsutil import atomic_write, sweep_temp_files
from core.store import BlockStore

BAD_IDS = [
    "../../etc/passwd",
    "A" * 64,
    sha256_bytes(b"x").upper(),
    "0" * 63,
    "0" * 65,
    "",
    "../" + "0" * 61,
    "0" * 62 + "/.",
    "g" * 64,
]


class Crash(Exception):
    pass


def crashing(chunks: list[bytes], after: int) -> Iterator[bytes]:
    for i, chunk in enumerate(chunks):
        if i == after:
            raise Crash("simulated crash mid-write")
        yield chunk


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


@pytest.fixture
def store(tmp_path: Path) -> BlockStore:
    return BlockStore(tmp_path / "store", durable=False)


def test_layout_and_put_read(store: BlockStore) -> None:
    bid = store.put(b"hello")
    assert bid == hashlib.sha256(b"hello").hexdigest()
    assert store.path(bid) == store.root / "blocks" / "sha256" / bid[:2] / bid
    assert store.path(bid).read_bytes() == b"hello"
    assert store.read(bid) == b"hello" and store.has(bid) and store.size(bid) == 5
    assert store.put(b"hello") == bid  # idempotent
    assert store.used_bytes == 5 and len(store) == 1
    empty = store.put(b"")
    assert store.read(empty) == b"" and store.used_bytes == 5


@pytest.mark.parametrize("bad", BAD_IDS)
def test_bad_block_ids_never_become_paths(store: BlockStore, bad: str) -> None:
    for call in (
        store.path,
        store.read,
        store.has,
        store.size,
        store.open,
        store.delete,
        store.quarantine,
    ):
        with pytest.raises(InvalidBlockIdError, match="expected 64 lowercase hex"):
            call(bad)
    with pytest.raises(InvalidBlockIdError):
        store.put(b"x", block_id=bad)
    with pytest.raises(InvalidBlockIdError):
        store.put_stream([b"x"], block_id=bad)
    assert files_under(store.root) == []


def test_put_with_wrong_id_stores_nothing(store: BlockStore) -> None:
    wrong = sha256_bytes(b"other")
    with pytest.raises(DigestMismatchError) as info:
        store.put(b"data", block_id=wrong)
    assert wrong in str(info.value) and sha256_bytes(b"data") in str(info.value)
    with pytest.raises(DigestMismatchError):
        store.put_stream([b"da", b"ta"], block_id=wrong)
    with pytest.raises(DigestMismatchError, match="length"):
        store.put_stream([b"data"], size=5)
    assert len(store) == 0 and store.used_bytes == 0
    assert files_under(store.root) == []


def test_put_stream(store: BlockStore) -> None:
    chunks = [os.urandom(1000) for _ in range(5)]
    bid = store.put_stream(chunks, block_id=sha256_bytes(b"".join(chunks)), size=5000)
    assert store.read(bid) == b"".join(chunks)
    assert list(store.iter_range(bid, 10, 2010, chunk_bytes=300)) != []
    assert b"".join(store.iter_range(bid, 10, 2010, chunk_bytes=300)) == b"".join(chunks)[10:2010]
    drained: list[int] = []

    def producer() -> Iterator[bytes]:
        for i, c in enumerate(chunks):
            drained.append(i)
            yield c

    assert store.put_stream(producer(), block_id=bid) == bid  # already there: drained
    assert drained == [0, 1, 2, 3, 4]


def test_capacity(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "s", capacity_bytes=10, durable=False)
    store.put(b"123456")
    with pytest.raises(StoreFullError) as info:
        store.put(b"12345")
    assert info.value.needed_bytes == 11 and info.value.capacity_bytes == 10
    with pytest.raises(StoreFullError):
        store.put_stream([b"12", b"345"], size=5)
    with pytest.raises(StoreFullError):
        store.put_stream([b"12", b"345"])  # size unknown: caught after hashing, nothing kept
    assert store.used_bytes == 6 and len(store) == 1 and store.free_bytes() == 4
    assert len(files_under(store.root / "blocks")) == 1
    assert files_under(store.root / "tmp") == []
    store.put(b"1234")  # exactly full is fine
    assert store.free_bytes() == 0
    assert store.put(b"123456") == sha256_bytes(b"123456")  # present: costs nothing


def test_index_rebuilt_on_reopen(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "s")
    ids = [store.put(bytes([i]) * (i + 1)) for i in range(20)]
    (store.root / "blocks" / "sha256" / "zz").mkdir()  # junk dirs and names are ignored
    (store.root / "blocks" / "sha256" / ids[0][:2] / "README").write_text("x")
    again = BlockStore(tmp_path / "s")
    assert sorted(again.ids()) == sorted(ids)
    assert again.used_bytes == sum(range(1, 21))
    assert all(again.read(b) == bytes([i]) * (i + 1) for i, b in enumerate(ids))


def test_delete(store: BlockStore) -> None:
    bid = store.put(b"abc")
    assert store.delete(bid) is True
    assert store.delete(bid) is False
    assert not store.has(bid) and store.used_bytes == 0
    assert not store.path(bid).exists()
    with pytest.raises(BlockNotFoundError) as info:
        store.read(bid)
    assert bid in str(info.value)
    assert isinstance(info.value, LookupError)


def test_read_of_corrupt_block_quarantines(store: BlockStore) -> None:
    bid = store.put(b"precious bytes")
    path = store.path(bid)
    path.write_bytes(b"precious bytez")
    assert store.read(bid, verify=False) == b"precious bytez"
    with pytest.raises(BlockNotFoundError, match="quarantined"):
        store.read(bid)
    assert not path.exists() and not store.has(bid)
    assert (store.root / "quarantine" / f"{bid}.0").read_bytes() == b"precious bytez"
    # A fresh copy can be stored again.
    assert store.put(b"precious bytes") == bid and store.read(bid) == b"precious bytes"


def test_scrub_finds_corrupted_blocks(store: BlockStore) -> None:
    ids = [store.put(f"block {i}".encode() * 100) for i in range(6)]
    for bid in ids[1], ids[4]:
        blob = bytearray(store.path(bid).read_bytes())
        blob[17] ^= 0x01
        store.path(bid).write_bytes(bytes(blob))
    assert sorted(store.scrub()) == sorted([ids[1], ids[4]])
    assert sorted(store.ids()) == sorted(set(ids) - {ids[1], ids[4]})
    assert store.scrub() == []
    assert sorted(os.listdir(store.root / "quarantine")) == sorted([f"{ids[1]}.0", f"{ids[4]}.0"])
    # The index agrees with the disk after reopening.
    assert sorted(BlockStore(store.root).ids()) == sorted(store.ids())


def test_crash_in_put_stream_leaves_nothing(store: BlockStore) -> None:
    chunks = [os.urandom(4096) for _ in range(8)]
    with pytest.raises(Crash):
        store.put_stream(crashing(chunks, 4), size=len(chunks) * 4096)
    assert files_under(store.root) == [] and len(store) == 0 and store.used_bytes == 0


def test_crash_in_atomic_write_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out" / "model.safetensors"
    target.parent.mkdir()
    with pytest.raises(Crash):
        atomic_write(target, crashing([b"a" * 100] * 10, 5))
    assert os.listdir(target.parent) == []
    # An existing file is never replaced by a half-written one.
    target.write_bytes(b"old")
    with pytest.raises(Crash):
        atomic_write(target, crashing([b"new"] * 3, 2))
    assert os.listdir(target.parent) == ["model.safetensors"] and target.read_bytes() == b"old"
    assert atomic_write(target, [b"ne", memoryview(b"w")]) == 3 and target.read_bytes() == b"new"


def test_crash_leftovers_are_swept_on_open(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "s")
    bid = store.put(b"keep me")
    leftovers = [
        store.root / "tmp" / ".tmp-abc123",
        store.root / "blocks" / "sha256" / bid[:2] / ".tmp-xyz",
        store.root / "manifests" / ".tmp-m",
    ]
    for p in leftovers:
        p.write_bytes(b"half a block")
    reopened = BlockStore(tmp_path / "s")
    assert not any(p.exists() for p in leftovers)
    assert reopened.ids() == [bid] and reopened.used_bytes == 7
    assert sweep_temp_files(tmp_path / "s") == 0


def test_concurrent_puts_of_the_same_block(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "s")  # durable: fsync widens any race window
    data = os.urandom(3 << 20)
    bid = sha256_bytes(data)
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def worker(i: int) -> None:
        try:
            barrier.wait()
            if i % 2:
                got = store.put(data)
            else:
                got = store.put_stream([data[: 1 << 20], data[1 << 20 :]], size=len(data))
            assert got == bid
            # put returned, so the block must be readable right now, by any thread.
            assert store.read(bid) == data
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.ids() == [bid] and store.used_bytes == len(data)
    assert files_under(store.root) == [f"blocks/sha256/{bid[:2]}/{bid}"]


def test_concurrent_puts_of_different_blocks_respect_capacity(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "s", capacity_bytes=10 * 1000, durable=False)
    results: list[str] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        try:
            store.put(bytes([i]) * 1000)
            outcome = "ok"
        except StoreFullError:
            outcome = "full"
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("ok") == 10 and results.count("full") == 6
    assert store.used_bytes == 10_000
    assert len(files_under(store.root / "blocks")) == 10


def test_opening_a_store_spares_in_flight_writes(tmp_path: Path) -> None:
    """A second BlockStore on the same directory (another process, or `trimcache blocks verify`
    on a live edge store) sweeps crash leftovers but not temp files being written right now."""
    store = BlockStore(tmp_path / "s")
    started, resume = threading.Event(), threading.Event()
    chunks = [os.urandom(1 << 16) for _ in range(4)]
    result: list[object] = []

    def slow() -> Iterator[bytes]:
        yield chunks[0]
        started.set()
        resume.wait(10)
        yield from chunks[1:]

    def writer() -> None:
        try:
            result.append(store.put_stream(slow()))
        except BaseException as exc:  # noqa: BLE001 - checked below
            result.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    assert started.wait(10)
    (tmp_path / "s" / "tmp" / ".tmp-crashed").write_bytes(b"left by a dead writer")
    BlockStore(tmp_path / "s")  # sweeps on open
    resume.set()
    thread.join()
    assert result == [sha256_bytes(b"".join(chunks))]
    assert store.read(sha256_bytes(b"".join(chunks))) == b"".join(chunks)
    assert not (tmp_path / "s" / "tmp" / ".tmp-crashed").exists()


def test_sweep_skips_directories(tmp_path: Path) -> None:
    (tmp_path / "s" / "tmp" / ".tmp-dir").mkdir(parents=True)
    BlockStore(tmp_path / "s")
    assert (tmp_path / "s" / "tmp" / ".tmp-dir").is_dir()


def test_sweep_spares_an_atomic_write_in_progress(tmp_path: Path) -> None:
    target = tmp_path / "s" / "manifests" / "m.json"
    BlockStore(tmp_path / "s")
    started, resume = threading.Event(), threading.Event()

    def slow() -> Iterator[bytes]:
        yield b"{"
        started.set()
        resume.wait(10)
        yield b"}"

    thread = threading.Thread(target=atomic_write, args=(target, slow()))
    thread.start()
    assert started.wait(10)
    assert sweep_temp_files(tmp_path / "s") == 0
    resume.set()
    thread.join()
    assert target.read_bytes() == b"{}"
    assert not list((tmp_path / "s").rglob(".tmp-*"))


def test_one_sync_replaces_the_per_block_fsyncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import core.store

    store = BlockStore(tmp_path / "s")  # durable
    fsyncs: list[int] = []
    synced: list[Path] = []
    real_fsync, real_sync = os.fsync, core.store.sync_filesystem

    def fsync(fd: int) -> None:
        fsyncs.append(fd)
        real_fsync(fd)

    def sync_filesystem(path: Path) -> None:
        synced.append(path)
        real_sync(path)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(core.store, "sync_filesystem", sync_filesystem)
    with store.one_sync():
        with store.one_sync():  # nested: only the outer scope syncs
            ids = [store.put_stream([os.urandom(100)]) for _ in range(5)]
        ids.append(store.put(b"one more"))
        assert synced == []
    assert fsyncs == [] and synced == [store.root]
    assert all(store.verify(b) for b in ids)
    store.put_stream([b"after the scope"])
    assert len(fsyncs) == 1 and synced == [store.root]  # an fsync per write again


def test_generation_changes_with_the_index(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "s", durable=False)
    seen = [store.generation]
    bid = store.put(b"block one")
    seen.append(store.generation)
    store.put(b"block one")  # already stored: the index does not change
    assert store.generation == seen[-1]
    store.quarantine(bid)
    seen.append(store.generation)
    other = store.put(b"block two")
    seen.append(store.generation)
    store.delete(other)
    seen.append(store.generation)
    assert len(set(seen)) == len(seen)
