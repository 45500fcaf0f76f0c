"""The serving benchmark's workload: cut Rotten Tomatoes snippets, seeded random prompts, requests, raw scores.

Also the reference computation every configuration is checked against: the frozen model run on each row with
its own prompt prepended (forward.build_batch accepts one prompt per row), no cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from app.engine.forward import build_batch, hidden_states, target_logprobs
from app.engine.model import FrozenModel
from app.engine.text import TaskSpec, encode_example, label_token_ids
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


@torch.no_grad()
def raw_scores(
    frozen: FrozenModel, spec: TaskSpec, prompts: list[torch.Tensor | None], texts: list[str]
) -> list[Scores]:
    """Label probabilities of one batch, each row with its own prompt (or None) prepended, nothing cached.

    Single-token labels: one forward, the LM head at the last position only. Multi-token labels: every
    (input, label) pair is a row with the label as target, as inference.classify scores them.
    """
    labels = label_token_ids(frozen, spec)
    firsts = [ids[0] for ids in labels]
    if all(len(ids) == 1 for ids in labels) and len(set(firsts)) == len(firsts):
        examples = [encode_example(frozen, spec, text, None) for text in texts]
        last = hidden_states(frozen, build_batch(frozen, prompts, examples))[:, -1]
        scores = torch.log_softmax(frozen.logits(last).float(), dim=-1)[:, firsts]
    else:
        pairs = [encode_example(frozen, spec, text, label) for text in texts for label in spec.labels]
        pair_prompts = [prompt for prompt in prompts for _ in spec.labels]
        scores = target_logprobs(frozen, pair_prompts, pairs).view(len(texts), len(spec.labels))
    probabilities = torch.softmax(scores, dim=-1).tolist()
    return [dict(zip(spec.labels, row, strict=True)) for row in probabilities]


def label_of(scores: Scores) -> str:
    """The predicted label: the most probable one."""
    return max(scores, key=scores.__getitem__)
