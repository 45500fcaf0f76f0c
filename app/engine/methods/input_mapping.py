"""`input_mapping`: a learnable low-rank mapping of the input embeddings, x -> x + (x A) B, alone or with a prompt
before the input. B starts at zero, so the mapping starts as the identity. Every token a row feeds goes through
it: the input, the targets while training, and each decoded token while generating."""

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


class InputMappingConfig(TrainConfig):
    method: Literal["input_mapping"] = Field(
        description="A learnable low-rank mapping of the input embeddings (with an optional prompt)."
    )
    num_virtual_tokens: int = Field(
        default=0, ge=0, le=256, description="Prompt vectors before the (mapped) input; 0: the mapping alone."
    )
    rank: int = Field(default=8, ge=1, le=256, description="Rank of the mapping's update.")
    learning_rate: float = Field(default=0.003, gt=0, le=10, description="Peak AdamW learning rate.")


class LowRankMap(nn.Module):
    """x [..., H] -> x + (x @ down) @ up, computed in float32."""

    def __init__(self, down: torch.Tensor, up: torch.Tensor) -> None:
        super().__init__()
        self.down = nn.Parameter(down.clone())
        self.up = nn.Parameter(up.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + ((x.float() @ self.down) @ self.up).to(x.dtype)


class InputMapping(PromptModule):
    method = "input_mapping"

    def __init__(self, prompt: torch.Tensor, down: torch.Tensor, up: torch.Tensor) -> None:
        super().__init__()
        self.prompt = nn.Parameter(prompt.clone())
        self.mapping = LowRankMap(down, up)

    @property
    def positions(self) -> int:
        return int(self.prompt.shape[0])

    def prompt_segments(self) -> Segments:
        prefix = self.prompt if self.prompt.shape[0] else None
        return Segments(prefix=prefix, map_embeds=self.mapping, modules=(self.mapping,))

    def stored_tensors(self) -> dict[str, torch.Tensor]:
        return {"prompt": self.prompt, "down": self.mapping.down, "up": self.mapping.up}


class InputMappingMethod(Method):
    name = "input_mapping"
    config_type: ClassVar[type[TrainConfig]] = InputMappingConfig
    cacheable = "the prompt before the input, if any; the mapping runs on every row"

    def expected_shapes(self, frozen: FrozenModel, config: TrainConfig) -> dict[str, list[int]]:
        assert isinstance(config, InputMappingConfig)
        hidden = frozen.hidden_size
        return {
            "down": [hidden, config.rank],
            "prompt": [config.num_virtual_tokens, hidden],
            "up": [config.rank, hidden],
        }

    def fresh(
        self, frozen: FrozenModel, config: TrainConfig, spec: TaskSpec, generator: torch.Generator
    ) -> PromptModule:
        assert isinstance(config, InputMappingConfig)
        hidden = frozen.hidden_size
        n = config.num_virtual_tokens
        prompt = initial_vectors(frozen, config, spec, generator, n) if n else torch.zeros(0, hidden)
        down = torch.randn(hidden, config.rank, generator=generator) / hidden**0.5
        return InputMapping(prompt, down, torch.zeros(config.rank, hidden))

    def restore(self, frozen: FrozenModel, artifact: Artifact) -> PromptModule:
        return InputMapping(*(artifact.tensor(name, 2).float() for name in ("prompt", "down", "up")))


METHOD = register(InputMappingMethod())
