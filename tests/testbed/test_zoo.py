"""The model zoo: catalogue contract, real block sharing, bert-sst2 quality, determinism."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.zoo import (
    BASE_MODEL_ID,
    BASE_REPO_ID,
    PROFILES,
    TOKENIZER_FILES,
    generate_examples,
    load_zoo,
)
from tests.helpers import REPO_ROOT
from tests.testbed.heldout_sentiment import NEGATIVE, POSITIVE


def _tensors(path: Path) -> dict[str, bytes]:
    """Raw bytes of every tensor in a safetensors file, straight from the file."""
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    body = data[8 + header_len :]
    return {
        name: body[info["data_offsets"][0] : info["data_offsets"][1]]
        for name, info in header.items()
        if name != "__metadata__"
    }


def _normalise(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]", "", text.lower()).strip()


def test_catalogue_follows_the_contract(zoo_dir):
    catalogue = load_zoo(zoo_dir)
    assert catalogue["schema"] == "trimcache.zoo/v1"
    assert catalogue["base_model"] == BASE_MODEL_ID
    models = {m["model_id"]: m for m in catalogue["models"]}
    assert models["minilm-base"]["kind"] == "base"
    sst2 = models["bert-sst2"]
    assert sst2["repo_id"] == "trimcache-zoo/bert-sst2"
    assert sst2["labels"] == ["negative", "positive"]
    assert sst2["base"] == BASE_REPO_ID
    depths = {m["frozen_layers"] for m in models.values() if m["kind"] == "classifier"}
    assert 0 in depths and len(depths) >= 3
    for model in catalogue["models"]:
        repo = zoo_dir / "repos" / model["repo_id"]
        assert set(model) >= {
            "model_id",
            "repo_id",
            "kind",
            "task",
            "frozen_layers",
            "base",
            "labels",
            "synthetic",
        }
        assert all((repo / name).is_file() for name in TOKENIZER_FILES)
        card = (repo / "README.md").read_text()
        assert BASE_MODEL_ID in card
        if model["kind"] == "classifier":
            config = json.loads((repo / "config.json").read_text())
            assert list(config["id2label"].values()) == model["labels"]
            assert config["label2id"] == {v: int(k) for k, v in config["id2label"].items()}
            assert "Frozen layers" in card
        if model["kind"] == "lora":
            adapter = json.loads((repo / "adapter_config.json").read_text())
            assert adapter["base_model_name_or_path"] == model["base"] == BASE_REPO_ID
            assert adapter["peft_type"] == "LORA"
            assert (repo / "adapter_model.safetensors").is_file()


def test_frozen_layers_are_byte_identical_to_the_base(zoo_dir):
    base = _tensors(zoo_dir / "repos" / BASE_REPO_ID / "model.safetensors")
    for model in load_zoo(zoo_dir)["models"]:
        if model["kind"] != "classifier":
            continue
        k = model["frozen_layers"]
        tensors = _tensors(zoo_dir / "repos" / model["repo_id"] / "model.safetensors")
        for name, data in tensors.items():
            if not name.startswith("bert."):
                continue  # the classifier head
            original = base[name.removeprefix("bert.")]
            layer = re.match(r"bert\.encoder\.layer\.(\d+)\.", name)
            frozen = name.startswith("bert.embeddings.") or (
                layer is not None and int(layer.group(1)) < k
            )
            if frozen:
                assert data == original, f"{model['model_id']}: {name} changed"
            elif name.endswith("weight") and layer is not None:
                assert data != original, f"{model['model_id']}: {name} did not train"


def test_heldout_sentences_are_not_in_the_training_data():
    spec = next(s for s in PROFILES["full"] if s.model_id == "bert-sst2")
    train = {
        _normalise(text)
        for text, _ in generate_examples(
            "sentiment", seed=0, examples_per_class=spec.examples_per_class
        )
    }
    assert len(POSITIVE) == len(NEGATIVE) == 25
    assert not {_normalise(s) for s in POSITIVE + NEGATIVE} & train


def test_bert_sst2_classifies_plain_heldout_sentences(zoo_dir):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    repo = zoo_dir / "repos/trimcache-zoo/bert-sst2"
    tokenizer = AutoTokenizer.from_pretrained(repo)
    model = AutoModelForSequenceClassification.from_pretrained(repo).eval()
    texts = POSITIVE + NEGATIVE
    expected = ["positive"] * len(POSITIVE) + ["negative"] * len(NEGATIVE)
    with torch.no_grad():
        logits = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    predicted = [model.config.id2label[i] for i in logits.argmax(-1).tolist()]
    wrong = [t for t, p, e in zip(texts, predicted, expected, strict=True) if p != e]
    accuracy = 1 - len(wrong) / len(texts)
    assert accuracy >= 0.9, f"accuracy {accuracy:.2f}; wrong: {wrong}"


def _build(out: Path, *args: str, hash_seed: str = "0") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "testbed.cli", "zoo", "build", "--out", str(out), *args],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONHASHSEED": hash_seed},
        capture_output=True,
        text=True,
        timeout=600,
    )


def _all_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_build_is_deterministic(tmp_path):
    args = ("--profile", "test", "--only", "bert-spam,minilm-lora-topic", "--max-steps", "2")
    # Different hash seeds: set iteration order must not leak into the files.
    first = _build(tmp_path / "a", *args, hash_seed="1")
    second = _build(tmp_path / "b", *args, hash_seed="6")
    assert first.returncode == 0, first.stderr[-3000:]
    assert second.returncode == 0, second.stderr[-3000:]
    assert "zoo: [" in first.stderr  # progress is shown
    a, b = _all_files(tmp_path / "a"), _all_files(tmp_path / "b")
    assert a.keys() == b.keys()
    assert "repos/trimcache-zoo/bert-spam/model.safetensors" in a
    assert [path for path in a if a[path] != b[path]] == []


def test_synthetic_family_shares_most_blocks(tmp_path):
    pytest.importorskip("numpy")
    result = _build(
        tmp_path,
        "--only",
        "none",
        "--synthetic",
        "--synthetic-models",
        "2",
        "--synthetic-mb",
        "48",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    models = {m["model_id"]: m for m in load_zoo(tmp_path)["models"]}
    assert models["synthetic-llm-0"]["kind"] == "synthetic"
    assert models["synthetic-llm-0"]["synthetic"] is True
    from safetensors.numpy import load_file

    files = [tmp_path / f"repos/trimcache-zoo/synthetic-llm-{i}/model.safetensors" for i in (0, 1)]
    assert set(load_file(files[0])) == set(load_file(files[1]))  # valid safetensors
    a, b = _tensors(files[0]), _tensors(files[1])
    shared = sum(len(v) for k, v in a.items() if b[k] == v)
    total = sum(len(v) for v in a.values())
    assert 0.75 <= shared / total < 1.0
    assert "SYNTHETIC" in (files[0].parent / "README.md").read_text()


def test_tensor_level_dedup_saves_about_half(zoo_dir):
    """Our own count of unique tensor bytes agrees with `trimcache dedup` on the zoo."""
    import hashlib

    total, unique = 0, {}
    repos = sorted(p for p in (zoo_dir / "repos").glob("*/*") if p.is_dir())
    for repo in repos:
        for path in sorted(p for p in repo.rglob("*") if p.is_file()):
            data = path.read_bytes()
            total += len(data)
            if path.suffix == ".safetensors":
                (header_len,) = struct.unpack("<Q", data[:8])
                header = data[: 8 + header_len]
                unique[hashlib.sha256(header).hexdigest()] = len(header)
                for tensor in _tensors(path).values():
                    unique[hashlib.sha256(tensor).hexdigest()] = len(tensor)
            else:
                unique[hashlib.sha256(data).hexdigest()] = len(data)
    savings = 1 - sum(unique.values()) / total
    assert savings >= 0.45
    result = subprocess.run(
        [sys.executable, "-m", "testbed.cli", "dedup", *map(str, repos)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["total_bytes"] == total
    assert report["savings"] == pytest.approx(savings, abs=0.01)


# --------------------------------------------------------------------------- the shared cache


def test_the_zoo_key_follows_the_inputs():
    from testbed.zoo import zoo_key

    assert zoo_key("test") == zoo_key("test", seed=0)
    assert len({zoo_key("test"), zoo_key("full"), zoo_key("test", seed=1)}) == 3
    with pytest.raises(ValueError, match="unknown profile"):
        zoo_key("huge")  # type: ignore[arg-type]


def test_the_shared_cache_is_found_from_the_environment(monkeypatch, tmp_path):
    from testbed import paths
    from testbed.zoo import shared_zoo_dir, zoo_key

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    expected = tmp_path / "xdg/trimcache-testbed/zoo" / f"full-{zoo_key('full')}"
    assert shared_zoo_dir("full") == expected
    monkeypatch.setenv(paths.ZOO_CACHE_ENV, str(tmp_path / "zoos"))
    assert shared_zoo_dir("test").parent == tmp_path / "zoos"


def test_concurrent_callers_wait_for_one_build(monkeypatch, tmp_path):
    """A caller finding the lock held waits, then uses what the holder built: no second build."""
    import threading

    from filelock import FileLock

    from testbed.zoo import ensure_zoo, shared_zoo_dir

    monkeypatch.setenv("TRIMCACHE_ZOO_CACHE", str(tmp_path))
    target = shared_zoo_dir("test")
    messages: list[str] = []
    result: list[Path] = []
    with FileLock(str(tmp_path / f"{target.name}.lock")):  # another process is building
        waiter = threading.Thread(
            target=lambda: result.append(ensure_zoo("test", progress=messages.append))
        )
        waiter.start()
        deadline = 50
        while not messages and deadline:
            waiter.join(0.1)
            deadline -= 1
        assert messages and "waiting for it" in messages[0], messages
        target.mkdir()
        (target / "zoo.json").write_text("{}")  # the holder's build lands (atomic rename)
    waiter.join(30)
    assert result == [target]
    assert not any("zoo once into" in m for m in messages), messages  # no build started
    assert ensure_zoo("test") == target  # built: returned at once, without the lock
