"""`prompt`: plain prompt tuning (Lester et al. 2021), n trainable embeddings before the input."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from app.engine.core.model import FrozenModel
from app.engine.core.segments import Segments
from app.engine.core.text import TaskSpec
from app.engine.formats.artifact import Artifact
from app.engine.methods.base import Method, PromptModule, TrainConfig, register
from app.engine.methods.init import initial_vectors


class PromptConfig(TrainConfig):
    method: Literal["prompt"] = Field(
        "prompt", description="Plain prompt tuning: n trainable embeddings before the input."
    )


class SoftPrompt(PromptModule):
    """nn.Embedding(num_virtual_tokens, hidden) whose weight is the prompt [n, H]."""

    method = "prompt"

    def __init__(self, initial: torch.Tensor) -> None:
        super().__init__()
        if initial.dim() != 2:
            raise ValueError(f"a soft prompt is [num_virtual_tokens, hidden], got shape {tuple(initial.shape)}.")
        self.embedding = nn.Embedding(initial.shape[0], initial.shape[1])
        with torch.no_grad():
            self.embedding.weight.copy_(initial)

    @property
    def positions(self) -> int:
        return int(self.embedding.num_embeddings)

    def forward(self) -> torch.Tensor:
        """The prompt vectors [num_virtual_tokens, hidden], differentiable."""
        return self.embedding.weight

    def prompt_segments(self) -> Segments:
        return Segments(prefix=self.embedding.weight)

    def stored_tensors(self) -> dict[str, torch.Tensor]:
        return {"prompt": self.embedding.weight}


class PromptMethod(Method):
    name = "prompt"
    config_type: ClassVar[type[TrainConfig]] = PromptConfig
    cacheable = "yes: the prompt runs once per version; rows attend over its cached keys/values"

    def expected_shapes(self, frozen: FrozenModel, config: TrainConfig) -> dict[str, list[int]]:
        return {"prompt": [config.num_virtual_tokens, frozen.hidden_size]}

    def fresh(
        self, frozen: FrozenModel, config: TrainConfig, spec: TaskSpec, generator: torch.Generator
    ) -> PromptModule:
        return SoftPrompt(initial_vectors(frozen, config, spec, generator, config.num_virtual_tokens))

    def restore(self, frozen: FrozenModel, artifact: Artifact) -> PromptModule:
        prompt = artifact.tensor("prompt", 2)
        if prompt.shape[1] != frozen.hidden_size:
            raise ValueError(
                f"the stored prompt has width {prompt.shape[1]}; this model's hidden size is {frozen.hidden_size}."
            )
        return SoftPrompt(prompt.float())


METHOD = register(PromptMethod())
