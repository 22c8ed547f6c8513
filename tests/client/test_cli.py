"""``trimcache fetch | predict | cache`` in a subprocess, against a real edge node of the stack."""

from __future__ import annotations

import json
from pathlib import Path

from tests.client.services import Stack
from tests.helpers import run_cli


def test_fetch_predict_cache_ls_verify_rm(stack: Stack, tmp_path: Path) -> None:
    edge = stack.edges[0]
    cache = tmp_path / "cache"
    env = {"TRIMCACHE_CACHE_DIR": str(cache)}
    fetched = run_cli("fetch", "bert-sst2", "--edge", edge, env=env, timeout_s=120)
    assert fetched.returncode == 0, fetched.stderr
    assert "bert-sst2" in fetched.stdout and edge in fetched.stdout  # the summary table
    as_json = run_cli("fetch", "bert-spam", "--edge", edge, "--json", env=env, timeout_s=120)
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    a, b = stack.manifest("bert-sst2"), stack.manifest("bert-spam")
    shared = sum(n for bid, n in b.block_sizes().items() if bid in a.block_sizes())
    assert report["bytes_by_source"]["local"] == shared
    predicted = run_cli(
        "predict", "bert-sst2", "I loved it", "awful", "--edge", edge, "--json", env=env
    )
    assert predicted.returncode == 0, predicted.stderr
    labels = [r["label"] for r in json.loads(predicted.stdout)]
    assert len(labels) == 2 and set(labels) <= {"negative", "positive"}
    missing = run_cli("fetch", "nope", "--edge", edge, env=env, timeout_s=120)
    assert missing.returncode == 1
    assert missing.stderr.count("\n") == 1 and "nope" in missing.stderr

    listed = json.loads(run_cli("cache", "ls", "--json", env=env).stdout)
    assert [m["model_id"] for m in listed["models"]] == ["bert-spam", "bert-sst2"]
    assert all(m["complete"] and m["assembled"] for m in listed["models"])
    table = run_cli("cache", "ls", env=env)
    assert table.returncode == 0 and "bert-spam" in table.stdout
    verified = run_cli("cache", "verify", env=env)
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout == "bert-spam: ok\nbert-sst2: ok\n"

    removed = run_cli("cache", "rm", "bert-spam", env=env)
    assert removed.returncode == 0, removed.stderr
    assert not (cache / "models" / "bert-spam").exists()
    assert (cache / "models" / "bert-sst2" / "config.json").exists()  # its sibling stays
    listed = json.loads(run_cli("cache", "ls", "--json", env=env).stdout)
    assert [m["model_id"] for m in listed["models"]] == ["bert-sst2"]
    again = run_cli("cache", "rm", "bert-spam", env=env)
    assert again.returncode == 1 and "bert-spam" in again.stderr
    unknown = run_cli("cache", "verify", "bert-spam", env=env)
    assert unknown.returncode == 1 and unknown.stderr.count("\n") == 1
