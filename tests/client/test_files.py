"""The device store's file writer on its own: in-place writes, sharing by copy, resume, verify."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from client._cache import DeviceCache
from client._files import ModelWriter
from core.blocks import build_manifest
from core.digest import sha256_file
from core.manifest import ModelManifest


def _model(root: Path, files: dict[str, bytes], model_id: str) -> ModelManifest:
    root.mkdir()
    for name, data in files.items():
        (root / name).write_bytes(data)
    return build_manifest(root, model_id=model_id)


def _fill(writer: ModelWriter, source: Path) -> None:
    """Write every missing block from the source files, as the downloader's stage does."""
    for block_id in writer.missing():
        place = writer.first_place(block_id)
        data = (source / place.path.name).read_bytes()[place.offset : place.offset + place.length]
        writer.write(block_id, 0, memoryview(data))
        writer.mark_verified(block_id)


@pytest.mark.parametrize("kernel_copy", [True, False])
def test_sibling_copies_shared_blocks_resumes_and_verifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kernel_copy: bool
) -> None:
    if not kernel_copy:  # a platform without copy_file_range (macOS): pread/pwrite instead
        monkeypatch.delattr(os, "copy_file_range", raising=False)
    shared = os.urandom(3_000_000)
    a = _model(tmp_path / "a", {"shared.bin": shared, "own.txt": b"a"}, "model-a")
    b = _model(tmp_path / "b", {"shared.bin": shared, "mine.txt": b"b"}, "model-b")
    cache = DeviceCache(tmp_path / "cache")
    cache.put_manifest(a)
    cache.put_manifest(b)
    writer = cache.writer(a)
    _fill(writer, tmp_path / "a")
    cache.publish(writer)

    writer = cache.writer(b)
    copied = writer.copy_in(cache.block_index())
    assert copied == {b.file("shared.bin").sha256: len(shared)}
    assert list(writer.missing()) == [b.file("mine.txt").sha256]
    writer.close()  # interrupted here: the copied block is journaled
    resumed = cache.writer(b)
    assert list(resumed.missing()) == [b.file("mine.txt").sha256]
    _fill(resumed, tmp_path / "b")
    path = cache.publish(resumed)
    for name in ("shared.bin", "mine.txt"):
        assert sha256_file(path / name) == sha256_file(tmp_path / "b" / name)
    assert cache.verify() == {"model-a": [], "model-b": []}

    with open(path / "shared.bin", "r+b") as fh:  # bit rot, found by verify
        fh.write(b"\x00" if shared[0] else b"\x01")
    assert cache.verify("model-b") == {"model-b": [b.file("shared.bin").sha256]}
    assert not cache.model_dir("model-b").exists()
    assert list(cache.writer(b).missing()) == [b.file("shared.bin").sha256]
