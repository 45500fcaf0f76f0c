"""`around`: learned vectors before and after the input. The part before is cached per version; the part after
rides with each row's input in the same pass (it attends over the input, so it cannot be cached)."""

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


class AroundConfig(TrainConfig):
    method: Literal["around"] = Field(description="Learned vectors before and after the input.")
    num_after_tokens: int = Field(default=4, ge=1, le=64, description="Learned vectors after the input.")
    after_init_text: str | None = Field(
        default=None, max_length=1000, description='Text whose embeddings start the part after (init="text").'
    )


class Around(PromptModule):
    """before [n, H] ahead of the input, after [m, H] behind it."""

    method = "around"

    def __init__(self, before: torch.Tensor, after: torch.Tensor) -> None:
        super().__init__()
        if before.dim() != 2 or after.dim() != 2 or before.shape[1] != after.shape[1]:
            raise ValueError(
                f"before and after are [n, H] and [m, H]; got {tuple(before.shape)}, {tuple(after.shape)}."
            )
        self.before = nn.Parameter(before.clone())
        self.after = nn.Parameter(after.clone())

    @property
    def positions(self) -> int:
        return int(self.before.shape[0] + self.after.shape[0])

    def prompt_segments(self) -> Segments:
        return Segments(prefix=self.before, after=self.after)

    def stored_tensors(self) -> dict[str, torch.Tensor]:
        return {"before": self.before, "after": self.after}


class AroundMethod(Method):
    name = "around"
    config_type: ClassVar[type[TrainConfig]] = AroundConfig
    cacheable = "the part before the input; the part after runs with each row"

    def positions(self, config: TrainConfig) -> int:
        assert isinstance(config, AroundConfig)
        return config.num_virtual_tokens + config.num_after_tokens

    def expected_shapes(self, frozen: FrozenModel, config: TrainConfig) -> dict[str, list[int]]:
        assert isinstance(config, AroundConfig)
        return {
            "after": [config.num_after_tokens, frozen.hidden_size],
            "before": [config.num_virtual_tokens, frozen.hidden_size],
        }

    def fresh(
        self, frozen: FrozenModel, config: TrainConfig, spec: TaskSpec, generator: torch.Generator
    ) -> PromptModule:
        assert isinstance(config, AroundConfig)
        before = initial_vectors(frozen, config, spec, generator, config.num_virtual_tokens)
        after_text = config.after_init_text if config.init == "text" else None
        after = initial_vectors(frozen, config, spec, generator, config.num_after_tokens, text=after_text)
        return Around(before, after)

    def restore(self, frozen: FrozenModel, artifact: Artifact) -> PromptModule:
        return Around(artifact.tensor("before", 2).float(), artifact.tensor("after", 2).float())


METHOD = register(AroundMethod())
