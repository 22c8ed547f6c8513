"""A fetched model: its local directory, the loaded torch model and tokenizer, and inference.

torch, transformers and peft are imported only when a model is loaded, so ``import client`` stays
light. A LoRA repo (``adapter_config.json`` + ``adapter_model.safetensors``) is loaded on top of its
base model's directory with peft; the label names come from ``config.json`` (``id2label``) of the
repo itself, else of the base.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypedDict


class Prediction(TypedDict):
    """One inference result."""

    label: str
    score: float


def _adapter_base(path: Path) -> str | None:
    try:
        data = json.loads((path / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return None
    base = data.get("base_model_name_or_path") if isinstance(data, dict) else None
    return base if isinstance(base, str) and base else None


_LABELS_RE = re.compile(r"labels in order:\s*([^\n]+?)\.?\s*$", re.MULTILINE)


def _adapter_labels(path: Path) -> dict[int, str] | None:
    """Label names of a LoRA repo without ``config.json``.

    The number of labels is the first dimension of the classifier head saved with the adapter;
    the names come from the model card's "labels in order: a, b, c" line when it has one, else
    ``LABEL_i``.
    """
    from core.safetensors import read_header

    weights = path / "adapter_model.safetensors"
    if not weights.exists():
        return None
    rows = [
        t.shape[0]
        for t in read_header(weights).tensors
        if "classifier" in t.name and t.name.endswith("weight") and len(t.shape) == 2
    ]
    if not rows:
        return None
    count = rows[-1]
    names = [f"LABEL_{i}" for i in range(count)]
    try:
        match = _LABELS_RE.search((path / "README.md").read_text())
    except OSError:
        match = None
    if match:
        found = [n.strip().strip("`") for n in match.group(1).split(",")]
        if len(found) == count and all(found):
            names = found
    return dict(enumerate(names))


def _has_tokenizer(path: Path) -> bool:
    return any((path / name).exists() for name in ("tokenizer.json", "vocab.txt"))


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    """No transformers/huggingface_hub progress bars (the "Loading weights" bar) meanwhile.

    Loading is local (the files are already on the device), so a bar only adds noise to the
    fetch's own progress. The previous setting is restored afterwards.
    """
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]


@contextmanager
def _quiet(active: bool) -> Iterator[None]:
    """Silence library notices that do not concern the user (transformers logs, FutureWarning)."""
    if not active:
        yield
        return
    hf_logger = logging.getLogger("transformers")
    level = hf_logger.level
    hf_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        hf_logger.setLevel(level)


def load_classifier(path: Path, *, base_path: Path | None = None) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` from a local HF dir (a LoRA adapter needs ``base_path``)."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    is_adapter = (path / "adapter_config.json").exists()
    if is_adapter and base_path is None:
        raise ValueError(f"{path} holds a LoRA adapter: its base model directory is needed")
    weights_dir = base_path if is_adapter and base_path is not None else path
    config_dir = path if (path / "config.json").exists() else weights_dir
    labels = None if (path / "config.json").exists() else _adapter_labels(path)
    if labels is not None:
        config = AutoConfig.from_pretrained(
            config_dir,
            local_files_only=True,
            num_labels=len(labels),
            id2label=labels,
            label2id={name: i for i, name in labels.items()},
        )
    else:
        config = AutoConfig.from_pretrained(config_dir, local_files_only=True)
    with _no_progress_bars(), _quiet(is_adapter):
        # For an adapter the base has no head yet: transformers' "newly initialized" notice
        # is expected (peft loads the head saved with the adapter).
        model = AutoModelForSequenceClassification.from_pretrained(
            weights_dir, config=config, local_files_only=True, dtype=torch.float32
        )
        if is_adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, path, local_files_only=True)
    model.eval()
    tokenizer_dir = path if _has_tokenizer(path) else weights_dir
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    return model, tokenizer


class FetchedModel:
    """A model on the device: byte-identical HF files at :attr:`path`, ready for inference.

    ``model`` and ``tokenizer`` load on first use (``fetch_model`` loads them eagerly and times
    it in ``report["seconds"]["load"]``).

    Args:
        model_id: the TrimCache model id.
        path: the local directory of the model's files.
        report: bytes by source, seconds per phase, block counts (see ``fetch_model``).
        base_path: the base model's directory, for a LoRA adapter.
    """

    def __init__(
        self,
        model_id: str,
        path: Path,
        report: dict[str, Any],
        *,
        base_path: Path | None = None,
    ) -> None:
        self.model_id = model_id
        self.path = path
        self.report = report
        self.base_path = base_path
        self._model: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FetchedModel({self.model_id!r}, path={str(self.path)!r})"

    @property
    def is_adapter(self) -> bool:
        return _adapter_base(self.path) is not None

    def load(self) -> float:
        """Load model and tokenizer if not loaded yet; return the seconds it took."""
        with self._lock:
            if self._model is not None:
                return 0.0
            start = time.perf_counter()
            self._model, self._tokenizer = load_classifier(self.path, base_path=self.base_path)
            return time.perf_counter() - start

    @property
    def model(self) -> Any:
        """The ``transformers`` (or peft) model, in eval mode."""
        self.load()
        return self._model

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer."""
        self.load()
        return self._tokenizer

    def predict(self, texts: Sequence[str], *, batch_size: int = 32) -> list[Prediction]:
        """Classify ``texts``; one ``{"label", "score"}`` per text (score = softmax prob).

        Args:
            texts: the input sentences.
            batch_size: texts per forward pass.

        Returns:
            The predicted label name (from ``config.id2label``) and its probability, per text.

        Raises:
            TypeError: ``texts`` is a single string instead of a sequence of strings.
        """
        if isinstance(texts, str):
            raise TypeError("predict() takes a list of texts, not a single string")
        import torch

        model, tokenizer = self.model, self.tokenizer
        id2label = getattr(model.config, "id2label", None) or {}
        out: list[Prediction] = []
        for start in range(0, len(texts), batch_size):
            batch = list(texts[start : start + batch_size])
            encoded = tokenizer(batch, padding=True, truncation=True, return_tensors="pt")
            with torch.inference_mode():
                logits = model(**encoded).logits
            probs = torch.softmax(logits.float(), dim=-1)
            scores, indexes = probs.max(dim=-1)
            for score, index in zip(scores.tolist(), indexes.tolist(), strict=True):
                label = id2label.get(index, id2label.get(str(index), f"LABEL_{index}"))
                out.append({"label": str(label), "score": float(score)})
        return out
