"""The serving benchmark's workload: cut Rotten Tomatoes snippets, seeded random prompts, requests, raw scores.

Also the reference computation every configuration is checked against: the frozen model run on each row with
its own prompt prepended as input embeddings, no cache (`uncached_hidden`, the benchmark's own plain forward:
deliberately not the engine's, so the engine is checked against an independent computation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from app.engine.core.model import FrozenModel
from app.engine.core.text import TaskSpec, encode_example, label_token_ids
from bench.data import balanced_splits

TEMPLATE = "Review: {input}\nSentiment:"
SINGLE = TaskSpec(kind="classification", template=TEMPLATE, labels=("positive", "negative"))
MULTI = TaskSpec(kind="classification", template=TEMPLATE, labels=("very positive", "rather negative"))

Scores = dict[str, float]


@dataclass(frozen=True)
class Request:
    """One request of one input to one task; tokens counts the rendered input, prompt excluded."""

    index: int
    task: int
    text: str
    tokens: int


def snippets(frozen: FrozenModel, count: int, max_tokens: int, seed: int = 0) -> list[str]:
    """count balanced held-out snippets, each cut to its first max_tokens tokens (decoded back to text)."""
    _, test = balanced_splits(0, count + count % 2, seed=seed)
    return [frozen.decode(frozen.encode(example["input"])[:max_tokens]) for example in test[:count]]


def random_prompts(frozen: FrozenModel, count: int, length: int, seed: int = 0) -> list[torch.Tensor]:
    """count prompts [length, hidden] float32, N(0, 1) scaled to the embedding table's std (they look like text)."""
    generator = torch.Generator().manual_seed(seed)
    scale = float(frozen.embedding_matrix().float().std())
    return [torch.randn(length, frozen.hidden_size, generator=generator) * scale for _ in range(count)]


def make_requests(
    frozen: FrozenModel, spec: TaskSpec, texts: list[str], count: int, tasks: int, first_task: int = 0
) -> list[Request]:
    """count requests over the texts (cycled), request i to task (first_task + i) % tasks."""
    return [
        Request(i, (first_task + i) % tasks, text, len(encode_example(frozen, spec, text, None).input_ids))
        for i, text in ((i, texts[i % len(texts)]) for i in range(count))
    ]


def multi_token_labels(frozen: FrozenModel, spec: TaskSpec) -> bool:
    """Whether some label of the spec encodes to more than one token (the case classify scores as sequences)."""
    return any(len(ids) > 1 for ids in label_token_ids(frozen, spec))


def uncached_hidden(frozen: FrozenModel, prompts: list[torch.Tensor | None], rows: list[list[int]]) -> torch.Tensor:
    """The body's output [B, W, H] for rows of token ids, each with its prompt [n, H] (or None) prepended.

    Rows are left-padded, so every row's last token sits at slot W - 1; the pads are masked out of attention and
    each row's positions count from its first real slot (position ids from the attention mask), as if it ran alone.
    """
    pieces = []
    for prompt, ids in zip(prompts, rows, strict=True):
        tokens = frozen.embed(torch.tensor(ids, dtype=torch.long))
        if prompt is not None:
            tokens = torch.cat([prompt.to(device=frozen.device, dtype=frozen.dtype), tokens])
        pieces.append(tokens)
    width = max(piece.shape[0] for piece in pieces)
    embeds = torch.zeros(len(pieces), width, frozen.hidden_size, device=frozen.device, dtype=frozen.dtype)
    mask = torch.zeros(len(pieces), width, dtype=torch.long, device=frozen.device)
    for row, piece in enumerate(pieces):
        embeds[row, width - piece.shape[0] :] = piece
        mask[row, width - piece.shape[0] :] = 1
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    output = frozen.model.base_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False)
    return output.last_hidden_state


@torch.no_grad()
def raw_scores(
    frozen: FrozenModel, spec: TaskSpec, prompts: list[torch.Tensor | None], texts: list[str]
) -> list[Scores]:
    """Label probabilities of one batch, each row with its own prompt (or None) prepended, nothing cached.

    Single-token labels: one forward, the LM head at the last position only. Multi-token labels: every
    (input, label) pair is a row with the label fed after the input, and the label's total log-probability read
    off the positions before its tokens, as classification scores them.
    """
    labels = label_token_ids(frozen, spec)
    firsts = [ids[0] for ids in labels]
    inputs = [encode_example(frozen, spec, text, None).input_ids for text in texts]
    if all(len(ids) == 1 for ids in labels) and len(set(firsts)) == len(firsts):
        last = uncached_hidden(frozen, prompts, inputs)[:, -1]
        scores = torch.log_softmax(frozen.logits(last).float(), dim=-1)[:, firsts]
    else:
        pair_prompts = [prompt for prompt in prompts for _ in labels]
        pairs = [ids + label for ids in inputs for label in labels]
        hidden = uncached_hidden(frozen, pair_prompts, pairs)
        totals = []
        for row, label in enumerate(label for _ in inputs for label in labels):
            # The label's k-th token is predicted at the slot before it; the label ends at the last slot.
            states = hidden[row, hidden.shape[1] - len(label) - 1 : hidden.shape[1] - 1]
            logprobs = torch.log_softmax(frozen.logits(states).float(), dim=-1)
            totals.append(logprobs[torch.arange(len(label)), torch.tensor(label)].sum())
        scores = torch.stack(totals).view(len(texts), len(labels))
    probabilities = torch.softmax(scores, dim=-1).tolist()
    return [dict(zip(spec.labels, row, strict=True)) for row in probabilities]


def label_of(scores: Scores) -> str:
    """The predicted label: the most probable one."""
    return max(scores, key=scores.__getitem__)
