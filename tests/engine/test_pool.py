"""The prompt pool: per-prompt keys/values computed once, LRU eviction, counters, and the capacity guard."""

from __future__ import annotations

import threading

import pytest
import torch

from app.engine.core.model import FrozenModel
from app.engine.core.prompt_cache import compute_prompt_kv, compute_prompt_kvs
from app.engine.core.segments import Segments
from app.engine.serving.pool import PoolCapacityError, PromptMissing, PromptPool
from tests.engine.reading_pool import ReadingPool


def _prompt(length: int, seed: int) -> torch.Tensor:
    return torch.randn(length, 64, generator=torch.Generator().manual_seed(seed))


class CountingLoader:
    """Reads prompt id -> a seeded prompt of id+1 vectors and remembers which ids were read (for the pool to stage)."""

    def __init__(self) -> None:
        self.loaded: list[int] = []

    def __call__(self, prompt_id: int) -> Segments:
        self.loaded.append(prompt_id)
        return Segments(prefix=_prompt(prompt_id + 1, seed=prompt_id))


def _pool(frozen: FrozenModel, capacity: int, **options: int) -> tuple[PromptPool, CountingLoader]:
    """A pool whose misses are read and staged as a caller of the engine does (ReadingPool)."""
    load = CountingLoader()
    return ReadingPool(frozen, capacity, load, **options), load


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
    pool, load = _pool(frozen, 8, max_batch_tokens=12)
    pool.get(3)
    # A token budget of 12 splits the five missing prompts (2 to 7 vectors) over several forwards.
    kvs = pool.get_many([1, 3, 6, 1, 4, 2, 5])
    assert list(kvs) == [1, 3, 6, 4, 2, 5]
    assert sorted(load.loaded) == [1, 2, 3, 4, 5, 6]
    stats = pool.stats()
    assert (stats["hits"], stats["misses"], stats["entries"]) == (1, 6, 6)
    for prompt_id, served in kvs.items():
        alone = compute_prompt_kv(frozen, _prompt(prompt_id + 1, seed=prompt_id))
        assert served.kv is not None
        assert (served.kv.keys - alone.keys).abs().max().item() < 1e-5


def test_six_missing_prompts_cost_one_prompt_pass(frozen: FrozenModel) -> None:
    pool, _ = _pool(frozen, 8)
    calls: list[int] = []
    handle = frozen.model.base_model.register_forward_hook(lambda *_: calls.append(1))
    try:
        pool.get_many([0, 1, 2, 3, 4, 5])
    finally:
        handle.remove()
    assert calls == [1]


def test_staged_prompts_are_resolved_and_a_miss_is_reported(frozen: FrozenModel) -> None:
    pool = PromptPool(frozen, capacity=4)
    pool.stage({1: Segments(prefix=_prompt(2, seed=1)), 2: Segments(prefix=_prompt(3, seed=2))})
    assert [s.length for s in pool.get_many([1, 2]).values()] == [2, 3]
    with pytest.raises(PromptMissing) as missing:
        pool.get_many([1, 7])
    assert missing.value.prompt_ids == [7]
    assert 1 in pool and 7 not in pool


def test_malformed_prompt_is_refused(frozen: FrozenModel) -> None:
    with pytest.raises(ValueError, match=r"is not \[n >= 1, 64\]"):
        compute_prompt_kv(frozen, torch.zeros(0, 64))
    with pytest.raises(ValueError, match="is not"):
        compute_prompt_kv(frozen, torch.zeros(3, 32))


def test_second_request_for_a_prompt_is_a_hit_without_loading(frozen: FrozenModel) -> None:
    pool, load = _pool(frozen, 4)
    first = pool.get(2)
    again = pool.get(2)
    assert again is first
    assert load.loaded == [2]
    stats = pool.stats()
    assert (stats["hits"], stats["misses"], stats["entries"], stats["evictions"]) == (1, 1, 1, 0)
    assert stats["bytes"] == first.nbytes


def test_least_recently_used_prompt_is_evicted_first(frozen: FrozenModel) -> None:
    pool, load = _pool(frozen, 3)
    for prompt_id in (0, 1, 2):
        pool.get(prompt_id)
    pool.get(0)  # 0 becomes the most recent, so 1 is now the oldest
    pool.get(3)
    assert 1 not in pool
    assert all(prompt_id in pool for prompt_id in (0, 2, 3))
    pool.get(4)
    assert 2 not in pool
    assert pool.stats()["evictions"] == 2
    pool.get(1)
    assert load.loaded == [0, 1, 2, 3, 4, 1]


def test_discarded_prompt_is_recomputed_from_a_fresh_load(frozen: FrozenModel) -> None:
    stored = {7: _prompt(3, seed=1)}
    pool = ReadingPool(frozen, 2, lambda prompt_id: Segments(prefix=stored[prompt_id]))
    old = pool.get(7)
    assert pool.discard(7)
    assert not pool.discard(7)
    assert pool.stats()["bytes"] == 0
    stored[7] = _prompt(6, seed=2)
    new = pool.get(7)
    assert (old.length, new.length) == (3, 6)
    assert pool.stats()["misses"] == 2


def test_clear_empties_the_pool_but_keeps_counters(frozen: FrozenModel) -> None:
    pool, _ = _pool(frozen, 4)
    pool.get_many([0, 1, 1, 2])
    pool.clear()
    stats = pool.stats()
    assert (stats["entries"], stats["bytes"], stats["misses"]) == (0, 0, 3)


def test_batch_needing_more_prompts_than_capacity_is_refused(frozen: FrozenModel) -> None:
    pool, load = _pool(frozen, 2)
    assert set(pool.get_many([5, 6, 5])) == {5, 6}
    with pytest.raises(PoolCapacityError, match="needs 3 distinct prompts but the pool holds 2"):
        pool.get_many([1, 2, 3])
    assert load.loaded == [5, 6]


def test_byte_limit_evicts_old_prompts_but_keeps_the_newest(frozen: FrozenModel) -> None:
    one = compute_prompt_kv(frozen, _prompt(1, seed=0)).nbytes
    pool, _ = _pool(frozen, 10, max_bytes=3 * one)
    pool.get_many([0, 0])  # 1 vector
    pool.get(1)  # 2 vectors: 3 in all, at the limit
    assert pool.stats()["entries"] == 2
    pool.get(2)  # 3 vectors: both older entries must go
    assert (0 not in pool, 1 not in pool, 2 in pool) == (True, True, True)
    big = pool.get(9)  # alone over the limit, still served and kept
    assert 9 in pool and big.length == 10


def test_stats_can_be_read_while_the_engine_thread_fills_the_pool(frozen: FrozenModel) -> None:
    pool, _ = _pool(frozen, 3)
    seen: list[dict[str, int]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.append(pool.stats())

    watcher = threading.Thread(target=watch)
    watcher.start()
    for prompt_id in range(8):
        pool.get(prompt_id % 5)
    stop.set()
    watcher.join()
    assert seen
    assert all(snapshot["entries"] <= 3 for snapshot in seen)
    assert pool.stats()["misses"] + pool.stats()["hits"] == 8


def test_capacity_must_be_positive(frozen: FrozenModel) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        PromptPool(frozen, capacity=0)
