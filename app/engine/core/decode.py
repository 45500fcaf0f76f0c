"""Greedy decoding of rows that each carry their own prompt, on the one forward; finished rows leave the batch."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from app.engine.core.attention import attention_mask
from app.engine.core.forward import Query, forward_rows
from app.engine.core.model import FrozenModel
from app.engine.core.prompt_cache import full_attention_layers
from app.engine.core.segments import ServedPrompt
from app.engine.core.text import output_text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decoding:
    """One row to decode: its rendered input (to undo the target's leading space), limits and stop strings."""

    rendered: str
    input_ids: Sequence[int]
    max_new_tokens: int
    stop: tuple[str, ...] = ()
    cancel: threading.Event | None = field(default=None, compare=False)  # set: stop at the next step
    # called on the engine thread after each generated token with the text so far and the tokens generated:
    # it must only hand them over (a queue, a counter), never block or compute
    on_progress: Callable[[str, int], None] | None = field(default=None, compare=False)

    @property
    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()


def cut_at_stop(text: str, stop: Sequence[str]) -> str | None:
    """The text before the earliest stop string, or None when no stop string occurs."""
    hits = [text.find(marker) for marker in stop if marker and marker in text]
    return text[: min(hits)] if hits else None


def _next_embeds(frozen: FrozenModel, served: Sequence[ServedPrompt], ids: torch.Tensor) -> torch.Tensor:
    """[B, 1, H] embeddings of the next tokens, through each row's input mapping where its prompt has one."""
    embeds = frozen.embed(ids.unsqueeze(1))
    maps = [prompt.map_embeds for prompt in served]
    if all(mapping is None for mapping in maps):
        return embeds
    return torch.stack([embeds[i] if mapping is None else mapping(embeds[i]) for i, mapping in enumerate(maps)])


@dataclass
class _Active:
    """A row in the decode batch: its limits, what it generated so far, and the caller's tag for it."""

    row: Decoding
    prompt: ServedPrompt
    budget: int
    tag: Any
    generated: list[int] = field(default_factory=list)
    text: str = ""


def _report(entry: _Active) -> None:
    """Hand a row's progress to its caller; a failing callback loses its reports, never the batch."""
    if entry.row.on_progress is None:
        return
    try:
        entry.row.on_progress(entry.text, len(entry.generated))
    except Exception:
        log.exception("a progress callback failed; its row keeps decoding")


def _pad_left(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """tensor with zeros (False) added before its entries along dim, to `width` entries."""
    missing = width - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


class DecodeBatch:
    """Greedy decoding in which rows join and leave at any step (continuous batching).

    Rows of any prompts decode together: each is left-padded to the widest in the shared cache, with its own
    positions and attention mask, so a row's tokens are the ones it would get alone. `admit` runs new rows'
    prefill in a pass of their own and merges their keys/values into the running cache; `step` picks every row's
    next token, lets finished rows go (eos, max_new_tokens, a stop string, a cancel) and runs one pass for the rest.
    Not thread-safe: one thread (the engine's) owns it.
    """

    def __init__(self, frozen: FrozenModel) -> None:
        self.frozen = frozen
        self.rows: list[_Active] = []
        self._cache: DynamicCache | None = None
        self._key_real = torch.zeros(0, 0, dtype=torch.bool, device=frozen.device)
        self._positions = torch.zeros(0, dtype=torch.long, device=frozen.device)
        self._last = torch.zeros(0, frozen.hidden_size, dtype=frozen.dtype, device=frozen.device)

    @property
    def active(self) -> int:
        return len(self.rows)

    @property
    def width(self) -> int:
        """Key positions every row of the running cache spans (pads included)."""
        return int(self._key_real.shape[1])

    @torch.no_grad()
    def admit(
        self, served: Sequence[ServedPrompt], rows: Sequence[Decoding], tags: Sequence[Any]
    ) -> list[tuple[Any, str]]:
        """Add rows (their prefill runs now); (tag, text) of those that are done before any token (no room left
        in the context, max_new_tokens 0, cancelled)."""
        frozen = self.frozen
        done: list[tuple[Any, str]] = []
        joining: list[_Active] = []
        for prompt, row, tag in zip(served, rows, tags, strict=True):
            # Never run past the context: a row near the limit gets fewer new tokens.
            room = frozen.max_positions - prompt.length - prompt.extra_width - len(row.input_ids)
            entry = _Active(row, prompt, min(row.max_new_tokens, room), tag, text=output_text(row.rendered, ""))
            if entry.budget <= 0 or row.cancelled:
                done.append((tag, entry.text))
            else:
                joining.append(entry)
        if not joining:
            return done
        result = forward_rows(frozen, [e.prompt for e in joining], [Query(e.row.input_ids) for e in joining])
        last = result.hidden[torch.arange(len(joining), device=frozen.device), result.last]
        positions = torch.tensor(
            [e.prompt.length + e.prompt.extra_width + len(e.row.input_ids) for e in joining], device=frozen.device
        )
        self._merge(result.cache, result.key_real, positions, last)
        self.rows.extend(joining)
        return done

    def _merge(self, cache: DynamicCache, key_real: torch.Tensor, positions: torch.Tensor, last: torch.Tensor) -> None:
        """Append rows (their cache, key mask, next positions and last states) to the running batch."""
        if self._cache is None or not self.rows:
            self._cache, self._key_real, self._positions, self._last = cache, key_real, positions, last
            return
        width = max(self.width, int(key_real.shape[1]))
        merged = DynamicCache()
        pairs = zip(full_attention_layers(self._cache), full_attention_layers(cache), strict=True)
        for index, (old, new) in enumerate(pairs):
            assert old.keys is not None and old.values is not None and new.keys is not None and new.values is not None
            keys = torch.cat([_pad_left(old.keys, width, 2), _pad_left(new.keys, width, 2)])
            values = torch.cat([_pad_left(old.values, width, 2), _pad_left(new.values, width, 2)])
            merged.update(keys, values, index)
        self._cache = merged
        self._key_real = torch.cat([_pad_left(self._key_real, width, 1), _pad_left(key_real, width, 1)])
        self._positions = torch.cat([self._positions, positions])
        self._last = torch.cat([self._last, last])

    def _keep(self, slots: list[int]) -> None:
        """Keep only these rows; drop key columns no kept row uses (pads left of every row)."""
        assert self._cache is not None
        if not slots:
            self.rows, self._cache = [], None
            return
        if len(slots) < len(self.rows):
            index = torch.tensor(slots, dtype=torch.long, device=self.frozen.device)
            # Dropping finished rows from the cache costs one gather per layer and saves their later steps.
            self._cache.batch_select_indices(index)
            self._key_real, self._positions = self._key_real[index], self._positions[index]
            self._last = self._last[index]
            self.rows = [self.rows[slot] for slot in slots]
        used = self._key_real.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else 0
        if start > 0:
            for layer in full_attention_layers(self._cache):
                assert layer.keys is not None and layer.values is not None
                layer.keys, layer.values = layer.keys[:, :, start:], layer.values[:, :, start:]
            self._key_real = self._key_real[:, start:]

    def cancel_finished(self) -> list[tuple[Any, str]]:
        """Let cancelled rows go now, with what they generated so far."""
        gone = [slot for slot, entry in enumerate(self.rows) if entry.row.cancelled]
        if not gone:
            return []
        done = [(self.rows[slot].tag, self.rows[slot].text) for slot in gone]
        self._keep([slot for slot in range(len(self.rows)) if slot not in set(gone)])
        return done

    @torch.no_grad()
    def step(self) -> list[tuple[Any, str]]:
        """Every row's next token; (tag, text) of the rows that finished with it. The rest advance one pass."""
        if not self.rows:
            return []
        frozen = self.frozen
        next_ids = frozen.logits(self._last).argmax(dim=-1)
        keep: list[int] = []
        done: list[tuple[Any, str]] = []
        for slot, token in enumerate(next_ids.tolist()):
            entry = self.rows[slot]
            if token == frozen.eos_token_id:
                done.append((entry.tag, entry.text))
                continue
            entry.generated.append(token)
            entry.text = output_text(entry.row.rendered, frozen.decode(entry.generated))
            cut = cut_at_stop(entry.text, entry.row.stop)
            if cut is not None:
                entry.text = cut
            _report(entry)
            if cut is not None or len(entry.generated) >= entry.budget or entry.row.cancelled:
                done.append((entry.tag, entry.text))
            else:
                keep.append(slot)
        if keep and len(keep) < len(self.rows):
            next_ids = next_ids[torch.tensor(keep, dtype=torch.long, device=frozen.device)]
        self._keep(keep)
        if not self.rows:
            return done
        assert self._cache is not None
        self._key_real = torch.cat([self._key_real, self._key_real.new_ones(len(self.rows), 1)], dim=1)
        # A row's real keys hold positions 0, 1, ... in slot order (prompt, its own part, what it generated), and
        # the new token is its last one.
        key_positions = self._key_real.long().cumsum(dim=1) - 1
        mask = attention_mask(frozen, self._key_real.unsqueeze(1), self._positions.unsqueeze(1), key_positions)
        output = frozen.model.base_model(
            inputs_embeds=_next_embeds(frozen, [entry.prompt for entry in self.rows], next_ids),
            attention_mask=mask,
            position_ids=self._positions.unsqueeze(1),
            cache=self._cache,  # transformers >= 5.24 name; past_key_values is deprecated
            use_cache=True,
        )
        self._cache = output.cache
        self._positions = self._positions + 1
        self._last = output.last_hidden_state[:, -1]
        return done


@torch.no_grad()
def decode(frozen: FrozenModel, served: Sequence[ServedPrompt], rows: Sequence[Decoding]) -> list[str]:
    """Greedy continuations: each row stops on its own at eos, its max_new_tokens, or a stop string (cut)."""
    texts = [""] * len(rows)
    batch = DecodeBatch(frozen)
    finished = batch.admit(served, rows, range(len(rows)))
    while batch.active:
        finished.extend(batch.step())
    for index, text in finished:
        texts[index] = text
    return texts
