"""A soft prompt's keys and values at every layer, computed once, and a forward of rows over several of them."""

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
    return compute_prompt_kvs(frozen, [prompt])[0]


@torch.no_grad()
def compute_prompt_kvs(frozen: FrozenModel, prompts: Sequence[torch.Tensor]) -> list[PromptKV]:
    """Keys/values of several prompts [n_i, hidden] from one right-padded forward (one launch, not B)."""
    for prompt in prompts:
        if prompt.dim() != 2 or prompt.shape[0] < 1 or prompt.shape[1] != frozen.hidden_size:
            raise ValueError(f"prompt shape {tuple(prompt.shape)} is not [n >= 1, {frozen.hidden_size}].")
        if prompt.shape[0] > frozen.max_positions:
            raise ValueError(f"a {prompt.shape[0]}-vector prompt exceeds the model's {frozen.max_positions} positions.")
    lengths = [int(prompt.shape[0]) for prompt in prompts]
    width = max(lengths)
    embeds = torch.zeros(len(prompts), width, frozen.hidden_size, device=frozen.device, dtype=frozen.dtype)
    for row, prompt in enumerate(prompts):
        embeds[row, : lengths[row]] = prompt.to(device=frozen.device, dtype=frozen.dtype)
    # Right padding leaves every real position at 0..n_i-1 (the default positions) and, attention being causal,
    # its keys untouched by the pads after it; the mask only hides the pads from the pads' own queries.
    mask = None
    if min(lengths) < width:
        mask = (torch.arange(width) < torch.tensor(lengths).unsqueeze(1)).long().to(frozen.device)
    output = frozen.model.base_model(inputs_embeds=embeds, attention_mask=mask, use_cache=True)
    layers = _full_attention_layers(output.cache)
    keys = torch.stack([layer.keys for layer in layers if layer.keys is not None], dim=1)
    values = torch.stack([layer.values for layer in layers if layer.values is not None], dim=1)
    if keys.shape[1] != len(layers):
        raise ValueError("the model left some cache layers empty (KV sharing?); prompt caching cannot use it.")
    # Clones, so that no pooled prompt keeps the whole batch's storage alive.
    return [
        PromptKV(
            keys=keys[row, :, :, :length].clone(),
            values=values[row, :, :, :length].clone(),
            last_hidden=output.last_hidden_state[row, length - 1].clone(),
        )
        for row, length in enumerate(lengths)
    ]


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


@dataclass(frozen=True)
class Query:
    """What a row feeds after its prompt: its input ids, then branches that see the input but not each other."""

    input_ids: list[int]
    branches: tuple[list[int], ...] = ()

    @property
    def width(self) -> int:
        """Query positions the row occupies."""
        return len(self.input_ids) + sum(len(branch) for branch in self.branches)

    def last_input_slot(self, width: int) -> int:
        """Index into forward_cached's hidden [B, Q+1, H] of the state that predicts the token after the input."""
        if not self.input_ids:
            return width  # the prompt's own last state
        return width - self.width + len(self.input_ids) - 1


def forward_cached(
    frozen: FrozenModel, kvs: list[PromptKV], queries: list[Query]
) -> tuple[torch.Tensor, DynamicCache, torch.Tensor]:
    """Run B rows' queries over their cached prompts.

    Layout of row b: keys [pad | prompt_b] (P slots, from batch_cache) then queries [pad | input_b | branches_b]
    (Q slots, left-padded so generation appends right after the input). Returns hidden [B, Q+1, H] whose extra
    last slot holds each prompt's own last hidden state (read for rows without input), the cache, and
    key_real [B, P+Q] bool (False on pads).
    """
    device = frozen.device
    width = max(query.width for query in queries)
    ids = torch.zeros(len(queries), width, dtype=torch.long)
    segments = torch.full((len(queries), width), -1, dtype=torch.long)  # -1 pad, 0 input, k+1 branch k
    positions = torch.zeros(len(queries), width, dtype=torch.long)
    for row, (kv, query) in enumerate(zip(kvs, queries, strict=True)):
        start = width - query.width
        n_input = len(query.input_ids)
        # Positions continue after the prompt; every branch starts where the input ends.
        parts = [(query.input_ids, 0, kv.length)]
        parts += [(branch, k + 1, kv.length + n_input) for k, branch in enumerate(query.branches)]
        for tokens, segment, first_position in parts:
            end = start + len(tokens)
            ids[row, start:end] = torch.tensor(tokens, dtype=torch.long)
            segments[row, start:end] = segment
            positions[row, start:end] = torch.arange(first_position, first_position + len(tokens))
            start = end
    cache, prompt_real = batch_cache(frozen, kvs)
    segments, positions = segments.to(device), positions.to(device)
    key_real = torch.cat([prompt_real, segments >= 0], dim=1)
    prompt_last = torch.stack([kv.last_hidden for kv in kvs]).unsqueeze(1)
    if width == 0:
        return prompt_last, cache, key_real
    span = prompt_real.shape[1]
    key_segments = torch.cat([torch.zeros_like(prompt_real, dtype=torch.long), segments], dim=1)
    causal = torch.arange(span + width, device=device) <= span + torch.arange(width, device=device).unsqueeze(1)
    # A query sees real keys at or before it that are prompt, input, or its own branch (never a sibling branch).
    same = (key_segments.unsqueeze(1) == 0) | (key_segments.unsqueeze(1) == segments.unsqueeze(2))
    allowed = key_real.unsqueeze(1) & causal & same
    # An additive float mask works for both the eager and the SDPA attention paths; no row is fully masked
    # since every prompt has at least one real position.
    mask = torch.zeros(allowed.shape, dtype=frozen.dtype, device=device)
    mask = mask.masked_fill(~allowed, torch.finfo(frozen.dtype).min).unsqueeze(1)
    output = frozen.model.base_model(
        inputs_embeds=frozen.embed(ids),
        attention_mask=mask,
        position_ids=positions,
        cache=cache,
        use_cache=True,
    )
    return torch.cat([output.last_hidden_state, prompt_last], dim=1), output.cache, key_real
