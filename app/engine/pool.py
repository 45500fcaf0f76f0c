"""An LRU pool of prompt keys/values on the model device, keyed by prompt id (an immutable prompt version)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable

import torch

from app.engine.model import FrozenModel
from app.engine.prompt_cache import PromptKV, compute_prompt_kv, compute_prompt_kvs


def _token_chunks(items: list[tuple[int, torch.Tensor]], budget: int) -> list[list[tuple[int, torch.Tensor]]]:
    """Consecutive (id, prompt [n, hidden]) items grouped so each group's count x longest n stays within budget."""
    chunks: list[list[tuple[int, torch.Tensor]]] = []
    longest = 0
    for item in items:
        length = int(item[1].shape[0])
        if chunks and (len(chunks[-1]) + 1) * max(longest, length) <= budget:
            chunks[-1].append(item)
            longest = max(longest, length)
        else:
            chunks.append([item])
            longest = length
    return chunks


class PoolCapacityError(ValueError):
    """One batch needs more distinct prompts than the pool holds; the caller must split the batch."""


class PromptPool:
    """LRU map prompt id -> PromptKV, bounded in entries and optionally in bytes.

    Callers pass prompt ids and never touch the storage. Only the engine thread calls get/get_many/discard/clear;
    the lock exists so that stats() may be read from any thread while the engine works. KV computation runs
    outside the lock so a stats() reader never waits on a forward pass.
    """

    def __init__(self, frozen: FrozenModel, capacity: int, *, max_bytes: int | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"pool capacity must be at least 1 prompt, got {capacity}.")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"max_bytes must be positive or None, got {max_bytes}.")
        self.frozen = frozen
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._entries: OrderedDict[int, PromptKV] = OrderedDict()  # least recently used first
        self._bytes = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0
        self._lock = threading.Lock()

    def get(self, prompt_id: int, load: Callable[[], torch.Tensor]) -> PromptKV:
        """The prompt's keys/values; on a miss, load() gives the prompt [n, hidden] and its KV is computed once."""
        with self._lock:
            found = self._entries.get(prompt_id)
            if found is not None:
                self._entries.move_to_end(prompt_id)
                self._hits += 1
                return found
            self._misses += 1
        kv = compute_prompt_kv(self.frozen, load())
        with self._lock:
            self._insert(prompt_id, kv)
        return kv

    def get_many(
        self, prompt_ids: Iterable[int], load: Callable[[int], torch.Tensor], *, max_batch_tokens: int = 4096
    ) -> dict[int, PromptKV]:
        """Keys/values of every distinct prompt one batch needs, misses computed together in batched forwards.

        Raises PoolCapacityError when the prompts cannot all be pooled at once; the caller must split the batch.
        """
        wanted = list(dict.fromkeys(prompt_ids))
        if len(wanted) > self.capacity:
            raise PoolCapacityError(
                f"one batch needs {len(wanted)} distinct prompts but the pool holds {self.capacity}; "
                "split the batch or raise the pool capacity."
            )
        found: dict[int, PromptKV] = {}
        with self._lock:
            for prompt_id in wanted:
                kv = self._entries.get(prompt_id)
                if kv is not None:
                    self._entries.move_to_end(prompt_id)
                    found[prompt_id] = kv
            self._hits += len(found)
            self._misses += len(wanted) - len(found)
        missing = [(prompt_id, load(prompt_id)) for prompt_id in wanted if prompt_id not in found]
        # One forward per chunk rather than per prompt: on a GPU a lone 20-vector prompt is all launch latency.
        for chunk in _token_chunks(missing, max_batch_tokens):
            kvs = compute_prompt_kvs(self.frozen, [prompt for _, prompt in chunk])
            with self._lock:
                # Inserted as most recent, so with len(wanted) <= capacity none evicts another wanted one.
                for (prompt_id, _), kv in zip(chunk, kvs, strict=True):
                    self._insert(prompt_id, kv)
                    found[prompt_id] = kv
        return {prompt_id: found[prompt_id] for prompt_id in wanted}

    def discard(self, prompt_id: int) -> bool:
        """Drop a prompt (e.g. its task was deleted or retrained); True if it was pooled."""
        with self._lock:
            kv = self._entries.pop(prompt_id, None)
            if kv is None:
                return False
            self._bytes -= kv.nbytes
            return True

    def clear(self) -> None:
        """Drop every prompt; counters are kept."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def __contains__(self, prompt_id: object) -> bool:
        with self._lock:
            return prompt_id in self._entries

    def stats(self) -> dict[str, int]:
        """A consistent snapshot of occupancy and counters, safe to call from any thread."""
        with self._lock:
            return {
                "entries": len(self._entries),
                "capacity": self.capacity,
                "bytes": self._bytes,
                "hits": self._hits,
                "misses": self._misses,
                "evictions": self._evictions,
            }

    def _insert(self, prompt_id: int, kv: PromptKV) -> None:
        """Add kv as most recent and evict least-recently-used entries beyond the limits (caller holds the lock)."""
        previous = self._entries.pop(prompt_id, None)
        if previous is not None:
            self._bytes -= previous.nbytes
        self._entries[prompt_id] = kv
        self._bytes += kv.nbytes
        # The newest entry is never evicted, even alone over max_bytes: the batch asking for it needs it now.
        while len(self._entries) > 1 and (
            len(self._entries) > self.capacity or (self.max_bytes is not None and self._bytes > self.max_bytes)
        ):
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.nbytes
            self._evictions += 1
