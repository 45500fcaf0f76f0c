"""An LRU pool of served prompts on the model device, keyed by prompt id (an immutable prompt version)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping

from app.engine.core.model import FrozenModel
from app.engine.core.segments import Segments, ServedPrompt, resolve


class PoolCapacityError(ValueError):
    """One batch needs more distinct prompts than the pool holds; the caller must split the batch."""


class PromptMissing(LookupError):
    """Prompts a request needs are neither pooled nor given (staged): submitted without their segments, or
    evicted after the request was queued. The caller reads them and submits again; the engine never reads."""

    def __init__(self, prompt_ids: list[int]) -> None:
        super().__init__(f"prompts {prompt_ids} are neither in the prompt pool nor given with the request")
        self.prompt_ids = prompt_ids


class PromptPool:
    """LRU map prompt id -> ServedPrompt (cached keys/values + per-row parts), bounded in entries and bytes.

    Callers pass prompt ids and never touch the storage. A miss is resolved from segments staged for it: the
    batcher stages what requests carried (read by their callers before submitting), so the engine thread never
    reads the database; a miss with nothing staged is PromptMissing. Only the engine thread calls stage/get_many/
    discard/clear; the lock exists so that stats() may be read from any thread while the engine works. Resolving runs
    outside the lock so a stats() reader never waits on a forward pass.
    """

    def __init__(
        self,
        frozen: FrozenModel,
        capacity: int,
        *,
        max_bytes: int | None = None,
        max_batch_tokens: int = 4096,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"pool capacity must be at least 1 prompt, got {capacity}.")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"max_bytes must be positive or None, got {max_bytes}.")
        self.frozen = frozen
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.max_batch_tokens = max_batch_tokens
        self._entries: OrderedDict[int, ServedPrompt] = OrderedDict()  # least recently used first
        self._staged: dict[int, Segments] = {}
        self._bytes = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0
        self._lock = threading.Lock()

    def stage(self, segments: Mapping[int, Segments]) -> None:
        """Segments to resolve at the next get_many that misses them (read off the engine thread)."""
        with self._lock:
            for prompt_id, prompt in segments.items():
                if prompt_id not in self._entries:
                    self._staged[prompt_id] = prompt

    def get(self, prompt_id: int) -> ServedPrompt:
        """One prompt (see get_many)."""
        return self.get_many([prompt_id])[prompt_id]

    def get_many(self, prompt_ids: Iterable[int]) -> dict[int, ServedPrompt]:
        """Every distinct prompt one batch needs; misses resolved together (one pass per chunk of prompts).

        Raises PoolCapacityError when the prompts cannot all be pooled at once (the caller must split the batch),
        PromptMissing when a miss has no staged segments.
        """
        wanted = list(dict.fromkeys(prompt_ids))
        if len(wanted) > self.capacity:
            raise PoolCapacityError(
                f"one batch needs {len(wanted)} distinct prompts but the pool holds {self.capacity}; "
                "split the batch or raise the pool capacity."
            )
        found: dict[int, ServedPrompt] = {}
        with self._lock:
            for prompt_id in wanted:
                served = self._entries.get(prompt_id)
                if served is not None:
                    self._entries.move_to_end(prompt_id)
                    found[prompt_id] = served
            missing = [prompt_id for prompt_id in wanted if prompt_id not in found]
            sources = {prompt_id: self._staged.pop(prompt_id) for prompt_id in missing if prompt_id in self._staged}
        unknown = [prompt_id for prompt_id in missing if prompt_id not in sources]
        if unknown:
            with self._lock:
                self._staged.update(sources)  # keep them for the retry
            raise PromptMissing(unknown)
        if missing:
            # One pass for many prompts rather than one each: on a GPU a lone 20-vector prompt is all launch latency.
            ids = list(sources)
            resolved = resolve(self.frozen, [sources[i] for i in ids], max_batch_tokens=self.max_batch_tokens)
            with self._lock:
                self._hits += len(found)
                self._misses += len(missing)
                # Inserted as most recent, so with len(wanted) <= capacity none evicts another wanted one.
                for prompt_id, served in zip(ids, resolved, strict=True):
                    self._insert(prompt_id, served)
                    found[prompt_id] = served
        else:
            with self._lock:
                self._hits += len(found)
        return {prompt_id: found[prompt_id] for prompt_id in wanted}

    def discard(self, prompt_id: int) -> bool:
        """Drop a prompt (e.g. its task was deleted or retrained); True if it was pooled."""
        with self._lock:
            served = self._entries.pop(prompt_id, None)
            self._staged.pop(prompt_id, None)
            if served is None:
                return False
            self._bytes -= served.nbytes
            return True

    def clear(self) -> None:
        """Drop every prompt; counters are kept."""
        with self._lock:
            self._entries.clear()
            self._staged.clear()
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

    def _insert(self, prompt_id: int, kv: ServedPrompt) -> None:
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
