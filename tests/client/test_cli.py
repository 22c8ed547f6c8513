"""``trimcache fetch | predict | cache`` in a subprocess, against a real block server."""

from __future__ import annotations

import json

from core.manifest import ModelManifest
from core.store import BlockStore
from tests.client.fakes import create_block_app
from tests.helpers import live_server, run_cli


def test_fetch_predict_cache_ls_rm(
    manifests: dict[str, ModelManifest], full_store: BlockStore, tmp_path
) -> None:
    env = {"TRIMCACHE_CACHE_DIR": str(tmp_path / "cache")}
    with live_server(create_block_app(full_store, manifests.values())) as edge:
        fetched = run_cli("fetch", "clf-a", "--edge", edge, env=env, timeout_s=120)
        assert fetched.returncode == 0, fetched.stderr
        assert "clf-a" in fetched.stdout and edge in fetched.stdout  # the summary table
        as_json = run_cli("fetch", "clf-b", "--edge", edge, "--json", env=env, timeout_s=120)
        assert as_json.returncode == 0, as_json.stderr
        report = json.loads(as_json.stdout)
        a, b = manifests["clf-a"], manifests["clf-b"]
        shared = sum(n for bid, n in b.block_sizes().items() if bid in a.block_sizes())
        assert report["bytes_by_source"]["local"] == shared
        predicted = run_cli(
            "predict", "clf-a", "I loved it", "awful", "--edge", edge, "--json", env=env
        )
        assert predicted.returncode == 0, predicted.stderr
        labels = [r["label"] for r in json.loads(predicted.stdout)]
        assert len(labels) == 2 and set(labels) <= {"negative", "positive"}
        missing = run_cli("fetch", "nope", "--edge", edge, env=env, timeout_s=120)
        assert missing.returncode == 1
        assert missing.stderr.count("\n") == 1 and "nope" in missing.stderr

    listed = json.loads(run_cli("cache", "ls", "--json", env=env).stdout)
    assert [m["model_id"] for m in listed["models"]] == ["clf-a", "clf-b"]
    assert all(m["complete"] and m["assembled"] for m in listed["models"])
    table = run_cli("cache", "ls", env=env)
    assert table.returncode == 0 and "clf-b" in table.stdout

    removed = run_cli("cache", "rm", "clf-b", env=env)
    assert removed.returncode == 0, removed.stderr
    store = BlockStore(tmp_path / "cache" / "store")
    assert store.is_complete(manifests["clf-a"])  # shared blocks stay for clf-a
    assert store.used_bytes == manifests["clf-a"].unique_bytes
    assert not (tmp_path / "cache" / "models" / "clf-b").exists()
    again = run_cli("cache", "rm", "clf-b", env=env)
    assert again.returncode == 1 and "clf-b" in again.stderr
