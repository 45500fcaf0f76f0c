"""One forward pass over rows that each carry their own soft prompt (or none): batching, loss, scores."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from app.engine.model import FrozenModel
from app.engine.text import EncodedExample


@dataclass(frozen=True)
class Batch:
    """Left-padded rows [prompt | input | target], L = the longest row.

    inputs_embeds [B, L, H] (model dtype), attention_mask [B, L] long, position_ids [B, L] long,
    target_mask [B, L] bool (True where the NEXT token is a target), target_ids [B, L] long (that next
    token where target_mask, 0 elsewhere). Left padding puts every row's last token at position L-1.
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    target_mask: torch.Tensor
    target_ids: torch.Tensor

    @property
    def size(self) -> int:
        """Rows in the batch."""
        return int(self.inputs_embeds.shape[0])


def row_length(prompt: torch.Tensor | None, example: EncodedExample) -> int:
    """Positions one row occupies: prompt vectors, input tokens and target tokens."""
    virtual = 0 if prompt is None else int(prompt.shape[0])
    return virtual + len(example.input_ids) + len(example.target_ids)


def build_batch(frozen: FrozenModel, prompts: list[torch.Tensor | None], examples: list[EncodedExample]) -> Batch:
    """Left-pad rows with per-row prompts [n_i, H] (any length, or None) into one batch; prompts keep grad."""
    if len(prompts) != len(examples):
        raise ValueError(f"got {len(prompts)} prompts for {len(examples)} examples.")
    if not examples:
        raise ValueError("cannot build an empty batch.")
    lengths = [row_length(prompt, example) for prompt, example in zip(prompts, examples, strict=True)]
    width = max(lengths)
    if width > frozen.max_positions:
        row = lengths.index(width)
        raise ValueError(f"row {row} needs {width} positions but the model's context holds {frozen.max_positions}.")
    device, dtype, hidden = frozen.device, frozen.dtype, frozen.hidden_size
    rows: list[torch.Tensor] = []
    target_mask = torch.zeros(len(examples), width, dtype=torch.bool)
    target_ids = torch.zeros(len(examples), width, dtype=torch.long)
    for index, (prompt, example, length) in enumerate(zip(prompts, examples, lengths, strict=True)):
        if length == 0:
            raise ValueError(f"row {index} is empty: no prompt, no input, no target.")
        parts = [torch.zeros(width - length, hidden, device=device, dtype=dtype)]
        if prompt is not None:
            if prompt.dim() != 2 or prompt.shape[1] != hidden:
                raise ValueError(f"row {index}: prompt shape {tuple(prompt.shape)} is not [n, {hidden}].")
            parts.append(prompt.to(device=device, dtype=dtype))  # .to keeps the graph back to the prompt
        tokens = example.input_ids + example.target_ids
        if tokens:
            parts.append(frozen.embed(torch.tensor(tokens, dtype=torch.long)))
        rows.append(torch.cat(parts))
        n_targets = len(example.target_ids)
        if n_targets:
            if length == n_targets:
                raise ValueError(f"row {index}: a target needs at least one prompt or input position before it.")
            # The logits at position t predict token t+1, so the targets are read one position early.
            target_mask[index, width - n_targets - 1 : width - 1] = True
            target_ids[index, width - n_targets - 1 : width - 1] = torch.tensor(example.target_ids)
    pads = torch.tensor([width - length for length in lengths]).unsqueeze(1)
    attention_mask = (torch.arange(width).unsqueeze(0) >= pads).long()
    # Positions count real tokens only, so a padded row sees exactly the positions it would see alone.
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return Batch(
        inputs_embeds=torch.stack(rows),
        attention_mask=attention_mask.to(device),
        position_ids=position_ids.to(device),
        target_mask=target_mask.to(device),
        target_ids=target_ids.to(device),
    )


def hidden_states(frozen: FrozenModel, batch: Batch) -> torch.Tensor:
    """The decoder body's last hidden states [B, L, H], without the LM head."""
    # base_model is the body for every causal LM (Llama: .model, GPT-2: .transformer); projecting onto the
    # vocabulary only where a score is needed avoids a [B, L, vocab] tensor per forward.
    output = frozen.model.base_model(
        inputs_embeds=batch.inputs_embeds,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
    )
    return output.last_hidden_state


def _target_logits(frozen: FrozenModel, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 logits [N, vocab] at the N target positions and the ids [N] they should predict."""
    if not bool(batch.target_mask.any()):
        raise ValueError("the batch holds no target tokens to score.")
    hidden = hidden_states(frozen, batch)[batch.target_mask]
    return frozen.logits(hidden).float(), batch.target_ids[batch.target_mask]


def lm_loss(frozen: FrozenModel, prompts: list[torch.Tensor | None], examples: list[EncodedExample]) -> torch.Tensor:
    """Mean cross-entropy over every target token of the batch (a scalar, differentiable w.r.t. prompts)."""
    logits, ids = _target_logits(frozen, build_batch(frozen, prompts, examples))
    return F.cross_entropy(logits, ids)


def target_logprobs(
    frozen: FrozenModel, prompts: list[torch.Tensor | None], examples: list[EncodedExample]
) -> torch.Tensor:
    """Sum of log-probabilities of each row's target tokens [B] float32 (0 for rows without target)."""
    batch = build_batch(frozen, prompts, examples)
    logits, ids = _target_logits(frozen, batch)
    token_logprobs = torch.log_softmax(logits, dim=-1).gather(1, ids.unsqueeze(1)).squeeze(1)
    rows = batch.target_mask.nonzero(as_tuple=True)[0]
    totals = torch.zeros(batch.size, device=token_logprobs.device, dtype=torch.float32)
    return totals.index_add(0, rows, token_logprobs)


def count_target_tokens(examples: list[EncodedExample]) -> int:
    """How many target tokens a list of examples holds (to average summed log-probs per token)."""
    return sum(len(example.target_ids) for example in examples)
