"""Request probabilities p[area][model] from decayed demand counts (pure; no I/O).

Counts come from :meth:`controller.state.RedisState.demand_counts` (exponentially decayed per
(area, model)). Each area's row is the area's counts smoothed with a deterministic Zipf prior
over the catalogue (``prior_weight`` pseudo-requests), so

- an area with no demand gets the Zipf prior alone (ranks differ per area: models are ranked by
  ``sha256(area_id + model_id)``, so areas prefer different models and placement spreads out);
- an area with lots of demand follows its demand, and every catalogue model keeps a small
  probability (nothing is forgotten entirely).

Demand recorded for an area the topology does not have (clients that send no area, or an area
of an old topology) is spread evenly over the known areas. Rows sum to 1. Models outside the
catalogue are ignored.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

ZIPF_EXPONENT = 0.8
PRIOR_WEIGHT = 1.0


def zipf_prior(
    area_id: str, model_ids: Sequence[str], *, exponent: float = ZIPF_EXPONENT
) -> dict[str, float]:
    """A deterministic Zipf distribution over ``model_ids`` whose ranking depends on the area.

    >>> p = zipf_prior("a", ["m0", "m1", "m2"]); round(sum(p.values()), 9)
    1.0
    """
    ranked = sorted(
        model_ids, key=lambda m: hashlib.sha256(f"{area_id}\x1f{m}".encode()).hexdigest()
    )
    weights = {m: 1.0 / (rank + 1) ** exponent for rank, m in enumerate(ranked)}
    total = sum(weights.values())
    return {m: weights[m] / total for m in model_ids}


def request_probabilities(
    area_ids: Iterable[str],
    model_ids: Sequence[str],
    counts: Mapping[str, Mapping[str, float]],
    *,
    prior_weight: float = PRIOR_WEIGHT,
) -> dict[str, dict[str, float]]:
    """Area id -> model id -> request probability (rows sum to 1; empty catalogue: empty rows)."""
    areas = list(area_ids)
    known = set(areas)
    spread: dict[str, float] = {}
    for area_id, row in counts.items():
        if area_id not in known and areas:
            for model_id, count in row.items():
                spread[model_id] = spread.get(model_id, 0.0) + count / len(areas)
    out: dict[str, dict[str, float]] = {}
    for area_id in areas:
        if not model_ids:
            out[area_id] = {}
            continue
        prior = zipf_prior(area_id, model_ids)
        row_counts = counts.get(area_id, {})
        observed = {
            m: max(0.0, float(row_counts.get(m, 0.0)) + spread.get(m, 0.0)) for m in model_ids
        }
        total = sum(observed.values()) + prior_weight
        row = {m: (observed[m] + prior_weight * prior[m]) / total for m in model_ids}
        norm = sum(row.values())
        # Float rounding must never push a row above 1 (the problem rejects that).
        out[area_id] = {m: p / norm * (1 - 1e-12) for m, p in row.items()}
    return out
