"""`prefix`: learned keys and values at every layer (prefix tuning / P-tuning v2).

Optionally reparameterised while training: keys/values = start + MLP(embeddings), the MLP's last layer zero at
first so training starts exactly at the init. Stored collapsed to plain tensors, which are the pool's cache as
they are: serving runs no prompt forward at all.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from app.engine.core.model import FrozenModel
from app.engine.core.prompt_cache import PromptKV, compute_prompt_kvs, kv_shape
from app.engine.core.segments import Segments
from app.engine.core.text import TaskSpec
from app.engine.formats.artifact import Artifact
from app.engine.methods.base import Method, PromptModule, TrainConfig, register
from app.engine.methods.init import initial_vectors


class PrefixConfig(TrainConfig):
    method: Literal["prefix"] = Field(description="Prefix tuning: learned keys and values at every layer.")
    reparameterize: bool = Field(
        default=False,
        description="Train the keys/values through a small MLP over n embeddings (collapsed when stored).",
    )
    reparam_hidden: int = Field(default=256, ge=1, le=4096, description="Width of the reparameterisation MLP.")
    learning_rate: float = Field(default=0.01, gt=0, le=10, description="Peak AdamW learning rate.")


class Prefix(PromptModule):
    """keys, values [layers, kv_heads, n, head_dim]: exactly what the cache of a prompt of n positions holds."""

    method = "prefix"

    def __init__(
        self, keys: torch.Tensor, values: torch.Tensor, embeddings: torch.Tensor | None = None, hidden: int = 0
    ) -> None:
        super().__init__()
        if keys.dim() != 4 or keys.shape != values.shape:
            raise ValueError(
                f"prefix keys and values are [layers, kv_heads, n, head_dim]; got {tuple(keys.shape)} "
                f"and {tuple(values.shape)}."
            )
        self.mlp: nn.Sequential | None = None
        if embeddings is None:
            self.keys = nn.Parameter(keys.clone())
            self.values = nn.Parameter(values.clone())
        else:
            # The start is fixed; what trains is the embeddings and the MLP that maps them to offsets.
            self.register_buffer("start_keys", keys.clone())
            self.register_buffer("start_values", values.clone())
            self.embeddings = nn.Parameter(embeddings.clone())
            out = 2 * keys.numel() // keys.shape[2]  # per position: keys and values of every layer and head
            self.mlp = nn.Sequential(nn.Linear(embeddings.shape[1], hidden), nn.Tanh(), nn.Linear(hidden, out))
            last = self.mlp[2]
            assert isinstance(last, nn.Linear)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        self._shape = tuple(keys.shape)

    @property
    def positions(self) -> int:
        return int(self._shape[2])

    def keys_values(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mlp is None:
            return self.keys, self.values
        layers, heads, n, dim = self._shape
        # [n, 2 * layers * heads * dim] -> two [layers, heads, n, dim]
        offsets = self.mlp(self.embeddings).view(n, 2, layers, heads, dim).permute(1, 2, 3, 0, 4)
        return self.start_keys + offsets[0], self.start_values + offsets[1]

    def prompt_segments(self) -> Segments:
        keys, values = self.keys_values()
        return Segments(kv=PromptKV(keys=keys, values=values, last_hidden=None))

    def stored_tensors(self) -> dict[str, torch.Tensor]:
        keys, values = self.keys_values()
        return {"keys": keys, "values": values}


class PrefixMethod(Method):
    name = "prefix"
    config_type: ClassVar[type[TrainConfig]] = PrefixConfig
    cacheable = "yes: the stored keys/values are the cache (no prompt forward)"
    needs_input = True

    def expected_shapes(self, frozen: FrozenModel, config: TrainConfig) -> dict[str, list[int]]:
        layers, heads, dim = kv_shape(frozen)
        shape = [layers, heads, config.num_virtual_tokens, dim]
        return {"keys": shape, "values": list(shape)}

    def fresh(
        self, frozen: FrozenModel, config: TrainConfig, spec: TaskSpec, generator: torch.Generator
    ) -> PromptModule:
        assert isinstance(config, PrefixConfig)
        # Any init runs through the frozen model once: the prefix starts as that prompt's keys/values.
        embeddings = initial_vectors(frozen, config, spec, generator, config.num_virtual_tokens)
        with torch.no_grad():
            kv = compute_prompt_kvs(frozen, [embeddings])[0]
        keys, values = kv.keys.float().cpu(), kv.values.float().cpu()
        if config.reparameterize:
            return Prefix(keys, values, embeddings, config.reparam_hidden)
        return Prefix(keys, values)

    def restore(self, frozen: FrozenModel, artifact: Artifact) -> PromptModule:
        keys, values = artifact.tensor("keys", 4), artifact.tensor("values", 4)
        layers, heads, dim = kv_shape(frozen)
        if (keys.shape[0], keys.shape[1], keys.shape[3]) != (layers, heads, dim):
            raise ValueError(
                f"the stored prefix has shape {tuple(keys.shape)}; this model's cache is [{layers}, {heads}, n, {dim}]."
            )
        return Prefix(keys.float(), values.float())

    def build(
        self,
        frozen: FrozenModel,
        config: TrainConfig,
        spec: TaskSpec,
        generator: torch.Generator,
        init: Artifact | None = None,
    ) -> PromptModule:
        module = super().build(frozen, config, spec, generator, init)
        assert isinstance(config, PrefixConfig) and isinstance(module, Prefix)
        if init is None or not config.reparameterize:
            return module
        # Reparameterised from a stored prefix: its keys/values are the fixed start, the embeddings new.
        keys, values = (t.detach() for t in module.keys_values())
        embeddings = torch.randn(config.num_virtual_tokens, frozen.hidden_size, generator=generator) * 0.02
        return Prefix(keys, values, embeddings, config.reparam_hidden).to(frozen.device)


METHOD = register(PrefixMethod())
