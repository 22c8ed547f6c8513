"""core.cachepolicy: whole-model LRU/LFU with shared blocks counted once, and pinned models."""

from __future__ import annotations

import pytest

from core.cachepolicy import POLICIES, LFUCache, LRUCache

# a and b share block "s"; c stands alone. Sizes: a = 4 + 2, b = 4 + 2, c = 5.
MODELS = {"a": ("s", "a1"), "b": ("s", "b1"), "c": ("c1",)}
BLOCKS = {"s": 4, "a1": 2, "b1": 2, "c1": 5}


def test_shared_blocks_are_counted_once() -> None:
    cache = LRUCache(8, MODELS, BLOCKS)
    assert cache.get("a") is False
    assert cache.get("b") is False  # only b1 is new: 6 + 2 fits in 8
    assert cache.used_bytes == 8
    assert set(cache.cached_models()) == {"a", "b"}
    assert cache.get("a") is True


def test_lru_evicts_least_recent_lfu_least_frequent() -> None:
    lru = LRUCache(11, MODELS, BLOCKS)
    lfu = LFUCache(11, MODELS, BLOCKS)
    for cache in (lru, lfu):
        for model in ("a", "a", "a", "c", "b"):  # b needs room: evict a or c
            cache.get(model)
    # LRU: a was used before c, so a goes (and b brings s back); LFU: c was used once.
    assert set(lru.cached_models()) == {"c", "b"}
    assert set(lfu.cached_models()) == {"a", "b"}


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_admit_skips_pinned_models(policy: str) -> None:
    cache = POLICIES[policy](6, MODELS, BLOCKS)
    cache.get("a")
    # c needs all 6 bytes but a is pinned: not admitted, nothing evicted.
    admission = cache.admit("c", pinned=lambda m: m == "a")
    assert (admission.admitted, admission.evicted) == (False, [])
    assert cache.cached_models() == ("a",)
    admission = cache.admit("c")
    assert (admission.admitted, admission.evicted) == (True, ["a"])
    assert cache.used_bytes == 5


def test_a_model_larger_than_the_capacity_evicts_nothing() -> None:
    cache = LRUCache(5, MODELS, BLOCKS)
    cache.get("c")
    admission = cache.admit("a")
    assert (admission.admitted, admission.evicted) == (False, [])
    assert cache.cached_models() == ("c",)
