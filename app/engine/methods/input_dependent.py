"""`input_dependent`: each row's prompt is produced from its input by a small network over the mean of the input's
token embeddings: prompt(x) = bias + W2 tanh(W1 mean(embed(x)) + b1), an offset to a shared prompt (the bias,
which starts as the init prompt; W2 starts at zero). Not cacheable: served as a per-row segment before the input."""

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


class InputDependentConfig(TrainConfig):
    method: Literal["input_dependent"] = Field(description="A prompt generated from each input by a small network.")
    generator_hidden: int = Field(
        default=64, ge=1, le=4096, description="Width of the prompt generator's hidden layer."
    )
    num_virtual_tokens: int = Field(default=10, ge=1, le=256, description="Length of each row's generated prompt.")


class PromptGenerator(nn.Module):
    """input embeddings [T, H] -> prompt [n, H]."""

    def __init__(self, n: int, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor) -> None:
        super().__init__()
        self.n = n
        self.w1, self.b1 = nn.Parameter(w1.clone()), nn.Parameter(b1.clone())
        self.w2, self.b2 = nn.Parameter(w2.clone()), nn.Parameter(b2.clone())

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        pooled = embeds.float().mean(dim=0) if embeds.shape[0] else embeds.new_zeros(embeds.shape[1]).float()
        offset = torch.tanh(pooled @ self.w1 + self.b1) @ self.w2
        return (self.b2 + offset).view(self.n, -1)


class InputDependent(PromptModule):
    method = "input_dependent"

    def __init__(self, generator: PromptGenerator) -> None:
        super().__init__()
        self.generator = generator

    @property
    def positions(self) -> int:
        return self.generator.n

    def prompt_segments(self) -> Segments:
        return Segments(row_prefix=self.generator, row_prefix_length=self.generator.n, modules=(self.generator,))

    def stored_tensors(self) -> dict[str, torch.Tensor]:
        g = self.generator
        return {"w1": g.w1, "b1": g.b1, "w2": g.w2, "b2": g.b2.view(g.n, -1)}


class InputDependentMethod(Method):
    name = "input_dependent"
    config_type: ClassVar[type[TrainConfig]] = InputDependentConfig
    cacheable = "no: each row's prompt is made from its input"

    def expected_shapes(self, frozen: FrozenModel, config: TrainConfig) -> dict[str, list[int]]:
        assert isinstance(config, InputDependentConfig)
        n, hidden, width = config.num_virtual_tokens, frozen.hidden_size, config.generator_hidden
        return {"b1": [width], "b2": [n, hidden], "w1": [hidden, width], "w2": [width, n * hidden]}

    def fresh(
        self, frozen: FrozenModel, config: TrainConfig, spec: TaskSpec, generator: torch.Generator
    ) -> PromptModule:
        assert isinstance(config, InputDependentConfig)
        n, hidden, width = config.num_virtual_tokens, frozen.hidden_size, config.generator_hidden
        start = initial_vectors(frozen, config, spec, generator, n)
        w1 = torch.randn(hidden, width, generator=generator) / hidden**0.5
        return InputDependent(
            PromptGenerator(n, w1, torch.zeros(width), torch.zeros(width, n * hidden), start.reshape(-1))
        )

    def restore(self, frozen: FrozenModel, artifact: Artifact) -> PromptModule:
        b2 = artifact.tensor("b2", 2).float()
        w1, b1, w2 = (artifact.tensor(name, dims).float() for name, dims in (("w1", 2), ("b1", 1), ("w2", 2)))
        return InputDependent(PromptGenerator(int(b2.shape[0]), w1, b1, w2, b2.reshape(-1)))


METHOD = register(InputDependentMethod())
