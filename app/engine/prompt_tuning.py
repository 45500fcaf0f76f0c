"""Prompt tuning (Lester et al. 2021): a config and a module holding num_virtual_tokens trainable embeddings."""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from app.engine.model import FrozenModel
from app.engine.text import TaskSpec, label_token_ids

METHOD = "prompt_tuning"

Init = Literal["text", "vocab", "random", "labels"]


class PromptTuningConfig(BaseModel):
    """Hyperparameters of one prompt-tuning job; stored as JSON on the job row."""

    model_config = ConfigDict(extra="forbid")

    num_virtual_tokens: int = Field(
        default=20, ge=1, le=256, description="Length of the soft prompt, in embedding vectors."
    )
    init: Init = Field(
        default="text",
        description="How the prompt starts: embeddings of init_text, of random vocabulary tokens, "
        "random vectors, or the label words' tokens.",
    )
    init_text: str | None = Field(
        default=None,
        max_length=4000,
        description='Text whose token embeddings start the prompt (init="text"); '
        "default: a short instruction built from the task.",
    )
    steps: int = Field(default=200, ge=1, le=100_000, description="Optimizer steps.")
    batch_size: int = Field(default=8, ge=1, le=256, description="Examples per step.")
    learning_rate: float = Field(default=0.03, gt=0, le=10, description="Peak AdamW learning rate.")
    weight_decay: float = Field(default=0.0, ge=0, le=1, description="AdamW weight decay on the prompt.")
    # Not refused when larger than steps: a short job given the default warm-up simply warms up throughout.
    warmup_steps: int = Field(
        default=10, ge=0, description="Steps of linear warm-up before the cosine decay (capped at steps)."
    )
    max_grad_norm: float = Field(default=1.0, gt=0, description="Gradient norm clipping threshold.")
    eval_every: int = Field(default=25, ge=1, description="Validate every this many steps (and at 0 and end).")
    validation_fraction: float = Field(
        default=0.1, gt=0, lt=0.9, description="Share of the training set held out when no validation set is given."
    )
    max_validation_examples: int = Field(
        default=200, ge=1, description="Most validation examples scored per evaluation."
    )
    seed: int = Field(default=0, ge=0, description="Seeds the split, the initialisation and batch sampling.")

    @model_validator(mode="after")
    def _check_combinations(self) -> PromptTuningConfig:
        if self.init_text is not None and self.init != "text":
            raise ValueError(f'init_text is only used when init is "text", but init is "{self.init}".')
        if self.init_text is not None and not self.init_text.strip():
            raise ValueError("init_text is blank; give some words or leave it out to use the default.")
        return self


class SoftPrompt(nn.Module):
    """The trainable prompt: an nn.Embedding(num_virtual_tokens, hidden) whose forward returns [n, hidden]."""

    def __init__(self, initial: torch.Tensor) -> None:
        super().__init__()
        if initial.dim() != 2:
            raise ValueError(f"a soft prompt is [num_virtual_tokens, hidden], got shape {tuple(initial.shape)}.")
        self.embedding = nn.Embedding(initial.shape[0], initial.shape[1])
        with torch.no_grad():
            self.embedding.weight.copy_(initial)

    @property
    def num_virtual_tokens(self) -> int:
        """Length of the prompt."""
        return int(self.embedding.num_embeddings)

    def forward(self) -> torch.Tensor:
        """The prompt vectors [num_virtual_tokens, hidden], differentiable."""
        return self.embedding.weight


def default_init_text(spec: TaskSpec) -> str:
    """The instruction a text-initialised prompt starts from when the job gives none."""
    if spec.kind == "classification":
        return "Classify the text as " + " or ".join(spec.labels) + "."
    return "Answer the input."


def _tile(ids: list[int], n: int) -> list[int]:
    """Repeat ids until there are n of them, then cut to n."""
    return (ids * math.ceil(n / len(ids)))[:n]


def initial_prompt(
    frozen: FrozenModel, config: PromptTuningConfig, spec: TaskSpec, generator: torch.Generator
) -> torch.Tensor:
    """The starting prompt [num_virtual_tokens, hidden], float32 on CPU, as config.init says."""
    n = config.num_virtual_tokens
    table = frozen.embedding_matrix()
    if config.init == "random":
        # Match the scale of real token embeddings so the frozen layers see familiar magnitudes.
        std = float(table.detach().float().std())
        return torch.randn(n, frozen.hidden_size, generator=generator) * std
    if config.init == "vocab":
        # The embedding table can be padded past the tokenizer; sample only ids that are real tokens.
        vocab = min(int(table.shape[0]), len(frozen.tokenizer))
        ids = torch.randint(0, vocab, (n,), generator=generator).tolist()
    elif config.init == "text":
        text = config.init_text if config.init_text is not None else default_init_text(spec)
        ids = frozen.encode(text)
        if not ids:
            raise ValueError("init_text encodes to no tokens; give some words.")
        ids = _tile(ids, n)
    else:
        if not spec.labels:
            raise ValueError('init "labels" needs a task with labels; use "text" for generation tasks.')
        ids = _tile([token for label in label_token_ids(frozen, spec) for token in label], n)
    with torch.no_grad():
        vectors = frozen.embed(torch.tensor(ids, dtype=torch.long))
    return vectors.detach().to("cpu", torch.float32).clone()
