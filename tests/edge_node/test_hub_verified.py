"""One Hub API on both servers, and no changed byte delivered as a successful response.

- An HF cache filled from the origin and then from an edge holds one blob per file: both send
  the Hub's ETags (sha256 for LFS-like files, git blob sha1 for the others).
- A block file written while its response streams (by ``sendfile``): ``/v1/blocks`` (one block
  or a batch) and the resolve route never complete the response. The resolve route taints the
  block (edge_node.tainted), so a Range resume over it gets the whole file (200): the changed
  byte did reach the client, yet ``huggingface_hub`` (which resumes a cut transfer with a Range)
  ends with the right file or an error, never a wrong file (with and without link emulation,
  i.e. on the message path and on the direct socket path). Either way the block is quarantined
  and repaired.
- A manifest that gives a held block another length is refused (409 block_length_conflict).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.hubapi import is_lfs
from core.manifest import ModelManifest
from tests.edge_node.conftest import AUTH, plan_body
from tests.helpers import apply_plan, wait_until

REPO = "trimcache-zoo/clf-a"


def _placed(edge_factory: Any, manifests: dict[str, ModelManifest], origin_url: str, **kw: Any):
    url, app = edge_factory("edge-v", **kw)
    body = plan_body([manifests["clf-a"]], origin_url=origin_url)
    r = apply_plan(url, body, headers=AUTH)
    assert r.applied, r.status
    return url, app


def _blobs(cache: Path) -> dict[str, int]:
    blobs = cache / f"models--{REPO.replace('/', '--')}" / "blobs"
    return {p.name: p.stat().st_size for p in blobs.iterdir()}


def test_hf_cache_from_origin_then_edge_holds_one_blob_per_file(
    edge_factory, manifests, origin_url, tmp_path
):
    from huggingface_hub import snapshot_download

    url, _ = _placed(edge_factory, manifests, origin_url)
    manifest = manifests["clf-a"]
    cache = tmp_path / "hf"
    snapshot_download(REPO, endpoint=origin_url, cache_dir=cache)
    from_origin = _blobs(cache)
    snapshot_download(REPO, endpoint=url, cache_dir=cache, force_download=True)
    assert _blobs(cache) == from_origin  # the edge named every blob as the origin did
    assert len(from_origin) == len({e.sha256 for e in manifest.files})
    for entry in manifest.files:
        etags = {
            httpx.head(f"{base}/{REPO}/resolve/main/{entry.path}").headers["etag"]
            for base in (origin_url, url)
        }
        assert len(etags) == 1, (entry.path, etags)
        etag = etags.pop().strip('"')
        if is_lfs(entry.path, entry.size):
            assert etag == entry.sha256
        else:
            assert len(etag) == 40 and etag != entry.sha256[:40]  # git blob sha1
        assert etag in from_origin


def _largest_block(manifest: ModelManifest) -> tuple[str, int]:
    return max(manifest.block_sizes().items(), key=lambda kv: kv[1])


def _flip(path: Path, offset: int) -> None:
    with path.open("r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))


def _stats(url: str) -> dict[str, Any]:
    stats: dict[str, Any] = httpx.get(f"{url}/v1/stats").json()
    return stats


@pytest.mark.parametrize("route", ["block", "batch"])
def test_block_written_mid_response_is_never_a_complete_response(
    edge_factory, manifests, origin_url, route
):
    url, app = _placed(edge_factory, manifests, origin_url)
    node = app.state.node
    block_id, size = _largest_block(manifests["clf-a"])
    if route == "block":
        request: dict[str, Any] = {"method": "GET", "url": f"{url}/v1/blocks/{block_id}"}
        total = size
    else:
        # The changed block is not the body's last: on the direct path it goes by one whole
        # sendfile and is checked before the next block's first byte (no tail of its own).
        others = sorted(
            (kv for kv in manifests["clf-a"].block_sizes().items() if kv[0] != block_id),
            key=lambda kv: -kv[1],
        )[:3]
        body = {"block_ids": [block_id] + [b for b, _ in others]}
        request = {"method": "POST", "url": f"{url}/v1/blocks:batch", "json": body}
        total = size + sum(n for _, n in others)
    received = 0
    with httpx.Client(timeout=60) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            with client.stream(**request) as r:
                assert r.status_code == 200
                assert int(r.headers["content-length"]) == total
                chunks = r.iter_raw(1 << 20)
                received += len(next(chunks))
                _flip(node.store.path(block_id), size // 2)  # far past what was sent
                for chunk in chunks:
                    received += len(chunk)
    assert received < total
    # Re-hashed on the spot: quarantined, then repaired from the origin.
    assert _stats(url)["corrupt_blocks"] == 1
    wait_until(lambda: _stats(url)["repaired_blocks"] == 1, timeout_s=60)
    good = httpx.request(**request, timeout=60)
    assert len(good.content) == total
    assert hashlib.sha256(good.content[:size]).hexdigest() == block_id


def _incomplete_bytes(cache: Path) -> int:
    """Bytes huggingface_hub has written to its partial file(s) so far."""
    return sum(p.stat().st_size for p in cache.rglob("*.incomplete") if p.exists())


def test_hub_download_resumed_over_a_block_written_mid_sendfile_ends_with_the_right_file(
    edge_factory, manifests, origin_url, tmp_path
):
    from huggingface_hub import hf_hub_download

    # A slow radio link, so the block is written while its sendfile slices go out (the
    # message path: the tail read after them finds the file changed and cuts the response).
    url, app = _placed(edge_factory, manifests, origin_url, link_rate_bytes_per_s=16e6)
    node = app.state.node
    entry = manifests["clf-a"].file("model.safetensors")
    ref = max(entry.blocks, key=lambda b: b.length)
    assert ref.length > 16 << 20  # the word embeddings: seconds of line time
    cache = tmp_path / "hf"
    outcome: dict[str, Any] = {}

    def download() -> None:
        try:
            outcome["path"] = hf_hub_download(
                REPO, "model.safetensors", endpoint=url, cache_dir=cache
            )
        except Exception as exc:  # what a caller would see
            outcome["error"] = exc

    thread = threading.Thread(target=download)
    thread.start()
    wait_until(lambda: _incomplete_bytes(cache) > ref.offset + (2 << 20), timeout_s=60)
    # Ahead of what the client has, inside the block being sent: the changed byte goes out.
    _flip(node.store.path(ref.block_id), ref.length - (4 << 20))
    thread.join(timeout=180)
    assert not thread.is_alive()
    assert _stats(url)["corrupt_blocks"] == 1  # re-hashed after the cut, quarantined
    assert ref.block_id in node.tainted._since
    # huggingface_hub resumed with a Range over the tainted block, got the whole file (200)
    # and rewrote its partial file: the right file, or an error, never a wrong file.
    if "path" in outcome:
        data = Path(outcome["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry.sha256
        # Its head counted ~ref.offset bytes; a 206 resume would have added only the rest.
        assert _stats(url)["bytes_served"] >= entry.size  # the whole file in one response
    else:
        assert isinstance(outcome["error"], Exception)
    wait_until(lambda: _stats(url)["repaired_blocks"] == 1, timeout_s=60)


def test_resolve_cut_by_a_block_written_mid_sendfile_refuses_to_resume_over_it(
    edge_factory, manifests, origin_url, tmp_path
):
    # No link emulation: the body goes straight to the socket (edge_node.direct) by sendfile.
    url, app = _placed(edge_factory, manifests, origin_url)
    node = app.state.node
    entry = manifests["clf-a"].file("model.safetensors")
    path = f"{REPO}/resolve/main/{entry.path}"
    good = httpx.get(f"{origin_url}/{path}", timeout=60).content
    ref = max(entry.blocks, key=lambda b: b.length)  # far more than the socket buffers hold
    changed_at = ref.offset + ref.length // 2
    received = bytearray()
    with httpx.Client(timeout=60) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            with client.stream("GET", f"{url}/{path}") as r:
                assert r.status_code == 200
                chunks = r.iter_raw(1 << 20)
                received += next(chunks)
                assert len(received) < ref.offset + ref.length // 4
                _flip(node.store.path(ref.block_id), ref.length // 2)  # during its sendfile
                for chunk in chunks:
                    received += chunk
    # Cut short right after that block's sendfile, which carried the changed byte.
    assert changed_at < len(received) < entry.size
    assert received[:changed_at] == good[:changed_at]
    assert received[changed_at] != good[changed_at]
    assert _stats(url)["corrupt_blocks"] == 1
    assert (node.settings.data_dir / "tainted.json").exists()
    # A resume over the tainted block gets the whole file, from good bytes (pulled through
    # from the origin until the block is repaired).
    resume = httpx.get(f"{url}/{path}", headers={"Range": f"bytes={len(received)}-"}, timeout=60)
    assert resume.status_code == 200
    assert resume.headers["x-trimcache-range-ignored"] == "tainted"
    assert "content-range" not in resume.headers
    assert hashlib.sha256(resume.content).hexdigest() == entry.sha256
    # Ranges whose head holds no tainted block are served as usual.
    for start in (0, ref.offset):
        part = httpx.get(f"{url}/{path}", headers={"Range": f"bytes={start}-"}, timeout=60)
        assert part.status_code == 206, start
        assert part.content == good[start:]
    wait_until(lambda: _stats(url)["repaired_blocks"] == 1, timeout_s=60)
    again = httpx.get(f"{url}/{path}", timeout=60)
    assert hashlib.sha256(again.content).hexdigest() == entry.sha256


def test_manifest_giving_a_held_block_another_length_is_rejected(
    edge_factory, manifests, origin_url
):
    url, _ = _placed(edge_factory, manifests, origin_url)
    held = manifests["clf-a"]
    entry = held.file("model.safetensors")
    ref = entry.blocks[-1]
    short = dataclasses.replace(ref, length=ref.length // 2)
    lying = dataclasses.replace(
        held,
        model_id="clf-a-cut",
        repo_id="trimcache-zoo/clf-a-cut",
        files=tuple(
            dataclasses.replace(
                e,
                size=e.size - (ref.length - short.length),
                blocks=(*e.blocks[:-1], short),
            )
            if e.path == entry.path
            else e
            for e in held.files
        ),
    )
    body = plan_body([held, lying], version=2, origin_url=origin_url)
    r = httpx.put(f"{url}/v1/plan", json=body, headers=AUTH, timeout=60)
    assert r.status_code == 409, r.text
    assert r.json()["error"]["code"] == "block_length_conflict"
    listed = httpx.get(f"{url}/v1/models").json()["models"]
    assert "clf-a-cut" not in {m["model_id"] for m in listed}
    cut = httpx.get(f"{url}/trimcache-zoo/clf-a-cut/resolve/main/model.safetensors")
    assert cut.status_code == 404


def test_node_says_at_start_up_whether_zero_copy_is_active(edge_factory, caplog):
    import uvicorn

    caplog.set_level(logging.INFO, logger="edge_node.app")
    edge_factory("edge-z")
    said = [r.getMessage() for r in caplog.records if "zero-copy sendfile" in r.getMessage()]
    assert said == [
        f"zero-copy sendfile active: uvicorn {uvicorn.__version__} on "
        "_UnixSelectorEventLoop (h11 or httptools)"
    ]
