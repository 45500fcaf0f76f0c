"""One prompt over many inputs: conveniences on the engine's one path (a one-prompt source, mixed passes).

Used where a single prompt serves a list of inputs outside the batcher: zero-shot baselines, benchmarks, tests.
"""

from __future__ import annotations

import torch

from app.engine.core.mixed import Row, classify_rows, generate_rows
from app.engine.core.model import FrozenModel
from app.engine.core.prompts import Prompts, single
from app.engine.core.segments import Segments
from app.engine.core.text import TaskSpec

Prompt = Segments | torch.Tensor | None  # a tensor [n, H] is a plain prompt; None is the bare model


def as_segments(prompt: Prompt) -> Segments:
    """Segments of a prompt given as segments, a plain prompt tensor, or None (nothing before the input)."""
    if prompt is None:
        return Segments()
    if isinstance(prompt, torch.Tensor):
        return Segments(prefix=prompt)
    return prompt


def _pool(frozen: FrozenModel, prompt: Prompt) -> Prompts:
    return single(frozen, as_segments(prompt))


def _chunks(items: list[str], size: int) -> list[list[str]]:
    if size < 1:
        raise ValueError(f"batch_size must be at least 1, got {size}.")
    return [items[start : start + size] for start in range(0, len(items), size)]


@torch.no_grad()
def classify(
    frozen: FrozenModel, prompt: Prompt, spec: TaskSpec, inputs: list[str], *, batch_size: int = 64
) -> list[dict[str, float]]:
    """Probabilities over spec.labels for each input (softmax of each label's total log-prob), inputs order."""
    if spec.kind != "classification":
        raise ValueError(f"classify needs a classification task, this one is {spec.kind}.")
    pool = _pool(frozen, prompt)
    return [
        scores
        for chunk in _chunks(inputs, batch_size)
        for scores in classify_rows(frozen, pool, [Row(0, spec, text) for text in chunk])
    ]


@torch.no_grad()
def generate(
    frozen: FrozenModel,
    prompt: Prompt,
    spec: TaskSpec,
    inputs: list[str],
    *,
    max_new_tokens: int = 32,
    stop: list[str] | None = None,
    batch_size: int = 64,
) -> list[str]:
    """Greedy continuations, one per input: stop at eos, max_new_tokens or a stop string (cut before it)."""
    pool = _pool(frozen, prompt)
    stops = tuple(stop or ())
    return [
        text
        for chunk in _chunks(inputs, batch_size)
        for text in generate_rows(frozen, pool, [Row(0, spec, t, max_new_tokens, stops) for t in chunk])
    ]
