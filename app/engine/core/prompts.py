"""A plain prompt source: prompts given by the caller, resolved on first use and kept for the source's life.

Training evaluation, distillation teachers, init `auto`, zero-shot baselines, tests and benchmarks serve a few
known prompts through the one forward (`mixed.classify_rows(frozen, source, rows)`); they need no LRU, no
eviction and no staging, which are the serving pool's business (`app/engine/serving/pool.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from app.engine.core.model import FrozenModel
from app.engine.core.segments import Segments, ServedPrompt, resolve

SegmentsFor = Callable[[int], Segments]  # prompt id -> how that prompt enters a pass


class Prompts:
    """Prompt id -> ServedPrompt, resolved from `segments` the first time a batch asks (misses together)."""

    def __init__(
        self,
        frozen: FrozenModel,
        segments: Mapping[int, Segments] | SegmentsFor,
        *,
        max_batch_tokens: int = 4096,
    ) -> None:
        self.frozen = frozen
        self._segments = segments
        self.max_batch_tokens = max_batch_tokens
        self._served: dict[int, ServedPrompt] = {}
        self.capacity = 1 << 30  # every prompt asked for is kept: a batch is never split by its prompts

    def get_many(self, prompt_ids: Iterable[int]) -> dict[int, ServedPrompt]:
        """The served form of each distinct id (resolved in one pass for those not seen before), in order."""
        wanted = list(dict.fromkeys(prompt_ids))
        missing = [prompt_id for prompt_id in wanted if prompt_id not in self._served]
        if missing:
            source = self._segments
            found = [source[i] if isinstance(source, Mapping) else source(i) for i in missing]
            resolved = resolve(self.frozen, found, max_batch_tokens=self.max_batch_tokens)
            self._served.update(zip(missing, resolved, strict=True))
        return {prompt_id: self._served[prompt_id] for prompt_id in wanted}

    def get(self, prompt_id: int) -> ServedPrompt:
        """One prompt (see get_many)."""
        return self.get_many([prompt_id])[prompt_id]


def single(frozen: FrozenModel, segments: Segments) -> Prompts:
    """A source serving one prompt, whatever id a row names (evaluation of the prompt being trained)."""
    return Prompts(frozen, lambda _: segments)
