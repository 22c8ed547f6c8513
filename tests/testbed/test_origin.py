"""The local Hub origin against real huggingface_hub / transformers clients, on a real server."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from huggingface_hub import HfApi, RepoFile, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from testbed.origin import create_app
from testbed.zoo import load_zoo
from tests.helpers import (
    REPO_ROOT,
    free_port,
    hf_env,
    last_json_line,
    live_server,
    run_python,
    wait_until,
)

TOKEN = "origin-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def origin_url(zoo_dir: Path):
    with live_server(create_app(zoo_dir, auth_token=TOKEN)) as url:
        yield url


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".cache" not in p.relative_to(root).parts
    }


def test_snapshot_download_every_repo_is_byte_identical(zoo_dir, origin_url, tmp_path):
    models = load_zoo(zoo_dir)["models"]
    assert {m["kind"] for m in models} >= {"base", "classifier", "lora"}
    for model in models:
        repo_id = model["repo_id"]
        local = snapshot_download(repo_id, endpoint=origin_url, cache_dir=tmp_path / "hf")
        expected = _files(zoo_dir / "repos" / repo_id)
        got = _files(Path(local))
        assert got.keys() == expected.keys(), repo_id
        for path, data in expected.items():
            assert got[path] == data, f"{repo_id}/{path} differs"


def test_revision_is_deterministic_and_main_resolves_to_it(zoo_dir, origin_url):
    api = HfApi(endpoint=origin_url)
    info = api.model_info("trimcache-zoo/bert-sst2")
    assert info.sha is not None and len(info.sha) == 40
    assert api.model_info("trimcache-zoo/bert-sst2", revision=info.sha).sha == info.sha
    # A fresh app over the same files derives the same revision.
    with live_server(create_app(zoo_dir)) as other:
        other_info = HfApi(endpoint=other).model_info("trimcache-zoo/bert-sst2")
        assert other_info.sha == info.sha
    siblings = {s.rfilename: s for s in info.siblings or []}
    weights = siblings["model.safetensors"]
    path = zoo_dir / "repos/trimcache-zoo/bert-sst2/model.safetensors"
    assert weights.lfs is not None
    assert weights.lfs.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_head_headers(zoo_dir, origin_url):
    url = f"{origin_url}/trimcache-zoo/bert-sst2/resolve/main/model.safetensors"
    r = httpx.head(url)
    path = zoo_dir / "repos/trimcache-zoo/bert-sst2/model.safetensors"
    assert r.status_code == 200
    assert r.headers["content-length"] == str(path.stat().st_size)
    assert r.headers["accept-ranges"] == "bytes"
    assert r.headers["etag"] == f'"{hashlib.sha256(path.read_bytes()).hexdigest()}"'
    sha = HfApi(endpoint=origin_url).model_info("trimcache-zoo/bert-sst2").sha
    assert r.headers["x-repo-commit"] == sha


def test_range_reads_return_exactly_the_asked_bytes(zoo_dir, origin_url):
    path = zoo_dir / "repos/trimcache-zoo/bert-sst2/model.safetensors"
    data = path.read_bytes()
    size = len(data)
    url = f"{origin_url}/trimcache-zoo/bert-sst2/resolve/main/model.safetensors"
    cases = {
        "bytes=0-7": data[:8],
        "bytes=1000-3000999": data[1000:3001000],
        f"bytes={size - 10}-": data[-10:],
        "bytes=-100": data[-100:],
        f"bytes=5-{size + 1000}": data[5:],
    }
    for header, expected in cases.items():
        r = httpx.get(url, headers={"Range": header})
        assert r.status_code == 206, header
        assert r.content == expected, header
        start = size - len(expected) if header.startswith("bytes=-") else None
        assert r.headers["content-length"] == str(len(expected))
        if start is not None:
            assert r.headers["content-range"] == f"bytes {start}-{size - 1}/{size}"
    r = httpx.get(url, headers={"Range": f"bytes={size}-"})
    assert r.status_code == 416
    assert r.headers["content-range"] == f"bytes */{size}"
    assert httpx.get(url).content == data


def test_hub_error_codes_map_to_huggingface_hub_errors(origin_url, tmp_path):
    kwargs = {"endpoint": origin_url, "cache_dir": tmp_path}
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("trimcache-zoo/no-such-model", "config.json", **kwargs)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("trimcache-zoo/bert-sst2", "config.json", revision="v9", **kwargs)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("trimcache-zoo/bert-sst2", "no-such-file.bin", **kwargs)
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=origin_url).model_info("trimcache-zoo/no-such-model")
    with pytest.raises(RevisionNotFoundError):
        snapshot_download("trimcache-zoo/bert-sst2", revision="v9", **kwargs)
    r = httpx.get(f"{origin_url}/trimcache-zoo/bert-sst2/resolve/main/nope.txt")
    assert r.status_code == 404
    assert r.headers["x-error-code"] == "EntryNotFound"
    assert r.json()["error"]["code"] == "entry_not_found"


def test_tree_listing(zoo_dir, origin_url):
    r = httpx.get(
        f"{origin_url}/api/models/trimcache-zoo/bert-sst2/tree/main",
        params={"recursive": "true"},
    )
    assert r.status_code == 200
    entries = {e["path"]: e for e in r.json()}
    repo = zoo_dir / "repos/trimcache-zoo/bert-sst2"
    assert set(entries) == {p.name for p in repo.iterdir()}
    weights = entries["model.safetensors"]
    assert weights["size"] == (repo / "model.safetensors").stat().st_size
    assert (
        weights["lfs"]["oid"]
        == hashlib.sha256((repo / "model.safetensors").read_bytes()).hexdigest()
    )
    assert "lfs" not in entries["config.json"]
    r = httpx.get(f"{origin_url}/api/models/trimcache-zoo/bert-sst2/tree/main/missing")
    assert r.headers["x-error-code"] == "EntryNotFound"


def test_get_safetensors_metadata(origin_url):
    meta = HfApi(endpoint=origin_url).get_safetensors_metadata("trimcache-zoo/bert-sst2")
    assert not meta.sharded
    tensors = meta.files_metadata["model.safetensors"].tensors
    assert "classifier.weight" in tensors
    assert tensors["classifier.weight"].shape == [2, 384]


def test_stats_count_bytes_served_per_repo(zoo_dir, origin_url):
    base = origin_url
    assert httpx.post(f"{base}/v1/stats/reset", headers=AUTH).json()["bytes_served"] == 0
    url = f"{base}/trimcache-zoo/bert-spam/resolve/main/config.json"
    size = (zoo_dir / "repos/trimcache-zoo/bert-spam/config.json").stat().st_size
    httpx.head(url)
    httpx.get(url)
    httpx.get(url, headers={"Range": "bytes=0-9"})
    stats = httpx.get(f"{base}/v1/stats").json()
    assert stats["bytes_served"] == size + 10
    assert stats["repos"]["trimcache-zoo/bert-spam"] == {
        "bytes_served": size + 10,
        "requests": 2,
    }


def test_counter_reset_needs_the_token(zoo_dir, origin_url):
    httpx.get(f"{origin_url}/trimcache-zoo/bert-spam/resolve/main/config.json")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        r = httpx.post(f"{origin_url}/v1/stats/reset", headers=headers)
        assert r.status_code == 401 and r.headers["x-error-code"] == "unauthorized"
    assert httpx.get(f"{origin_url}/v1/stats").json()["bytes_served"] > 0
    # No token configured: the reset is refused, never open.
    with live_server(create_app(zoo_dir)) as bare:
        r = httpx.post(f"{bare}/v1/stats/reset", headers=AUTH)
        assert (
            r.status_code == 401 and "ORIGIN_AUTH_TOKEN is not set" in r.json()["error"]["message"]
        )


def test_non_latin1_paths_and_huge_bodies_are_client_errors(origin_url):
    for path in (
        "/trimcache-zoo/bert-spam/resolve/main/caf\u00e9\u2603.json",
        "/api/models/\u00ff/\u4e2d",
    ):
        r = httpx.get(origin_url + path)
        assert r.status_code == 404, (path, r.text)
        assert r.json()["error"]["code"] in ("entry_not_found", "repo_not_found")
    big = b"x" * (3 * 1024 * 1024)
    r = httpx.post(f"{origin_url}/v1/stats/reset", content=big, headers=AUTH)
    assert r.status_code == 413 and r.headers["x-error-code"] == "payload_too_large"


def test_link_emulation_paces_bytes_and_adds_latency(zoo_dir):
    rate = 8 * 1024 * 1024
    app = create_app(zoo_dir, rate_bytes_per_s=rate, latency_ms=400)
    with live_server(app) as url:
        file_url = f"{url}/trimcache-zoo/minilm-base/resolve/main/model.safetensors"
        started = time.monotonic()
        httpx.head(file_url)
        assert time.monotonic() - started >= 0.4
        started = time.monotonic()
        r = httpx.get(file_url, headers={"Range": "bytes=0-4194303"})
        elapsed = time.monotonic() - started
        assert len(r.content) == 4 * 1024 * 1024
        # 4 MiB at 8 MiB/s, minus at most one MiB of burst credit, plus latency.
        assert elapsed >= 0.4 + 3 / 8 - 0.05
        counters = app.state.link_counters
        before = (counters.delayed_requests, counters.unemulated_requests)
        httpx.get(f"{url}/v1/stats")
        httpx.get(f"{url}/healthz")
        # /v1/* and /healthz are left alone; the two Hub requests above were delayed.
        assert before[0] == 2
        assert (counters.delayed_requests, counters.unemulated_requests) == (2, before[1] + 2)


def test_transformers_from_pretrained_through_hf_endpoint(origin_url, tmp_path):
    script = (
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n"
        "import torch, json\n"
        "tok = AutoTokenizer.from_pretrained('trimcache-zoo/bert-sst2')\n"
        "m = AutoModelForSequenceClassification.from_pretrained('trimcache-zoo/bert-sst2')\n"
        "m.eval()\n"
        "with torch.no_grad():\n"
        "    out = m(**tok(['I loved this film', 'a dull, lifeless mess'],"
        " padding=True, return_tensors='pt')).logits.argmax(-1).tolist()\n"
        "print(json.dumps([m.config.id2label[i] for i in out]))\n"
    )
    result = run_python(script, env=hf_env(origin_url, tmp_path / "hf"))
    assert last_json_line(result) == ["positive", "negative"]


def test_origin_serve_cli(zoo_dir):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "testbed.cli", "origin", "serve", "--root", str(zoo_dir)]
        + ["--port", str(port), "--latency-ms", "1", "--rate-mbps", "800"],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(f"{url}/healthz").status_code == 200, timeout_s=60)
        r = httpx.get(f"{url}/trimcache-zoo/bert-sst2/resolve/main/config.json")
        config = zoo_dir / "repos/trimcache-zoo/bert-sst2/config.json"
        assert r.content == config.read_bytes()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def test_nested_files_etags_and_revision_changes(tmp_path):
    """A hand-made repo: subfolders, git-style oids, LFS-style weights, revision tracks content."""
    repo = tmp_path / "repos" / "org" / "nested"
    (repo / "sub" / "deeper").mkdir(parents=True)
    (repo / "a.txt").write_bytes(b"hello\n")
    (repo / "sub" / "b.json").write_bytes(b"{}")
    (repo / "sub" / "deeper" / "w.safetensors").write_bytes(b"\0" * 1000)
    with live_server(create_app(tmp_path)) as url:
        api = HfApi(endpoint=url)
        top = {e["path"]: e for e in httpx.get(f"{url}/api/models/org/nested/tree/main").json()}
        assert top["sub"]["type"] == "directory" and "sub/b.json" not in top
        files = {
            f.path: f
            for f in api.list_repo_tree("org/nested", recursive=True)
            if isinstance(f, RepoFile)
        }
        assert set(files) >= {"a.txt", "sub/b.json", "sub/deeper/w.safetensors"}
        text_oid = _git_blob_sha1(b"hello\n")  # what `git hash-object` says
        weights_sha256 = hashlib.sha256(b"\0" * 1000).hexdigest()
        assert files["a.txt"].blob_id == text_oid
        head = httpx.head(f"{url}/org/nested/resolve/main/a.txt")
        assert head.headers["etag"] == f'"{text_oid}"'
        weights = httpx.head(f"{url}/org/nested/resolve/main/sub/deeper/w.safetensors")
        assert weights.headers["x-linked-etag"] == f'"{weights_sha256}"'
        local = snapshot_download("org/nested", endpoint=url, cache_dir=tmp_path / "hf")
        assert (Path(local) / "sub" / "deeper" / "w.safetensors").read_bytes() == b"\0" * 1000
        before = api.model_info("org/nested").sha
        (repo / "a.txt").write_bytes(b"changed\n")
        after = api.model_info("org/nested").sha
        assert before != after
        with pytest.raises(RevisionNotFoundError):
            api.model_info("org/nested", revision=before)
        assert httpx.get(f"{url}/org/nested/resolve/main/a.txt").content == b"changed\n"


def test_list_models_answers_hfapi_like_the_hub(zoo_dir, origin_url):
    """`HfApi.list_models` (the params it sends, Link-header pagination) lists every repo."""
    api = HfApi(endpoint=origin_url)
    expected = sorted(m["repo_id"] for m in load_zoo(zoo_dir)["models"])
    assert sorted(m.id for m in api.list_models()) == expected
    assert [m.id for m in api.list_models(search="SST2")] == ["trimcache-zoo/bert-sst2"]
    assert sorted(m.id for m in api.list_models(author="trimcache-zoo")) == expected
    assert list(api.list_models(author="someone-else")) == []
    assert list(api.list_models(filter="no-such-tag")) == []
    assert len(list(api.list_models(filter="trimcache-zoo"))) == len(expected)
    # limit is the page size: the next page follows the Link header.
    assert [m.id for m in api.list_models(limit=2)] == expected[:2]
    pages = httpx.get(f"{origin_url}/api/models", params={"limit": 2})
    assert 'rel="next"' in pages.headers["link"]
    assert [m.id for m in api.list_models(sort="likes")] == expected  # ties: by id
    backwards = httpx.get(f"{origin_url}/api/models", params={"sort": "id", "direction": -1})
    assert [m["id"] for m in backwards.json()] == expected[::-1]
    full = {m.id: m for m in api.list_models(full=True)}
    sst2 = full["trimcache-zoo/bert-sst2"]
    assert sst2.sha == api.model_info("trimcache-zoo/bert-sst2").sha
    assert "model.safetensors" in {s.rfilename for s in sst2.siblings or []}
    expanded = next(iter(api.list_models(search="bert-sst2", expand=["sha"])))
    assert expanded.sha == sst2.sha
    bad = httpx.get(f"{origin_url}/api/models", params={"sort": "nonsense"})
    assert bad.status_code == 400 and bad.headers["x-error-code"] == "BadRequest"


@pytest.mark.skipif(shutil.which("setpriv") is None or os.geteuid() != 0, reason="needs root")
def test_an_unreadable_zoo_file_is_a_clear_error_not_a_500(zoo_dir):
    """A zoo the origin's user may not read (a root-built zoo served by uid 65534, as in a
    container): a JSON ``file_unreadable`` answer naming the file, not a 500 traceback."""
    # Not under pytest's tmp_path: its parents are private to root.
    tmp_path = Path(tempfile.mkdtemp(prefix="origin-unreadable-"))
    repo = tmp_path / "zoo" / "repos" / "trimcache-zoo" / "bert-sst2"
    shutil.copytree(zoo_dir / "repos" / "trimcache-zoo" / "bert-sst2", repo)
    for path in [tmp_path, *sorted(tmp_path.rglob("*"))]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    (repo / "config.json").chmod(0o600)  # what save_pretrained writes
    port = free_port()
    proc = subprocess.Popen(
        ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
        + [sys.executable, "-m", "testbed.cli", "origin", "serve", "--root", str(tmp_path / "zoo")]
        + ["--port", str(port)],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _answers(f"{url}/healthz"), timeout_s=60)
        r = httpx.get(f"{url}/trimcache-zoo/bert-sst2/resolve/main/config.json")
        assert r.status_code == 503, r.text
        assert r.headers["x-error-code"] == "file_unreadable"
        assert "config.json" in r.json()["error"]["message"]
        assert httpx.get(f"{url}/healthz").status_code == 200  # the origin keeps serving
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(tmp_path, ignore_errors=True)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
