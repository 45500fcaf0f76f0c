"""A reference for the engine's one forward: the frozen model run plainly on [prompt | tokens], nothing cached.

Kept in the tests only: it checks that cached, batched, mixed passes compute what the plain model computes.
"""

from __future__ import annotations

import torch

from app.engine.core.model import FrozenModel
from app.engine.core.text import TaskSpec, encode_example


@torch.no_grad()
def plain_hidden(frozen: FrozenModel, prompt: torch.Tensor | None, ids: list[int]) -> torch.Tensor:
    """[L, H]: the body's output for one row [prompt | ids] run alone as inputs_embeds."""
    parts = [] if prompt is None else [prompt.to(frozen.dtype)]
    if ids:
        parts.append(frozen.embed(torch.tensor(ids, dtype=torch.long)))
    embeds = torch.cat(parts).unsqueeze(0)
    return frozen.model.base_model(inputs_embeds=embeds, use_cache=False).last_hidden_state[0]


def plain_logits(frozen: FrozenModel, prompt: torch.Tensor | None, ids: list[int]) -> torch.Tensor:
    """Float32 logits [vocab] predicting the token after [prompt | ids]."""
    return frozen.logits(plain_hidden(frozen, prompt, ids)[-1]).float()


def plain_label_logprob(frozen: FrozenModel, prompt: torch.Tensor | None, ids: list[int], label: list[int]) -> float:
    """log p(label tokens | prompt, ids), one token at a time."""
    hidden = plain_hidden(frozen, prompt, [*ids, *label[:-1]])
    logprobs = torch.log_softmax(frozen.logits(hidden[-len(label) :]).float(), dim=-1)
    return float(sum(logprobs[i, token] for i, token in enumerate(label)))


def greedy_without_cache(frozen: FrozenModel, prompt: torch.Tensor | None, spec: TaskSpec, text: str, n: int) -> str:
    """Greedy decoding by re-running the whole row for every new token."""
    ids = encode_example(frozen, spec, text, None).input_ids
    generated: list[int] = []
    for _ in range(n):
        token = int(plain_logits(frozen, prompt, ids + generated).argmax())
        if token == frozen.eos_token_id:
            break
        generated.append(token)
    return frozen.decode(generated).removeprefix(" ")
