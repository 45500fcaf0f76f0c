"""A soft prompt's keys and values at every layer, computed once, and a batch cache assembled from several."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from app.engine.model import FrozenModel


@dataclass(frozen=True)
class PromptKV:
    """Keys and values of one prompt at positions 0..n-1, stacked over layers.

    keys, values: [layers, kv_heads, n, head_dim] on the model device and dtype. Llama keys are stored after
    RoPE at positions 0..n-1, which stays right because a prompt always sits at the start of its row.
    last_hidden: [hidden], the body's output at position n-1: it predicts the first token of a row whose
    input encodes to nothing, a row that would otherwise have no query position to read.
    """

    keys: torch.Tensor
    values: torch.Tensor
    last_hidden: torch.Tensor

    @property
    def length(self) -> int:
        """Number of prompt positions n."""
        return int(self.keys.shape[2])

    @property
    def nbytes(self) -> int:
        """Device memory the keys and values hold."""
        return int(self.keys.nbytes + self.values.nbytes + self.last_hidden.nbytes)


def _full_attention_layers(cache: DynamicCache) -> list[DynamicLayer]:
    """The cache's layers, refusing sliding-window or other layer kinds whose stored keys are not the whole past."""
    layers = list(cache.layers)
    odd = sorted({type(layer).__name__ for layer in layers if type(layer) is not DynamicLayer})
    if odd:
        raise ValueError(f"prompt caching needs full-attention layers; this model has {', '.join(odd)}.")
    return layers  # type: ignore[return-value]


@torch.no_grad()
def compute_prompt_kv(frozen: FrozenModel, prompt: torch.Tensor) -> PromptKV:
    """Run the prompt [n, hidden] alone through the body once and keep every layer's keys and values."""
    if prompt.dim() != 2 or prompt.shape[0] < 1 or prompt.shape[1] != frozen.hidden_size:
        raise ValueError(f"prompt shape {tuple(prompt.shape)} is not [n >= 1, {frozen.hidden_size}].")
    if prompt.shape[0] > frozen.max_positions:
        raise ValueError(f"a {prompt.shape[0]}-vector prompt exceeds the model's {frozen.max_positions} positions.")
    embeds = prompt.to(device=frozen.device, dtype=frozen.dtype).unsqueeze(0)
    # Default positions are 0..n-1 and no mask is needed: a lone row with no padding.
    output = frozen.model.base_model(inputs_embeds=embeds, use_cache=True)
    layers = _full_attention_layers(output.cache)
    keys = torch.stack([layer.keys[0] for layer in layers if layer.keys is not None])
    values = torch.stack([layer.values[0] for layer in layers if layer.values is not None])
    if keys.shape[0] != len(layers):
        raise ValueError("the model left some cache layers empty (KV sharing?); prompt caching cannot use it.")
    return PromptKV(keys=keys, values=values, last_hidden=output.last_hidden_state[0, -1])


def batch_cache(frozen: FrozenModel, prompts: Sequence[PromptKV]) -> tuple[DynamicCache, torch.Tensor]:
    """A DynamicCache over B prompts left-padded to the longest, and which of its positions are real.

    Row b's prompt fills the last n_b of the P = max n_b slots (keys [B, kv_heads, P, head_dim] per layer); the
    returned mask [B, P] bool is False on the pads, which the caller must mask out of attention.
    """
    if not prompts:
        raise ValueError("cannot build a cache for an empty batch.")
    width = max(kv.length for kv in prompts)
    first = prompts[0].keys
    shape = (first.shape[0], len(prompts), first.shape[1], width, first.shape[3])
    keys = first.new_zeros(shape)
    values = first.new_zeros(shape)
    real = torch.zeros(len(prompts), width, dtype=torch.bool, device=frozen.device)
    for row, kv in enumerate(prompts):
        # One copy per row across all layers, thanks to the stacked layout.
        keys[:, row, :, width - kv.length :] = kv.keys
        values[:, row, :, width - kv.length :] = kv.values
        real[row, width - kv.length :] = True
    cache = DynamicCache()
    for layer in range(shape[0]):
        cache.update(keys[layer], values[layer], layer)
    return cache, real
