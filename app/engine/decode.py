"""Greedy decoding of rows that each carry their own prompt, on the one forward; finished rows leave the batch."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from app.engine.forward import Query, forward_rows
from app.engine.model import FrozenModel
from app.engine.segments import ServedPrompt
from app.engine.text import output_text


@dataclass(frozen=True)
class Decoding:
    """One row to decode: its rendered input (to undo the target's leading space), limits and stop strings."""

    rendered: str
    input_ids: Sequence[int]
    max_new_tokens: int
    stop: tuple[str, ...] = ()
    cancel: threading.Event | None = field(default=None, compare=False)  # set: stop at the next step

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


@torch.no_grad()
def decode(frozen: FrozenModel, served: Sequence[ServedPrompt], rows: Sequence[Decoding]) -> list[str]:
    """Greedy continuations: each row stops on its own at eos, its max_new_tokens, or a stop string (cut)."""
    # Never run past the context: a row near the limit gets fewer new tokens.
    budgets = [
        min(row.max_new_tokens, frozen.max_positions - prompt.length - prompt.extra_width - len(row.input_ids))
        for row, prompt in zip(rows, served, strict=True)
    ]
    texts = [output_text(row.rendered, "") for row in rows]
    active = [i for i, budget in enumerate(budgets) if budget > 0 and not rows[i].cancelled]
    if not active:
        return texts
    prompts = [served[i] for i in active]
    result = forward_rows(frozen, prompts, [Query(rows[i].input_ids) for i in active])
    cache, key_real = result.cache, result.key_real
    last = result.hidden[torch.arange(len(active), device=frozen.device), result.last]
    positions = torch.tensor(
        [served[i].length + served[i].extra_width + len(rows[i].input_ids) for i in active], device=frozen.device
    )
    generated: list[list[int]] = [[] for _ in rows]
    body = frozen.model.base_model
    while True:
        next_ids = frozen.logits(last).argmax(dim=-1)
        keep: list[int] = []
        for slot, token in enumerate(next_ids.tolist()):
            i = active[slot]
            if token == frozen.eos_token_id:
                continue
            generated[i].append(token)
            texts[i] = output_text(rows[i].rendered, frozen.decode(generated[i]))
            cut = cut_at_stop(texts[i], rows[i].stop)
            if cut is not None:
                texts[i] = cut
            elif len(generated[i]) < budgets[i] and not rows[i].cancelled:
                keep.append(slot)
        if not keep:
            return texts
        if len(keep) < len(active):
            # Dropping finished rows from the cache costs one gather per layer and saves their later steps.
            index = torch.tensor(keep, device=frozen.device)
            cache.batch_select_indices(index)
            key_real, next_ids, positions = key_real[index], next_ids[index], positions[index]
            active = [active[slot] for slot in keep]
            prompts = [prompts[slot] for slot in keep]
        key_real = torch.cat([key_real, key_real.new_ones(len(active), 1)], dim=1)
        output = body(
            inputs_embeds=_next_embeds(frozen, prompts, next_ids),
            attention_mask=key_real.long(),
            position_ids=positions.unsqueeze(1),
            cache=cache,  # transformers >= 5.24 name; past_key_values is deprecated
            use_cache=True,
        )
        positions = positions + 1
        last = output.last_hidden_state[:, -1]
