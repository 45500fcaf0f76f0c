"""The serving pool driven the way the inference service drives the engine, for tests that need its LRU."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from app.engine.core.model import FrozenModel
from app.engine.core.segments import Segments, ServedPrompt
from app.engine.serving.pool import PromptMissing, PromptPool


class ReadingPool(PromptPool):
    """A PromptPool whose get_many, meeting PromptMissing, reads the missing prompts with `read`, stages them and
    asks again: what a caller does when the engine sends its request back (the pool itself never reads)."""

    def __init__(self, frozen: FrozenModel, capacity: int, read: Callable[[int], Segments], **options: int) -> None:
        super().__init__(frozen, capacity, **options)  # type: ignore[arg-type]
        self.read = read

    def get_many(self, prompt_ids: Iterable[int]) -> dict[int, ServedPrompt]:
        wanted = list(prompt_ids)
        try:
            return super().get_many(wanted)
        except PromptMissing as missing:
            self.stage({prompt_id: self.read(prompt_id) for prompt_id in missing.prompt_ids})
            return super().get_many(wanted)
