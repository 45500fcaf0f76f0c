"""A prompt's keys and values at every layer: computed once per prompt version, or given, then batched as a cache."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from app.engine.core.attention import causal_mask
from app.engine.core.model import FrozenModel


@dataclass(frozen=True)
class PromptKV:
    """Keys and values of one prompt at positions 0..n-1, stacked over layers.

    keys, values: [layers, kv_heads, n, head_dim] on the model device and dtype. Llama keys are stored after
    RoPE at positions 0..n-1, which stays right because a prompt always sits at the start of its row.
    last_hidden: [hidden], the body's output at position n-1: it predicts the first token of a row whose
    input encodes to nothing, a row that would otherwise have no query position to read (None for keys/values
    given directly, e.g. learned prefixes: such rows are refused). The tensors carry gradients while training.
    """

    keys: torch.Tensor
    values: torch.Tensor
    last_hidden: torch.Tensor | None

    @property
    def length(self) -> int:
        """Number of prompt positions n."""
        return int(self.keys.shape[2])

    @property
    def nbytes(self) -> int:
        """Device memory the keys and values hold."""
        last = 0 if self.last_hidden is None else self.last_hidden.nbytes
        return int(self.keys.nbytes + self.values.nbytes + last)


def full_attention_layers(cache: DynamicCache) -> list[DynamicLayer]:
    """The cache's layers, refusing sliding-window or other layer kinds whose stored keys are not the whole past.

    The engine makes every cache itself (a plain DynamicCache), so a model's sliding layers keep their whole past
    too and their window is applied by the mask (core/attention.py).
    """
    layers = list(cache.layers)
    odd = sorted({type(layer).__name__ for layer in layers if type(layer) is not DynamicLayer})
    if odd:
        raise ValueError(f"prompt caching needs full-attention layers; this model has {', '.join(odd)}.")
    return layers  # type: ignore[return-value]


def compute_prompt_kv(frozen: FrozenModel, prompt: torch.Tensor) -> PromptKV:
    """Run the prompt [n, hidden] alone through the body once and keep every layer's keys and values."""
    return compute_prompt_kvs(frozen, [prompt])[0]


def compute_prompt_kvs(frozen: FrozenModel, prompts: Sequence[torch.Tensor]) -> list[PromptKV]:
    """Keys/values of several prompts [n_i, hidden] from one right-padded forward (one launch, not B).

    Differentiable: training runs it with gradients on (once per step for the batch's one prompt), serving under
    no_grad (once per prompt version).
    """
    for prompt in prompts:
        if prompt.dim() != 2 or prompt.shape[0] < 1 or prompt.shape[1] != frozen.hidden_size:
            raise ValueError(f"prompt shape {tuple(prompt.shape)} is not [n >= 1, {frozen.hidden_size}].")
        if prompt.shape[0] > frozen.max_positions:
            raise ValueError(f"a {prompt.shape[0]}-vector prompt exceeds the model's {frozen.max_positions} positions.")
    lengths = [int(prompt.shape[0]) for prompt in prompts]
    width = max(lengths)
    embeds = torch.stack(
        [
            torch.cat([prompt.to(device=frozen.device, dtype=frozen.dtype), pad_rows(frozen, width - length)])
            for prompt, length in zip(prompts, lengths, strict=True)
        ]
    )
    # Right padding leaves every real position at 0..n_i-1 (the default positions) and, attention being causal,
    # its keys untouched by the pads after it; the mask only hides the pads from the pads' own queries.
    positions = torch.arange(width, device=frozen.device).expand(len(prompts), width)
    # A cache made here keeps every layer's whole past; the body's own would be shorter on sliding layers.
    output = frozen.model.base_model(
        inputs_embeds=embeds,
        attention_mask=causal_mask(frozen, lengths),
        position_ids=positions,
        cache=DynamicCache(),
        use_cache=True,
    )
    return split_cache(output.cache, output.last_hidden_state, lengths)


def pad_rows(frozen: FrozenModel, count: int) -> torch.Tensor:
    """count zero vectors [count, hidden] in the model's dtype and device (padding)."""
    return torch.zeros(count, frozen.hidden_size, device=frozen.device, dtype=frozen.dtype)


def split_cache(cache: DynamicCache, last_hidden: torch.Tensor, lengths: list[int]) -> list[PromptKV]:
    """One PromptKV per right-padded row of a cache filled by a prompts-only pass (last_hidden [B, W, H])."""
    layers = full_attention_layers(cache)
    keys = torch.stack([layer.keys for layer in layers if layer.keys is not None], dim=1)
    values = torch.stack([layer.values for layer in layers if layer.values is not None], dim=1)
    if keys.shape[1] != len(layers):
        raise ValueError("the model left some cache layers empty (KV sharing?); prompt caching cannot use it.")
    # Clones, so that no pooled prompt keeps the whole batch's storage alive.
    return [
        PromptKV(
            keys=keys[row, :, :, :length].clone(),
            values=values[row, :, :, :length].clone(),
            last_hidden=last_hidden[row, length - 1].clone(),
        )
        for row, length in enumerate(lengths)
    ]


def kv_shape(frozen: FrozenModel) -> tuple[int, int, int]:
    """(layers, kv_heads, head_dim) of the model's attention cache."""
    config = frozen.model.config
    layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    heads = getattr(config, "num_attention_heads", None) or config.n_head
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or frozen.hidden_size // heads
    return int(layers), int(kv_heads), int(head_dim)


def batch_cache(frozen: FrozenModel, prompts: Sequence[PromptKV | None]) -> tuple[DynamicCache, torch.Tensor]:
    """A DynamicCache over B prompts left-padded to the longest, and which of its positions are real.

    Row b's prompt fills the last n_b of the P = max n_b slots (keys [B, kv_heads, P, head_dim] per layer; a row
    without cached prompt (None) has P pads); the returned mask [B, P] bool is False on the pads, which the
    caller must mask out of attention. Gradients flow back to the prompts' keys/values.
    """
    if not prompts:
        raise ValueError("cannot build a cache for an empty batch.")
    width = max((kv.length for kv in prompts if kv is not None), default=0)
    layers, kv_heads, head_dim = kv_shape(frozen)
    real = torch.zeros(len(prompts), width, dtype=torch.bool, device=frozen.device)
    cache = DynamicCache()
    if width == 0:
        return cache, real
    pad = torch.zeros(layers, kv_heads, width, head_dim, device=frozen.device, dtype=frozen.dtype)
    keys, values = [], []
    for row, kv in enumerate(prompts):
        length = 0 if kv is None else kv.length
        real[row, width - length :] = True
        if kv is None:
            keys.append(pad)
            values.append(pad)
            continue
        # Learned prefixes train in float32 whatever the model runs in.
        row_keys, row_values = kv.keys.to(frozen.dtype), kv.values.to(frozen.dtype)
        if length == width:
            keys.append(row_keys)
            values.append(row_values)
        else:
            keys.append(torch.cat([pad[:, :, : width - length], row_keys], dim=2))
            values.append(torch.cat([pad[:, :, : width - length], row_values], dim=2))
    # [layers, B, kv_heads, P, head_dim]: one stack per batch, then a view per layer.
    stacked_keys, stacked_values = torch.stack(keys, dim=1), torch.stack(values, dim=1)
    if stacked_keys.shape[0] != layers or stacked_keys.shape[2:] != (kv_heads, width, head_dim):
        raise ValueError(f"cached keys of shape {tuple(keys[0].shape)} do not fit this model's attention.")
    for layer in range(layers):
        cache.update(stacked_keys[layer], stacked_values[layer], layer)
    return cache, real
