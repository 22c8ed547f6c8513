"""The data path against the real stack (origin, controller, edge nodes): blocks written in place,
verified once, shared between siblings on the device, resumed after an interruption.

The corrupt byte is injected by middleware around a real edge node (tests/faults.py): the edge
verifies what it serves, so the flip has to happen between its app and the socket.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from client import Client, DiskFullError, NoSourceError, fetch_model
from client._cache import DeviceCache
from tests.client.services import (
    ORG,
    Stack,
    assert_zoo_files,
    corrupting_edge,
    edge_process,
    push_plan,
)
from tests.helpers import REPO_ROOT, run_cli, wait_until


def repo(stack: Stack, model_id: str) -> Path:
    return stack.zoo / "repos" / ORG / model_id


def test_flipped_byte_refetches_only_that_block(stack: Stack, tmp_path: Path) -> None:
    sst2 = stack.manifest("bert-sst2")
    sizes = sst2.block_sizes()
    victim = max(sizes, key=lambda b: sizes[b])  # the largest block: a flip deep in a batch
    with corrupting_edge(stack, tmp_path / "edge-0", "bert-sst2", corrupt_ids={victim}) as (
        bad,
        faults,
    ):
        model = fetch_model(
            "bert-sst2", controller_url=stack.controller, cache_dir=tmp_path / "cache", load=False
        )
    assert faults.flipped == [victim]  # injected once, in the real edge's batch body
    report = model.report
    assert [(f["source"], f["block_id"]) for f in report["failures"]] == [(bad, victim)]
    assert "sha256" in report["failures"][0]["reason"]
    assert report["bytes_by_source"] == {
        "local": 0,
        bad: sst2.unique_bytes - sizes[victim],
        stack.edges[0]: sizes[victim],  # the next candidate of that block, and only it
    }
    assert_zoo_files(model.path, repo(stack, "bert-sst2"))


class _StopAt:
    """A progress hook that interrupts the fetch (like Ctrl-C) once ``at_bytes`` arrived."""

    def __init__(self, at_bytes: int) -> None:
        self.at_bytes = at_bytes
        self.seen = 0

    def on_phase(self, model_id: str, phase: str) -> None:
        pass

    def on_plan(self, model_id: str, **_: Any) -> None:
        pass

    def on_bytes(self, source_url: str, nbytes: int) -> None:
        self.seen += nbytes
        if self.seen >= self.at_bytes:
            raise KeyboardInterrupt


def test_interrupted_fetch_resumes_from_verified_blocks(stack: Stack, tmp_path: Path) -> None:
    sst2 = stack.manifest("bert-sst2")
    with Client(edge_url=stack.edges[0], cache_dir=tmp_path) as client:
        with pytest.raises(KeyboardInterrupt):
            client.fetch("bert-sst2", load=False, progress=_StopAt(sst2.unique_bytes // 2))
    cache = DeviceCache(tmp_path)
    [listed] = cache.list_models()
    kept = listed.present_bytes
    assert 0 < kept < sst2.unique_bytes and not listed.assembled
    assert not cache.model_dir("bert-sst2").exists()  # nothing under the final name yet
    model = fetch_model("bert-sst2", edge_url=stack.edges[0], cache_dir=tmp_path, load=False)
    assert model.report["bytes_by_source"] == {
        "local": kept,
        stack.edges[0]: sst2.unique_bytes - kept,
    }
    assert_zoo_files(model.path, repo(stack, "bert-sst2"))
    assert not cache.partial_dir("bert-sst2").exists()


def test_siblings_share_blocks_on_the_device(stack: Stack, tmp_path: Path) -> None:
    models = ("bert-sst2", "bert-spam")
    seen: set[str] = set()
    with Client(edge_url=stack.edges[0], cache_dir=tmp_path) as client:
        for model_id in models:
            manifest = stack.manifest(model_id)
            unique = sum(n for b, n in manifest.block_sizes().items() if b not in seen)
            fetched = client.fetch(model_id, load=False)
            assert fetched.report["bytes_fetched"] == unique  # the network moves only these
            assert fetched.report["bytes_local"] == manifest.unique_bytes - unique
            seen.update(manifest.block_sizes())
            assert_zoo_files(fetched.path, repo(stack, model_id))
    files = sum(stack.manifest(m).total_bytes for m in models)
    usage = DeviceCache(tmp_path).disk_usage()
    assert files <= usage.models_bytes <= 1.02 * files  # every file once, nothing else


def test_edge_only_and_cached_refetch(stack: Stack, tmp_path: Path) -> None:
    spam = stack.manifest("bert-spam")
    first = fetch_model("bert-spam", edge_url=stack.edges[0], cache_dir=tmp_path, load=False)
    again = fetch_model("bert-spam", edge_url=stack.edges[0], cache_dir=tmp_path, load=False)
    assert first.report["bytes_fetched"] == spam.unique_bytes
    assert again.report["bytes_fetched"] == 0
    assert again.report["bytes_local"] == spam.unique_bytes
    assert_zoo_files(again.path, repo(stack, "bert-spam"))


def test_origin_only_then_resume_by_range(stack: Stack, tmp_path: Path) -> None:
    kwargs: dict[str, Any] = {
        "origin_url": stack.origin,
        "repo_id": f"{ORG}/bert-sst2",
        "cache_dir": tmp_path,
        "load": False,
    }
    model = fetch_model("bert-sst2", **kwargs)
    assert_zoo_files(model.path, repo(stack, "bert-sst2"))
    assert model.report["bytes_by_source"][stack.origin] > 0
    # Bit rot on the device, found by `cache verify`: only that block comes back, by Range.
    sst2 = stack.manifest("bert-sst2")
    weights = next(f for f in sst2.files if f.kind == "safetensors")
    block = max(weights.blocks, key=lambda b: b.length)
    with open(model.path / weights.path, "r+b") as fh:
        fh.seek(block.offset + 10)
        byte = fh.read(1)
        fh.seek(block.offset + 10)
        fh.write(bytes([byte[0] ^ 0xFF]))
    env = {"TRIMCACHE_CACHE_DIR": str(tmp_path)}
    verified = run_cli("cache", "verify", env=env)
    assert verified.returncode == 1 and "bert-sst2: 1 bad blocks" in verified.stdout
    again = fetch_model("bert-sst2", **kwargs)
    assert again.report["bytes_by_source"] == {
        "local": sst2.unique_bytes - block.length,
        stack.origin: block.length,
    }
    assert_zoo_files(again.path, repo(stack, "bert-sst2"))
    assert run_cli("cache", "verify", "bert-sst2", env=env).stdout == "bert-sst2: ok\n"


FETCH_IN_A_PROCESS = """
import json, sys
from client import fetch_model
m = fetch_model(sys.argv[1], controller_url=sys.argv[2], cache_dir=sys.argv[3], load=False)
print(json.dumps(m.report["bytes_by_source"]))
"""


def test_concurrent_sibling_fetches_in_two_processes(stack: Stack, tmp_path: Path) -> None:
    models = ("bert-sst2", "bert-spam")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", FETCH_IN_A_PROCESS, m, stack.controller, str(tmp_path)],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for m in models
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        assert json.loads(out)
    cache = DeviceCache(tmp_path)
    assert cache.verify() == {m: [] for m in models}
    for model_id in models:
        assert_zoo_files(cache.model_dir(model_id), repo(stack, model_id))
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.startswith(".")]
    files = sum(stack.manifest(m).total_bytes for m in models)
    assert files <= cache.disk_usage().models_bytes <= 1.02 * files  # one copy of each file


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 24 MB filesystem (tmpfs) for the full-disk test; skipped when we cannot mount."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_is_a_clean_error(stack: Stack, tiny_disk: Path) -> None:
    with pytest.raises(DiskFullError, match="space"):
        fetch_model("bert-sst2", edge_url=stack.edges[0], cache_dir=tiny_disk, load=False)
    models = tiny_disk / "models"
    assert not (models / "bert-sst2").exists()
    assert not any(p.is_file() for p in models.rglob("*"))  # no partial file left anywhere
    env = {"TRIMCACHE_CACHE_DIR": str(tiny_disk)}
    result = run_cli("fetch", "bert-sst2", "--edge", stack.edges[0], "--quiet", env=env)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "space" in result.stderr


class _KillOnDownload:
    """A progress hook that SIGKILLs the edge process when the download phase starts."""

    def __init__(self, url: str, pid: int) -> None:
        self.url, self.pid = url, pid

    def on_phase(self, model_id: str, phase: str) -> None:
        if phase != "download":
            return
        os.kill(self.pid, signal.SIGKILL)
        host, port = self.url.removeprefix("http://").split(":")

        def refused() -> bool:
            try:
                socket.create_connection((host, int(port)), timeout=1).close()
            except OSError:
                return True
            return False

        wait_until(refused)

    def on_plan(self, model_id: str, **_: Any) -> None:
        pass

    def on_bytes(self, source_url: str, nbytes: int) -> None:
        pass


def test_no_source_names_what_was_tried(stack: Stack, tmp_path: Path) -> None:
    kwargs = {"origin_url": stack.origin, "controller_url": stack.controller}
    with edge_process("edge-0", tmp_path / "edge-0", **kwargs) as (url, pid):
        push_plan(url, stack.controller, stack.origin, ["bert-sst2"])
        with Client(edge_url=url, cache_dir=tmp_path / "cache") as client:
            with pytest.raises(NoSourceError, match=url.replace(".", r"\.")):
                client.fetch("bert-sst2", load=False, progress=_KillOnDownload(url, pid))
    stack.unregister("edge-0")
    models = tmp_path / "cache" / "models"
    assert os.listdir(models) == [".partial-bert-sst2"]  # kept for a resume
