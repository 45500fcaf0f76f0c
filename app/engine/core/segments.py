"""The seam between prompt methods and the one forward: how a prompt version enters a pass.

Every method answers one question: for a row with input ids x, what does the frozen model see? A row is
  [cached keys/values of the input-independent prefix] + [a per-row prefix made from x] + [x's embeddings, maybe
  mapped] + [embeddings after the input] + [targets or label branches, mapped like x]
and each part may be absent. A method describes its prompt as `Segments` (tensors that carry gradients while
training); `resolve` turns the input-independent prefix into keys/values, in as few passes as possible for many
prompts at once, giving `ServedPrompt`s, which the prompt pool keeps and every forward reads. This module knows
no method by name: a new method only builds Segments.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from app.engine.core.layer_loop import overwrite_kvs
from app.engine.core.model import FrozenModel
from app.engine.core.prompt_cache import PromptKV, compute_prompt_kvs

RowModule = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class LabelHead:
    """A learned linear readout of a classification prompt (P-tuning v2): label k's score is weight[k] . h + bias[k],
    h the row's final hidden state after its input, instead of the log-probability of label k's words."""

    weight: torch.Tensor  # [K, H]
    bias: torch.Tensor  # [K]

    @property
    def labels(self) -> int:
        return int(self.weight.shape[0])

    def log_probs(self, states: torch.Tensor) -> torch.Tensor:
        """Log-probabilities over the K labels, float32 [N, K], of final hidden states [N, H] (differentiable)."""
        logits = torch.nn.functional.linear(states.float(), self.weight.float(), self.bias.float())
        return torch.log_softmax(logits, dim=-1)


@dataclass(frozen=True)
class Overwrite:
    """Hidden states at the prompt positions replaced at some layers: states [len(layers), n, H], layers >= 1."""

    layers: tuple[int, ...]
    states: torch.Tensor


@dataclass(frozen=True)
class Segments:
    """A prompt as its method produces it (differentiable while training).

    prefix: [n, H] embeddings before the input, run once per version (cacheable);
    overwrite: with prefix, states replacing the prefix positions' hidden states at chosen layers;
    kv: keys/values given directly (learned prefixes), instead of prefix;
    row_prefix: input embeddings [T, H] -> [k, H], a prompt made from each row's input (not cacheable);
    map_embeds: token embeddings [T, H] -> [T, H], applied to every token the row feeds (input, targets, decoded);
    after: [m, H] embeddings between the input and what follows it;
    head: a classification prompt's label head, read instead of the label words' log-probabilities;
    modules: the nn.Modules behind row_prefix/map_embeds (counted in the pool's bytes).
    """

    prefix: torch.Tensor | None = None
    overwrite: Overwrite | None = None
    kv: PromptKV | None = None
    row_prefix: RowModule | None = None
    row_prefix_length: int = 0
    map_embeds: RowModule | None = None
    after: torch.Tensor | None = None
    head: LabelHead | None = None
    modules: tuple[nn.Module, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.kv is not None and self.prefix is not None:
            raise ValueError("a prompt gives either prefix embeddings or keys/values, not both.")
        if self.overwrite is not None and self.prefix is None:
            raise ValueError("overwritten layers need the prefix embeddings they start from.")
        if (self.row_prefix is None) != (self.row_prefix_length == 0):
            raise ValueError("row_prefix and row_prefix_length go together.")


@dataclass(frozen=True)
class ServedPrompt:
    """A prompt ready for passes: its cached keys/values (or None) and its per-row parts."""

    kv: PromptKV | None
    row_prefix: RowModule | None = None
    row_prefix_length: int = 0
    map_embeds: RowModule | None = None
    after: torch.Tensor | None = None
    head: LabelHead | None = None
    modules: tuple[nn.Module, ...] = ()

    @property
    def length(self) -> int:
        """Cached positions before the row's own (0 without a cached prefix)."""
        return 0 if self.kv is None else self.kv.length

    @property
    def after_length(self) -> int:
        return 0 if self.after is None else int(self.after.shape[0])

    @property
    def extra_width(self) -> int:
        """Positions the prompt adds to a row's own segment (per-row prefix and the part after the input)."""
        return self.row_prefix_length + self.after_length

    @property
    def nbytes(self) -> int:
        """Device memory held: keys/values, the part after the input, the label head, the per-row modules'
        parameters."""
        size = 0 if self.kv is None else self.kv.nbytes
        size += 0 if self.after is None else self.after.nbytes
        size += 0 if self.head is None else self.head.weight.nbytes + self.head.bias.nbytes
        size += sum(p.nbytes for module in self.modules for p in module.parameters())
        return int(size)


def _chunks(indices: list[int], lengths: list[int], budget: int) -> list[list[int]]:
    """Indices (sorted by length) grouped so each group's count x longest length stays within budget."""
    groups: list[list[int]] = []
    for index in sorted(indices, key=lambda i: lengths[i]):
        if groups and (len(groups[-1]) + 1) * lengths[index] <= budget:
            groups[-1].append(index)
        else:
            groups.append([index])
    return groups


def resolve(frozen: FrozenModel, prompts: Sequence[Segments], *, max_batch_tokens: int = 4096) -> list[ServedPrompt]:
    """ServedPrompts of many prompts: plain prefixes in shared padded passes, deep ones per (length, layers).

    Gradients flow when enabled (training resolves its one prompt every step); serving calls it under no_grad.
    """
    kvs: list[PromptKV | None] = [segments.kv for segments in prompts]
    plain = [i for i, s in enumerate(prompts) if s.prefix is not None and s.overwrite is None]
    lengths = [0 if s.prefix is None else int(s.prefix.shape[0]) for s in prompts]
    for group in _chunks(plain, lengths, max_batch_tokens):
        computed = compute_prompt_kvs(frozen, [prompts[i].prefix for i in group])  # type: ignore[misc]
        for index, kv in zip(group, computed, strict=True):
            kvs[index] = kv
    deep: dict[tuple[int, tuple[int, ...]], list[int]] = {}
    for index, segments in enumerate(prompts):
        if segments.overwrite is not None:
            deep.setdefault((lengths[index], segments.overwrite.layers), []).append(index)
    for (_, layers), group in deep.items():
        computed = overwrite_kvs(
            frozen,
            [prompts[i].prefix for i in group],  # type: ignore[misc]
            layers,
            [prompts[i].overwrite.states for i in group],  # type: ignore[union-attr]
        )
        for index, kv in zip(group, computed, strict=True):
            kvs[index] = kv
    served = []
    for segments, resolved in zip(prompts, kvs, strict=True):
        after = segments.after
        if after is not None:
            after = after.to(device=frozen.device, dtype=frozen.dtype)
        head = segments.head
        if head is not None:  # kept in its own dtype: log_probs reads it in float32
            head = LabelHead(head.weight.to(frozen.device), head.bias.to(frozen.device))
        served.append(
            ServedPrompt(
                kv=resolved,
                row_prefix=segments.row_prefix,
                row_prefix_length=segments.row_prefix_length,
                map_embeds=segments.map_embeds,
                after=after,
                head=head,
                modules=segments.modules,
            )
        )
    return served
