"""Which keys each query may see, as the additive masks a pass hands the frozen body.

Every pass of the engine builds its own mask (rows of different prompts and pads side by side), so the body's
own mask logic never runs, and whatever that logic would add must be added here: for models with sliding-window
attention layers (Gemma 2 and 3, Mistral), those layers see only keys fewer than `sliding_window` positions
before the query. Caches keep every key at every layer (a plain DynamicCache), so the window is a mask, not a
shorter cache, and a pooled prompt's keys are the same whatever row reads them.
"""

from __future__ import annotations

from typing import Any

import torch

from app.engine.core.model import FrozenModel

SLIDING = "sliding_attention"

Mask = torch.Tensor | dict[str, torch.Tensor]


def sliding_window(config: Any) -> int | None:
    """The window of the model's sliding-attention layers, or None when every layer attends to the whole past."""
    window = getattr(config, "sliding_window", None)
    if not window:
        return None
    types = getattr(config, "layer_types", None)
    if types is not None:
        return int(window) if SLIDING in types else None
    # Mistral-style configs without layer types: one window for every layer, unless switched off.
    return int(window) if getattr(config, "use_sliding_window", True) else None


def additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, Q, K] bool -> [B, 1, Q, K] additive mask: 0 where allowed, the dtype's minimum elsewhere.

    An additive float mask works for both the eager and the SDPA attention paths.
    """
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min).unsqueeze(1)


def attention_mask(
    frozen: FrozenModel, allowed: torch.Tensor, query_positions: torch.Tensor, key_positions: torch.Tensor
) -> Mask:
    """The mask argument of one pass of the body.

    allowed [B, Q, K] bool: what each query sees (causality, pads and branches already applied);
    query_positions [B, Q] and key_positions [B, K] long: the token positions of queries and keys (a key's value
    is not read where it is not allowed). Without sliding layers: one additive mask [B, 1, Q, K]. With them: a
    dict from layer type to its mask, the sliding type's also limited to keys within the window; the body then
    hands each layer the mask of its type (a model without layer types slides on every layer: one mask).
    """
    full = additive(allowed, frozen.dtype)
    config = frozen.model.config
    window = sliding_window(config)
    if window is None:
        return full
    near = (query_positions.unsqueeze(2) - key_positions.unsqueeze(1)) < window
    slid = additive(allowed & near, frozen.dtype)
    types = getattr(config, "layer_types", None)
    if types is None:
        return slid
    return {kind: slid if kind == SLIDING else full for kind in set(types)}


def layer_mask(frozen: FrozenModel, mask: Mask, layer: int) -> torch.Tensor:
    """The mask decoder layer `layer` reads, for passes that call the layers one by one."""
    if isinstance(mask, torch.Tensor):
        return mask
    return mask[frozen.model.config.layer_types[layer]]


def causal_mask(frozen: FrozenModel, lengths: list[int]) -> Mask:
    """The mask of right-padded rows at positions 0..n_b-1 (a prompts-only pass): causal, pads hidden."""
    width = max(lengths)
    device = frozen.device
    positions = torch.arange(width, device=device)
    real = positions < torch.tensor(lengths, device=device).unsqueeze(1)  # [B, W]
    causal = positions.unsqueeze(0) <= positions.unsqueeze(1)  # [Q, K]
    # A pad query sees itself, so no row of the softmax is empty (pads are never read).
    allowed = (causal & real.unsqueeze(1)) | torch.eye(width, dtype=torch.bool, device=device)
    expanded = positions.expand(len(lengths), width)
    return attention_mask(frozen, allowed, expanded, expanded)
