"""Model libraries for placement: block sizes and which blocks each model uses.

Two sources, no weight downloads:

- **Real manifests** (the zoo): :func:`library_from_manifests` takes block id -> size and
  model id -> block ids (as read from core manifests) and groups tensor blocks into
  *parameter blocks* (PBs): blocks used by exactly the same set of models become one PB, so
  the solvers see a few large units instead of hundreds of tensors per model.
- **Real architectures' parameter counts**: :func:`layer_params` lists the layer-wise
  parameter counts of ResNet-18/34/50, ViT-B/16, BERT-base and a LLaMA-style 7B LLM
  (totals match the published models: 11,689,512 / 21,797,672 / 25,557,032 /
  86,567,656 / 109,482,240 / 6,738,415,616). :func:`fine_tuned_family` builds task models
  fine-tuned from one pre-trained model with its bottom ``k`` layers frozen (shared with the
  other models of the family) and the rest plus a new head retrained (model-specific);
  :func:`lora_family` builds LoRA adapters on one frozen base. :func:`architecture_library`
  mixes families with a chosen *sharing degree* (mean frozen fraction).

Block ids are stable strings (``"bert-base/layer3"``, ``"bert-base-t2/head"``); grouping is
:func:`core.blocks.group_blocks` (the one rule, also behind :func:`core.group_by_sharing`), so
PB ids are the same on every run. Sizes are ``params * dtype_bytes`` (fp32 by default, fp16 for
the LLM).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from core.blocks import group_blocks

FP32_BYTES = 4
FP16_BYTES = 2

ARCHITECTURES: tuple[str, ...] = (
    "resnet18",
    "resnet34",
    "resnet50",
    "vit-b16",
    "bert-base",
    "llama-7b",
)


@dataclass(frozen=True, slots=True)
class ModelLibrary:
    """Blocks (id -> bytes), models (id -> block ids) and each model's family name."""

    blocks: Mapping[str, int]
    models: Mapping[str, tuple[str, ...]]
    families: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("empty model library")
        for model_id, ids in self.models.items():
            for block_id in ids:
                if block_id not in self.blocks:
                    raise ValueError(f"model {model_id!r}: unknown block {block_id!r}")
        for block_id, size in self.blocks.items():
            if size < 0:
                raise ValueError(f"block {block_id!r}: negative size {size}")
        object.__setattr__(self, "blocks", MappingProxyType(dict(self.blocks)))
        object.__setattr__(
            self, "models", MappingProxyType({m: tuple(ids) for m, ids in self.models.items()})
        )
        object.__setattr__(self, "families", MappingProxyType(dict(self.families)))

    def model_bytes(self, model_id: str) -> int:
        """The model's size on its own."""
        return sum(self.blocks[b] for b in self.models[model_id])

    def total_bytes(self) -> int:
        """Sum of model sizes (what storage would be without sharing)."""
        return sum(self.model_bytes(m) for m in self.models)

    def unique_bytes(self) -> int:
        """Bytes of the union of all blocks (storage with sharing)."""
        used = {b for ids in self.models.values() for b in ids}
        return sum(self.blocks[b] for b in used)

    def shared_blocks(self) -> tuple[str, ...]:
        """Blocks used by two models or more."""
        count: dict[str, int] = {}
        for ids in self.models.values():
            for b in ids:
                count[b] = count.get(b, 0) + 1
        return tuple(b for b, n in count.items() if n >= 2)


def group_by_sharing(library: ModelLibrary) -> ModelLibrary:
    """Merge blocks used by exactly the same set of models into one parameter block.

    Example:
        >>> lib = ModelLibrary(blocks={"a": 1, "b": 2, "c": 3},
        ...     models={"m0": ("a", "b", "c"), "m1": ("a", "b")})
        >>> g = group_by_sharing(lib)
        >>> sorted(g.blocks.values()), g.unique_bytes() == lib.unique_bytes()
        ([3, 3], True)
    """
    groups = group_blocks(library.models, library.blocks)
    blocks = {g.pb_id: g.size_bytes for g in groups}
    models: dict[str, list[str]] = {m: [] for m in library.models}
    for group in groups:
        for m in group.model_ids:
            models[m].append(group.pb_id)
    return ModelLibrary(
        blocks=blocks,
        models={m: tuple(ids) for m, ids in models.items()},
        families=library.families,
    )


def library_from_manifests(
    block_sizes: Mapping[str, int],
    model_blocks: Mapping[str, Sequence[str]],
    *,
    group: bool = True,
) -> ModelLibrary:
    """A library from real manifests: tensor/file block sizes and each model's block ids.

    Args:
        block_sizes: block id (sha256) -> bytes.
        model_blocks: model id -> its block ids (any order, duplicates allowed).
        group: merge blocks with the same set of users into parameter blocks.

    Raises:
        ValueError: empty library, unknown block id, negative size.

    Example:
        >>> lib = library_from_manifests({"x": 10, "y": 1, "z": 1},
        ...     {"bert-sst2": ["x", "y"], "bert-ag": ["x", "z"]})
        >>> len(lib.blocks), lib.unique_bytes()
        (3, 12)
    """
    library = ModelLibrary(
        blocks=block_sizes,
        models={m: tuple(dict.fromkeys(ids)) for m, ids in model_blocks.items()},
    )
    return group_by_sharing(library) if group else library


# ---------------------------------------------------------------------------------------------
# Architectures: layer-wise parameter counts


def _bn(c: int) -> int:
    return 2 * c  # weight + bias (running stats are buffers, not parameters)


def _resnet(layers: Sequence[int], bottleneck: bool) -> list[tuple[str, int]]:
    out = [("stem", 7 * 7 * 3 * 64 + _bn(64))]
    c_in = 64
    for stage, (n_blocks, width) in enumerate(zip(layers, (64, 128, 256, 512), strict=True)):
        for i in range(n_blocks):
            stride = 2 if (i == 0 and stage > 0) else 1
            if bottleneck:
                c_out = 4 * width
                params = c_in * width + _bn(width) + 9 * width * width + _bn(width)
                params += width * c_out + _bn(c_out)
            else:
                c_out = width
                params = 9 * c_in * width + _bn(width) + 9 * width * width + _bn(width)
            if stride != 1 or c_in != c_out:
                params += c_in * c_out + _bn(c_out)
            out.append((f"layer{stage + 1}.{i}", params))
            c_in = c_out
    out.append(("head", c_in * 1000 + 1000))
    return out


def _encoder_layer(hidden: int, ffn: int) -> int:
    attn = 3 * (hidden * hidden + hidden) + hidden * hidden + hidden
    mlp = hidden * ffn + ffn + ffn * hidden + hidden
    return attn + mlp + 2 * 2 * hidden  # two LayerNorms


def layer_params(arch: str) -> list[tuple[str, int]]:
    """Layer-wise parameter counts of a known architecture, bottom (input) to top (head).

    Args:
        arch: one of :data:`ARCHITECTURES`.

    Returns:
        ``[(layer name, params), ...]``; the last entry is the task head (``"head"``).

    Raises:
        ValueError: unknown architecture.

    Example:
        >>> sum(n for _, n in layer_params("resnet18"))
        11689512
    """
    if arch == "resnet18":
        return _resnet((2, 2, 2, 2), bottleneck=False)
    if arch == "resnet34":
        return _resnet((3, 4, 6, 3), bottleneck=False)
    if arch == "resnet50":
        return _resnet((3, 4, 6, 3), bottleneck=True)
    if arch == "vit-b16":
        embed = 768 * 3 * 16 * 16 + 768 + 768 + 197 * 768  # patch conv, cls token, positions
        layers = [("embed", embed)]
        layers += [(f"layer{i}", _encoder_layer(768, 3072)) for i in range(12)]
        return [*layers, ("head", 2 * 768 + 768 * 1000 + 1000)]  # final LN + classifier
    if arch == "bert-base":
        embed = (30522 + 512 + 2) * 768 + 2 * 768
        layers = [("embed", embed)]
        layers += [(f"layer{i}", _encoder_layer(768, 3072)) for i in range(12)]
        return [*layers, ("head", 768 * 768 + 768)]  # pooler (a task head adds its classifier)
    if arch == "llama-7b":
        hidden, ffn, vocab = 4096, 11008, 32000
        decoder = 4 * hidden * hidden + 3 * hidden * ffn + 2 * hidden
        layers = [("embed", vocab * hidden)]
        layers += [(f"layer{i}", decoder) for i in range(32)]
        return [*layers, ("head", hidden + vocab * hidden)]  # final norm + lm_head
    raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHITECTURES)}")


def fine_tuned_family(
    arch: str,
    frozen_layers: Sequence[int],
    *,
    prefix: str | None = None,
    dtype_bytes: int = FP32_BYTES,
) -> ModelLibrary:
    """Task models fine-tuned from one pre-trained ``arch`` with their bottom layers frozen.

    Model ``i`` keeps the pre-trained blocks of its ``frozen_layers[i]`` bottom layers (shared
    with every other model that froze them too) and owns its retrained upper layers and head.

    Args:
        arch: an architecture of :data:`ARCHITECTURES`.
        frozen_layers: per model, how many bottom layers are frozen (clipped to the number of
            body layers, i.e. all layers but the head).
        prefix: family name used in ids (default ``arch``).
        dtype_bytes: bytes per parameter.

    Example:
        >>> lib = fine_tuned_family("bert-base", [13, 13])
        >>> lib.shared_blocks()[:2], len(lib.models)
        (('bert-base/embed', 'bert-base/layer0'), 2)
    """
    name = prefix or arch
    layers = layer_params(arch)
    body, head = layers[:-1], layers[-1]
    blocks: dict[str, int] = {}
    models: dict[str, tuple[str, ...]] = {}
    for i, k in enumerate(frozen_layers):
        depth = max(0, min(int(k), len(body)))
        model_id = f"{name}-t{i}"
        ids: list[str] = []
        for j, (layer, params) in enumerate(body):
            block_id = f"{name}/{layer}" if j < depth else f"{model_id}/{layer}"
            blocks[block_id] = params * dtype_bytes
            ids.append(block_id)
        blocks[f"{model_id}/{head[0]}"] = head[1] * dtype_bytes
        ids.append(f"{model_id}/{head[0]}")
        models[model_id] = tuple(ids)
    return ModelLibrary(blocks=blocks, models=models, families=dict.fromkeys(models, name))


def lora_family(
    ranks: Sequence[int],
    *,
    base: str = "llama-7b",
    prefix: str | None = None,
    dtype_bytes: int = FP16_BYTES,
) -> ModelLibrary:
    """LoRA adapters (on q_proj and v_proj of every decoder layer) sharing one frozen base.

    Example:
        >>> lib = lora_family([8])
        >>> lib.blocks["llama-7b-lora0/adapter"] // 2   # params of a rank-8 adapter
        4194304
    """
    name = prefix or base
    layers = layer_params(base)
    hidden = 4096
    n_decoders = sum(1 for layer, _ in layers if layer.startswith("layer"))
    base_blocks = {f"{name}/{layer}": params * dtype_bytes for layer, params in layers}
    blocks = dict(base_blocks)
    models: dict[str, tuple[str, ...]] = {}
    for i, rank in enumerate(ranks):
        model_id = f"{name}-lora{i}"
        adapter_params = n_decoders * 2 * (rank * hidden + hidden * rank)
        blocks[f"{model_id}/adapter"] = adapter_params * dtype_bytes
        models[model_id] = (*base_blocks, f"{model_id}/adapter")
    return ModelLibrary(blocks=blocks, models=models, families=dict.fromkeys(models, name))


def merge(*libraries: ModelLibrary) -> ModelLibrary:
    """One library from several (ids must not collide)."""
    blocks: dict[str, int] = {}
    models: dict[str, tuple[str, ...]] = {}
    families: dict[str, str] = {}
    for lib in libraries:
        for m in lib.models:
            if m in models:
                raise ValueError(f"model {m!r} appears in two libraries")
        blocks.update(lib.blocks)
        models.update(lib.models)
        families.update(lib.families)
    return ModelLibrary(blocks=blocks, models=models, families=families)


def architecture_library(
    models_per_family: int,
    *,
    archs: Sequence[str] = ("resnet18", "resnet50", "vit-b16", "bert-base"),
    sharing: float = 0.5,
    depth_levels: int = 4,
    seed: int = 0,
    group: bool = True,
) -> ModelLibrary:
    """Families of fine-tuned models over real architectures, with a given sharing degree.

    Each model freezes a fraction of its family's body layers drawn around ``sharing``
    (uniform on ``[sharing - 0.25, sharing + 0.25]`` clipped to ``[0, 1]``) and rounded to one
    of ``depth_levels + 1`` evenly spaced depths, so a family has at most that many distinct
    shared prefixes (few shared parameter blocks after grouping). ``sharing=0`` shares
    nothing; ``sharing=1`` shares everything but the heads.

    Args:
        models_per_family: models per architecture.
        archs: architectures (one family each).
        sharing: mean frozen fraction in ``[0, 1]``.
        depth_levels: granularity of frozen depths.
        seed: seed of the local RNG.
        group: group blocks into parameter blocks (see :func:`group_by_sharing`).

    Example:
        >>> lib = architecture_library(3, archs=("resnet18",), sharing=1.0)
        >>> len(lib.models), len(lib.shared_blocks())
        (3, 1)
    """
    if not 0.0 <= sharing <= 1.0:
        raise ValueError(f"sharing must be in [0, 1], got {sharing}")
    if models_per_family < 1:
        raise ValueError(f"models_per_family must be >= 1, got {models_per_family}")
    rng = np.random.default_rng(seed)
    families = []
    for arch in archs:
        n_body = len(layer_params(arch)) - 1
        fractions = np.clip(rng.uniform(sharing - 0.25, sharing + 0.25, models_per_family), 0, 1)
        if sharing in (0.0, 1.0):
            fractions[:] = sharing
        levels = np.round(fractions * depth_levels) / depth_levels
        depths = [int(round(f * n_body)) for f in levels]
        families.append(fine_tuned_family(arch, depths))
    library = merge(*families)
    return group_by_sharing(library) if group else library
