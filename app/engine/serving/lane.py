"""The generation lane: one running decode batch and the generation rows waiting to join it (continuous batching).

Engine thread only. Rows carry a tag (their request and index) that comes back with their text when they finish.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from app.engine.core.decode import DecodeBatch, Decoding
from app.engine.core.mixed import Row
from app.engine.core.model import FrozenModel
from app.engine.core.segments import ServedPrompt
from app.engine.core.text import render
from app.engine.serving.planning import joining_count


class GenerationLane:
    """Generation rows of served rounds: decoding, or waiting for room in the decode batch."""

    def __init__(self, frozen: FrozenModel, *, max_batch_rows: int, max_batch_tokens: int) -> None:
        self.frozen = frozen
        self.max_batch_rows = max_batch_rows
        self.max_batch_tokens = max_batch_tokens
        self._decoding = DecodeBatch(frozen)
        self._joining: deque[tuple[ServedPrompt, Decoding, Any]] = deque()
        self._admitting: list[tuple[ServedPrompt, Decoding, Any]] = []  # left the queue, not yet in the batch

    @property
    def busy(self) -> bool:
        """Rows are decoding or waiting to join: the engine steps instead of waiting for requests."""
        return bool(self._decoding.active or self._joining)

    @property
    def decoding_rows(self) -> int:
        """Rows in the running decode batch."""
        return self._decoding.active

    @property
    def joining_rows(self) -> int:
        """Rows waiting for room in it."""
        return len(self._joining)

    def queue(self, served: ServedPrompt, row: Row, tag: Any) -> None:
        """A tokenised generation row, to join the decode batch at a coming step."""
        decoding = Decoding(
            render(row.spec.template, row.text), row.ids, row.max_new_tokens, row.stop, row.cancel, row.on_progress
        )
        self._joining.append((served, decoding, tag))

    def step(self) -> list[tuple[Any, str]]:
        """Let waiting rows join (as many as fit), then advance every decoding row by one token; (tag, text) of
        each row that finished. Raises what the model raises: the caller fails the lane's rows (clear())."""
        finished = self._decoding.cancel_finished()
        count = joining_count(
            (served.length + served.extra_width + len(decoding.input_ids) for served, decoding, _ in self._joining),
            room=self.max_batch_rows - self._decoding.active,
            max_batch_tokens=self.max_batch_tokens,
        )
        self._admitting = [self._joining.popleft() for _ in range(count)]
        if self._admitting:
            finished += self._decoding.admit(*(list(part) for part in zip(*self._admitting, strict=True)))
        self._admitting = []
        return finished + self._decoding.step()

    def clear(self) -> list[Any]:
        """Drop every row, decoding or waiting, and start an empty decode batch; the tags of the dropped rows."""
        waiting = [*self._admitting, *self._joining]  # a failed admit leaves its rows in neither place
        tags = [tag for *_, tag in waiting] + [entry.tag for entry in self._decoding.rows]
        self._joining.clear()
        self._admitting = []
        self._decoding = DecodeBatch(self.frozen)
        return tags
