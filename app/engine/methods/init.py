"""Where a prompt's vectors start: an English text, sampled vocabulary, random vectors, or the label words."""

from __future__ import annotations

import math

import torch

from app.engine.core.model import FrozenModel
from app.engine.core.text import TaskSpec, label_token_ids
from app.engine.methods.base import TrainConfig


def default_init_text(spec: TaskSpec) -> str:
    """The instruction a text-initialised prompt starts from when the job gives none."""
    if spec.kind == "classification":
        return "Classify the text as " + " or ".join(spec.labels) + "."
    return "Answer the input."


def _tile(ids: list[int], n: int) -> list[int]:
    """Repeat ids until there are n of them, then cut to n."""
    return (ids * math.ceil(n / len(ids)))[:n]


def initial_vectors(
    frozen: FrozenModel,
    config: TrainConfig,
    spec: TaskSpec,
    generator: torch.Generator,
    n: int,
    *,
    text: str | None = None,
) -> torch.Tensor:
    """[n, hidden] float32 on CPU as config.init says (text: `text`, else init_text, else the default)."""
    if config.init == "auto":
        raise ValueError('init "auto" picks a stored prompt before training; the job resolves it, not the method.')
    table = frozen.embedding_matrix()
    if config.init == "random":
        # Match the scale of real token embeddings as the body receives them so the frozen layers see familiar
        # magnitudes: the table's spread times the embedding layer's own scale (Gemma's sqrt(hidden); exactly 1
        # where the layer returns its rows as they are).
        with torch.no_grad():
            rows = torch.arange(0, int(table.shape[0]), max(1, int(table.shape[0]) // 64))
            scale = float(frozen.embed(rows).float().norm() / table[rows].float().norm())
            std = float(table.detach().float().std()) * scale
        return torch.randn(n, frozen.hidden_size, generator=generator) * std
    if config.init == "vocab":
        # The embedding table can be padded past the tokenizer; sample only ids that are real tokens.
        vocab = min(int(table.shape[0]), len(frozen.tokenizer))
        ids = torch.randint(0, vocab, (n,), generator=generator).tolist()
    elif config.init == "labels":
        if not spec.labels:
            raise ValueError('init "labels" needs a task with labels; use "text" for generation tasks.')
        ids = _tile([token for label in label_token_ids(frozen, spec) for token in label], n)
    else:  # "text"; from_prompt methods never call this
        source = (
            text if text is not None else config.init_text if config.init_text is not None else default_init_text(spec)
        )
        ids = frozen.encode(source)
        if not ids:
            raise ValueError("init_text encodes to no tokens; give some words.")
        ids = _tile(ids, n)
    with torch.no_grad():
        vectors = frozen.embed(torch.tensor(ids, dtype=torch.long))
    return vectors.detach().to("cpu", torch.float32).clone()
