"""The taint log: which Range resumes must get the whole file, across restarts, for a while."""

from __future__ import annotations

import json

from core.digest import BlockId
from core.manifest import BlockRef, FileEntry
from edge_node.tainted import TaintLog

A, B = BlockId("a" * 64), BlockId("b" * 64)


def _entry() -> FileEntry:
    # header [0, 100), block A [100, 1100), block B [1100, 2100)
    return FileEntry(
        path="model.safetensors",
        size=2100,
        sha256="c" * 64,
        kind="safetensors",
        header=b"h" * 100,
        blocks=(BlockRef(A, 100, 1000), BlockRef(B, 1100, 1000)),
    )


def test_only_ranges_whose_head_covers_a_tainted_block_are_refused(tmp_path):
    log = TaintLog(tmp_path / "tainted.json")
    entry = _entry()
    assert not log.head_tainted(entry, 2000)
    log.add(B)
    assert not log.head_tainted(entry, 0)
    assert not log.head_tainted(entry, 1100)  # the head ends where B starts: all checked good
    assert log.head_tainted(entry, 1101)
    assert log.head_tainted(entry, 2099)


def test_taints_survive_a_restart_and_expire(tmp_path):
    path = tmp_path / "tainted.json"
    TaintLog(path).add(A)
    assert set(json.loads(path.read_bytes())) == {A}
    assert TaintLog(path).head_tainted(_entry(), 101)  # a new process remembers
    assert len(TaintLog(path, ttl_s=0)) == 0  # expired ones are dropped on load
    assert not TaintLog(path, ttl_s=0).head_tainted(_entry(), 101)


def test_an_unreadable_log_taints_nothing(tmp_path):
    path = tmp_path / "tainted.json"
    path.write_text("{not json")
    assert len(TaintLog(path)) == 0
