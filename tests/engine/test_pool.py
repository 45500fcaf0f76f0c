"""The prompt pool: per-prompt keys/values computed once, LRU eviction, counters, and the capacity guard."""

from __future__ import annotations

import threading
from functools import partial

import pytest
import torch

from app.engine.model import FrozenModel
from app.engine.pool import PoolCapacityError, PromptPool
from app.engine.prompt_cache import compute_prompt_kv, compute_prompt_kvs


def _prompt(length: int, seed: int) -> torch.Tensor:
    return torch.randn(length, 64, generator=torch.Generator().manual_seed(seed))


class CountingLoader:
    """Serves prompt id -> a seeded prompt of id+1 vectors and remembers which ids were loaded."""

    def __init__(self) -> None:
        self.loaded: list[int] = []

    def __call__(self, prompt_id: int) -> torch.Tensor:
        self.loaded.append(prompt_id)
        return _prompt(prompt_id + 1, seed=prompt_id)


def test_prompt_kv_holds_every_layer_at_the_prompt_length(frozen: FrozenModel) -> None:
    kv = compute_prompt_kv(frozen, _prompt(5, seed=0))
    layers, heads = frozen.model.config.n_layer, frozen.model.config.n_head
    assert kv.keys.shape == kv.values.shape == (layers, heads, 5, 64 // heads)
    assert kv.length == 5
    assert kv.last_hidden.shape == (64,)
    assert kv.nbytes == 2 * layers * heads * 5 * (64 // heads) * 4 + 64 * 4


def test_prompt_kv_equals_the_keys_of_a_full_forward(frozen: FrozenModel) -> None:
    prompt = _prompt(4, seed=1)
    with torch.no_grad():
        output = frozen.model.base_model(inputs_embeds=prompt.unsqueeze(0), use_cache=True)
    kv = compute_prompt_kv(frozen, prompt)
    for layer, cached in enumerate(output.cache.layers):
        assert torch.equal(kv.keys[layer], cached.keys[0])
        assert torch.equal(kv.values[layer], cached.values[0])


def test_prompts_computed_together_equal_prompts_computed_alone(frozen: FrozenModel) -> None:
    prompts = [_prompt(length, seed=length) for length in (1, 5, 13, 2)]
    together = compute_prompt_kvs(frozen, prompts)
    for prompt, kv in zip(prompts, together, strict=True):
        alone = compute_prompt_kv(frozen, prompt)
        assert kv.keys.shape == alone.keys.shape
        assert kv.nbytes == alone.nbytes  # a clone of its own rows, not a view of the padded batch
        for mine, reference in [(kv.keys, alone.keys), (kv.values, alone.values), (kv.last_hidden, alone.last_hidden)]:
            assert (mine - reference).abs().max().item() < 1e-5


def test_missing_prompts_of_a_batch_are_loaded_once_and_computed_together(frozen: FrozenModel) -> None:
    pool, load = PromptPool(frozen, capacity=8), CountingLoader()
    pool.get(3, lambda: load(3))
    # A token budget of 12 splits the five missing prompts (2 to 7 vectors) over several forwards.
    kvs = pool.get_many([1, 3, 6, 1, 4, 2, 5], load, max_batch_tokens=12)
    assert list(kvs) == [1, 3, 6, 4, 2, 5]
    assert sorted(load.loaded) == [1, 2, 3, 4, 5, 6]
    stats = pool.stats()
    assert (stats["hits"], stats["misses"], stats["entries"]) == (1, 6, 6)
    for prompt_id, kv in kvs.items():
        alone = compute_prompt_kv(frozen, _prompt(prompt_id + 1, seed=prompt_id))
        assert (kv.keys - alone.keys).abs().max().item() < 1e-5


def test_malformed_prompt_is_refused(frozen: FrozenModel) -> None:
    with pytest.raises(ValueError, match=r"is not \[n >= 1, 64\]"):
        compute_prompt_kv(frozen, torch.zeros(0, 64))
    with pytest.raises(ValueError, match="is not"):
        compute_prompt_kv(frozen, torch.zeros(3, 32))


def test_second_request_for_a_prompt_is_a_hit_without_loading(frozen: FrozenModel) -> None:
    pool, load = PromptPool(frozen, capacity=4), CountingLoader()
    first = pool.get(2, lambda: load(2))
    again = pool.get(2, lambda: load(2))
    assert again is first
    assert load.loaded == [2]
    stats = pool.stats()
    assert (stats["hits"], stats["misses"], stats["entries"], stats["evictions"]) == (1, 1, 1, 0)
    assert stats["bytes"] == first.nbytes


def test_least_recently_used_prompt_is_evicted_first(frozen: FrozenModel) -> None:
    pool, load = PromptPool(frozen, capacity=3), CountingLoader()
    for prompt_id in (0, 1, 2):
        pool.get(prompt_id, partial(load, prompt_id))
    pool.get(0, lambda: load(0))  # 0 becomes the most recent, so 1 is now the oldest
    pool.get(3, lambda: load(3))
    assert 1 not in pool
    assert all(prompt_id in pool for prompt_id in (0, 2, 3))
    pool.get(4, lambda: load(4))
    assert 2 not in pool
    assert pool.stats()["evictions"] == 2
    pool.get(1, lambda: load(1))
    assert load.loaded == [0, 1, 2, 3, 4, 1]


def test_discarded_prompt_is_recomputed_from_a_fresh_load(frozen: FrozenModel) -> None:
    pool = PromptPool(frozen, capacity=2)
    old = pool.get(7, lambda: _prompt(3, seed=1))
    assert pool.discard(7)
    assert not pool.discard(7)
    assert pool.stats()["bytes"] == 0
    new = pool.get(7, lambda: _prompt(6, seed=2))
    assert (old.length, new.length) == (3, 6)
    assert pool.stats()["misses"] == 2


def test_clear_empties_the_pool_but_keeps_counters(frozen: FrozenModel) -> None:
    pool, load = PromptPool(frozen, capacity=4), CountingLoader()
    pool.get_many([0, 1, 1, 2], load)
    pool.clear()
    stats = pool.stats()
    assert (stats["entries"], stats["bytes"], stats["misses"]) == (0, 0, 3)


def test_batch_needing_more_prompts_than_capacity_is_refused(frozen: FrozenModel) -> None:
    pool, load = PromptPool(frozen, capacity=2), CountingLoader()
    assert set(pool.get_many([5, 6, 5], load)) == {5, 6}
    with pytest.raises(PoolCapacityError, match="needs 3 distinct prompts but the pool holds 2"):
        pool.get_many([1, 2, 3], load)
    assert load.loaded == [5, 6]


def test_byte_limit_evicts_old_prompts_but_keeps_the_newest(frozen: FrozenModel) -> None:
    one = compute_prompt_kv(frozen, _prompt(1, seed=0)).nbytes
    pool, load = PromptPool(frozen, capacity=10, max_bytes=3 * one), CountingLoader()
    pool.get_many([0, 0], load)  # 1 vector
    pool.get(1, lambda: load(1))  # 2 vectors: 3 in all, at the limit
    assert pool.stats()["entries"] == 2
    pool.get(2, lambda: load(2))  # 3 vectors: both older entries must go
    assert (0 not in pool, 1 not in pool, 2 in pool) == (True, True, True)
    big = pool.get(9, lambda: load(9))  # alone over the limit, still served and kept
    assert 9 in pool and big.length == 10


def test_stats_can_be_read_while_the_engine_thread_fills_the_pool(frozen: FrozenModel) -> None:
    pool, load = PromptPool(frozen, capacity=3), CountingLoader()
    seen: list[dict[str, int]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.append(pool.stats())

    watcher = threading.Thread(target=watch)
    watcher.start()
    for prompt_id in range(8):
        pool.get(prompt_id % 5, partial(load, prompt_id % 5))
    stop.set()
    watcher.join()
    assert seen
    assert all(snapshot["entries"] <= 3 for snapshot in seen)
    assert pool.stats()["misses"] + pool.stats()["hits"] == 8


def test_capacity_must_be_positive(frozen: FrozenModel) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        PromptPool(frozen, capacity=0)
