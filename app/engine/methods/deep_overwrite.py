"""`deep_overwrite`: at chosen layers the hidden states at the prompt positions are replaced by learned vectors.

Layer 0's input is the prompt itself (as for `prompt`); `layers` picks which later layers get their own vectors:
"all", {"every": k} (k, 2k, ...), or a list of indices. The replaced positions are the prompt's, which never see
the input, so the result is computed once per version with an explicit layer loop (app/engine/core/layer_loop.py)
and served from the pool like a plain prompt's keys/values. Gradient still reaches a layer's vectors sideways:
later input positions attend over the keys/values computed from them.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from app.engine.core.layer_loop import decoder_layers, layer_inputs
from app.engine.core.model import FrozenModel
from app.engine.core.segments import Overwrite, Segments
from app.engine.core.text import TaskSpec
from app.engine.formats.artifact import Artifact
from app.engine.methods.base import Method, PromptModule, TrainConfig, register
from app.engine.methods.init import initial_vectors


class EveryK(BaseModel):
    model_config = ConfigDict(extra="forbid")

    every: int = Field(ge=1, le=1000, description="Replace at layers k, 2k, 3k, ...")


class DeepOverwriteConfig(TrainConfig):
    method: Literal["deep_overwrite"] = Field(
        description="Deep prompt: hidden states at the prompt positions replaced at chosen layers."
    )
    layers: Literal["all"] | EveryK | list[int] = Field(
        default="all",
        description='Layers whose input is replaced at the prompt positions: "all", {"every": k}, or indices '
        "(0 is the prompt itself and always present).",
    )
    learning_rate: float = Field(default=0.01, gt=0, le=10, description="Peak AdamW learning rate.")


def chosen_layers(config: DeepOverwriteConfig, total: int) -> tuple[int, ...]:
    """The replaced layers >= 1, ascending; ValueError for an index outside 0..total-1."""
    if config.layers == "all":
        return tuple(range(1, total))
    if isinstance(config.layers, EveryK):
        return tuple(range(config.layers.every, total, config.layers.every))
    bad = sorted({layer for layer in config.layers if not 0 <= layer < total})
    if bad:
        raise ValueError(f"layers {bad} are out of range: this model has layers 0..{total - 1}.")
    return tuple(sorted({layer for layer in config.layers if layer >= 1}))


class DeepPrompt(PromptModule):
    """prompt [n, H] (layer 0's input) and states [len(layers), n, H] (the later layers' inputs)."""

    method = "deep_overwrite"

    def __init__(self, prompt: torch.Tensor, layers: tuple[int, ...], states: torch.Tensor) -> None:
        super().__init__()
        if prompt.dim() != 2 or states.dim() != 3 or tuple(states.shape[:2]) != (len(layers), prompt.shape[0]):
            raise ValueError(
                f"a deep prompt is prompt [n, H] and states [layers, n, H]; got {tuple(prompt.shape)} "
                f"and {tuple(states.shape)} for {len(layers)} layers."
            )
        self.prompt = nn.Parameter(prompt.clone())
        self.states = nn.Parameter(states.clone())
        self.layers = layers

    @property
    def positions(self) -> int:
        return int(self.prompt.shape[0])

    def prompt_segments(self) -> Segments:
        return Segments(prefix=self.prompt, overwrite=Overwrite(self.layers, self.states))

    def stored_tensors(self) -> dict[str, torch.Tensor]:
        return {"prompt": self.prompt, "states": self.states}

    def stored_config(self) -> dict[str, object]:
        return {"layers": list(self.layers)}


class DeepOverwriteMethod(Method):
    name = "deep_overwrite"
    config_type: ClassVar[type[TrainConfig]] = DeepOverwriteConfig
    cacheable = "yes: computed once per version with a layer loop, then cached keys/values"

    def check(self, frozen: FrozenModel, config: TrainConfig) -> None:
        assert isinstance(config, DeepOverwriteConfig)
        chosen_layers(config, decoder_layers(frozen))

    def expected_shapes(self, frozen: FrozenModel, config: TrainConfig) -> dict[str, list[int]]:
        assert isinstance(config, DeepOverwriteConfig)
        layers = chosen_layers(config, decoder_layers(frozen))
        n, hidden = config.num_virtual_tokens, frozen.hidden_size
        return {"prompt": [n, hidden], "states": [len(layers), n, hidden]}

    def fresh(
        self, frozen: FrozenModel, config: TrainConfig, spec: TaskSpec, generator: torch.Generator
    ) -> PromptModule:
        assert isinstance(config, DeepOverwriteConfig)
        layers = chosen_layers(config, decoder_layers(frozen))
        prompt = initial_vectors(frozen, config, spec, generator, config.num_virtual_tokens)
        # Each layer starts from what it sees of the plain prompt: before training, the deep prompt is that prompt.
        states = layer_inputs(frozen, prompt, layers) if layers else torch.zeros(0, *prompt.shape)
        return DeepPrompt(prompt, layers, states)

    def restore(self, frozen: FrozenModel, artifact: Artifact) -> PromptModule:
        layers = tuple(int(layer) for layer in artifact.config.get("layers", []))
        total = decoder_layers(frozen)
        if any(not 1 <= layer < total for layer in layers):
            raise ValueError(f"the stored deep prompt replaces layers {list(layers)}; this model has 0..{total - 1}.")
        return DeepPrompt(artifact.tensor("prompt", 2).float(), layers, artifact.tensor("states", 3).float())

    def build(
        self,
        frozen: FrozenModel,
        config: TrainConfig,
        spec: TaskSpec,
        generator: torch.Generator,
        init: Artifact | None = None,
    ) -> PromptModule:
        assert isinstance(config, DeepOverwriteConfig)
        layers = chosen_layers(config, decoder_layers(frozen))
        if init is not None and init.method == self.name and tuple(init.config.get("layers", [])) != layers:
            raise ValueError(
                f"the init prompt replaces layers {init.config.get('layers')}; this job's are {list(layers)}."
            )
        return super().build(frozen, config, spec, generator, init)


METHOD = register(DeepOverwriteMethod())
