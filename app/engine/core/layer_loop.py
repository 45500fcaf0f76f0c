"""Deep prompts: a prompt's keys/values when its hidden states are replaced at chosen layers (an explicit loop).

The frozen body's own forward runs every layer on what the previous one produced; a deep prompt instead writes
learned vectors into the hidden states of the prompt positions at some layers. Hooks or flags on the shared model
would leak into other threads' passes, so this module calls the decoder layers itself, one after another, on the
prompt positions only (the prompt sits before the input and attention is causal, so those positions never depend
on the input: the result is cacheable per prompt version like a plain prompt's keys/values).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache

from app.engine.core.attention import causal_mask, layer_mask
from app.engine.core.model import FrozenModel
from app.engine.core.prompt_cache import PromptKV, split_cache


def decoder_layers(frozen: FrozenModel) -> int:
    """How many decoder layers the body runs (the valid layer indices are 0 .. this - 1)."""
    body: Any = frozen.model.base_model
    stack = getattr(body, "layers", None) or getattr(body, "h", None)
    if stack is None:
        raise ValueError(f"{type(body).__name__} exposes no list of decoder layers; deep prompts cannot use it.")
    return len(stack)


def _rotary(body: Any, hidden: torch.Tensor, positions: torch.Tensor, types: Sequence[str] | None) -> list[Any]:
    """Each layer's rotary (cos, sin): one for all, or one per layer type where types differ in RoPE (Gemma 3)."""
    if types is not None and "layer_type" in inspect.signature(body.rotary_emb.forward).parameters:
        per_type = {kind: body.rotary_emb(hidden, positions, kind) for kind in set(types)}
        return [per_type[kind] for kind in types]
    shared = body.rotary_emb(hidden, position_ids=positions)
    return [shared] * len(body.layers)


def overwrite_kvs(
    frozen: FrozenModel, prompts: Sequence[torch.Tensor], layers: Sequence[int], states: Sequence[torch.Tensor]
) -> list[PromptKV]:
    """Keys/values of B prompts of one length n whose hidden states are replaced at `layers`.

    prompts: B tensors [n, H], the input of layer 0 (position embeddings are added as for any embedding);
    states: B tensors [len(layers), n, H]: states[b][i] becomes the input of decoder layer layers[i] (>= 1) at
    the prompt positions. Differentiable: gradient reaches every replaced state through its own keys/values and,
    sideways, through what later positions read of them.
    """
    if not prompts:
        return []
    width = int(prompts[0].shape[0])
    if any(int(p.shape[0]) != width for p in prompts) or any(
        tuple(s.shape[:2]) != (len(layers), width) for s in states
    ):
        raise ValueError("overwrite_kvs needs prompts of one length and states [len(layers), n, hidden].")
    total = decoder_layers(frozen)
    bad = [layer for layer in layers if not 1 <= layer < total]
    if bad:
        raise ValueError(f"layers {bad} are out of range: this model's replaceable layers are 1..{total - 1}.")
    device, dtype = frozen.device, frozen.dtype
    hidden = torch.stack([p.to(device=device, dtype=dtype) for p in prompts])
    replaced = torch.stack([s.to(device=device, dtype=dtype) for s in states], dim=1) if layers else None
    slot = {layer: index for index, layer in enumerate(layers)}
    body: Any = frozen.model.base_model
    positions = torch.arange(width, device=device).unsqueeze(0).expand(len(prompts), width)
    mask = causal_mask(frozen, [width] * len(prompts))
    cache = DynamicCache()
    if hasattr(body, "rotary_emb") and hasattr(body, "layers") and hasattr(body, "norm"):  # Llama, Gemma families
        # The embeddings arrive as the body's input (an embedding scale, as Gemma's, is already in them).
        rotary = _rotary(body, hidden, positions, getattr(frozen.model.config, "layer_types", None))
        for index, layer in enumerate(body.layers[:total]):
            if replaced is not None and index in slot:
                hidden = replaced[slot[index]]
            hidden = layer(
                hidden,
                attention_mask=layer_mask(frozen, mask, index),
                position_embeddings=rotary[index],
                position_ids=positions,
                cache=cache,
                use_cache=True,
            )
        last = body.norm(hidden)
    elif hasattr(body, "h") and hasattr(body, "wpe") and hasattr(body, "ln_f"):  # GPT-2 family
        hidden = hidden + body.wpe(positions)
        for index, block in enumerate(body.h):
            if replaced is not None and index in slot:
                hidden = replaced[slot[index]]
            hidden = block(hidden, cache, layer_mask(frozen, mask, index), use_cache=True, position_ids=positions)
        last = body.ln_f(hidden)
    else:
        raise ValueError(f"deep prompts support Llama-, Gemma- and GPT-2-style decoders, not {type(body).__name__}.")
    return split_cache(cache, last, [width] * len(prompts))


def layer_inputs(frozen: FrozenModel, prompt: torch.Tensor, layers: Sequence[int]) -> torch.Tensor:
    """[len(layers), n, H]: what decoder layer l receives at the prompt positions when nothing is replaced.

    Starting a deep prompt from these makes it, before any training, exactly the plain prompt `prompt`.
    """
    with torch.no_grad():
        output = frozen.model.base_model(
            inputs_embeds=prompt.to(device=frozen.device, dtype=frozen.dtype).unsqueeze(0), output_hidden_states=True
        )
    # hidden_states[l] is the input of layer l (hidden_states[0] with position embeddings added, never used here).
    return torch.stack([output.hidden_states[layer][0] for layer in layers]).float().cpu()
