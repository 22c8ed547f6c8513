"""The pull-through buffer: reference counts, its bound, and deletion of what nobody uses."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pytest

from core.digest import BlockId
from edge_node.errors import PullBufferBusyError
from edge_node.pull import PullBuffer


def test_blocks_live_while_referenced_and_the_bound_holds(tmp_path: Path) -> None:
    (tmp_path / "buf" / "blocks").mkdir(parents=True)
    (tmp_path / "buf" / "blocks" / "leftover").write_bytes(b"x")
    buffer = PullBuffer(tmp_path / "buf", capacity_bytes=25)
    assert not (tmp_path / "buf" / "blocks" / "leftover").exists()  # wiped at startup
    a, b, c = (BlockId(f"{i}" * 64) for i in "abc")
    buffer.acquire({a: 10, b: 10}, timeout_s=1)
    assert buffer.reserved_bytes == 20
    with pytest.raises(PullBufferBusyError):
        buffer.acquire({c: 10}, timeout_s=0.05)  # all or nothing: c alone would not fit
    assert buffer.reserved_bytes == 20
    buffer.acquire({a: 10}, timeout_s=0.05)  # already referenced: costs no room
    assert buffer.reserved_bytes == 20
    buffer.release([a])
    assert buffer.reserved_bytes == 20  # a still has one reference
    buffer.release([a, b])
    assert buffer.reserved_bytes == 0


def test_an_unused_block_is_deleted_and_a_waiter_wakes(tmp_path: Path) -> None:
    buffer = PullBuffer(tmp_path / "buf", capacity_bytes=10)
    data = b"0123456789"
    block_id = BlockId(hashlib.sha256(data).hexdigest())
    buffer.acquire({block_id: 10}, timeout_s=1)
    assert buffer.store.put(data, block_id) == block_id
    other = BlockId("f" * 64)
    woke: list[float] = []

    def wait_for_room() -> None:
        buffer.acquire({other: 10}, timeout_s=30)
        woke.append(time.monotonic())

    thread = threading.Thread(target=wait_for_room)
    thread.start()
    time.sleep(0.1)
    assert not woke  # full: it waits
    released_at = time.monotonic()
    buffer.release([block_id])
    thread.join(timeout=10)
    assert woke and woke[0] >= released_at
    assert not buffer.store.has(block_id)
    assert buffer.reserved_bytes == 10


def test_a_window_larger_than_the_buffer_runs_alone(tmp_path: Path) -> None:
    buffer = PullBuffer(tmp_path / "buf", capacity_bytes=5)
    big, small = BlockId("a" * 64), BlockId("b" * 64)
    buffer.acquire({big: 50}, timeout_s=0.05)
    with pytest.raises(PullBufferBusyError):
        buffer.acquire({small: 1}, timeout_s=0.05)
    buffer.release([big])
    buffer.acquire({small: 1}, timeout_s=0.05)
    assert buffer.reserved_bytes == 1
