"""The one forward: rows that each carry their own prompt (any method), for training, validation and serving.

Row b is laid out as keys [pad | cached prompt_b] (from batch_cache) and queries
[pad | row prefix | input | after | branch 1 | branch 2 ...], left-padded so that generation appends right after
the row's own part. Positions continue after the cached prompt; every branch starts where the shared part (row
prefix, input, after) ends, and sees it but not its sibling branches. A branch is a target fed for teacher
forcing: the rest of a multi-token label when classifying, the output when training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from app.engine.core.attention import attention_mask
from app.engine.core.model import FrozenModel
from app.engine.core.prompt_cache import batch_cache
from app.engine.core.segments import ServedPrompt


@dataclass(frozen=True)
class Query:
    """What a row feeds: its input ids, then branches that see the input but not each other."""

    input_ids: Sequence[int]
    branches: tuple[Sequence[int], ...] = ()

    @property
    def tokens(self) -> int:
        """Token positions of the row (input and branches), without what its prompt adds."""
        return len(self.input_ids) + sum(len(branch) for branch in self.branches)


@dataclass(frozen=True)
class Pass:
    """The result of forward_rows.

    hidden [B, W+1, H]: the body's output; its extra last slot holds each row's cached prompt's last state (read
    for rows whose own part is empty). last [B] long: the slot predicting the token after the row's shared part.
    branch_starts: per row, the slot of each branch's first token. key_real [B, P+W] bool: False on pads.
    """

    hidden: torch.Tensor
    cache: DynamicCache
    key_real: torch.Tensor
    last: torch.Tensor
    branch_starts: list[list[int]]


def _row_embeds(frozen: FrozenModel, served: ServedPrompt, query: Query, pad: int, plain: torch.Tensor) -> torch.Tensor:
    """One row's query embeddings [W, H]: the plain token embeddings unless its prompt adds or maps parts."""
    if served.row_prefix is None and served.map_embeds is None and served.after is None:
        return plain
    ids = [*query.input_ids, *(token for branch in query.branches for token in branch)]
    n_input = len(query.input_ids)
    tokens = frozen.embed(torch.tensor(ids, dtype=torch.long)) if ids else plain[:0]
    mapped = served.map_embeds(tokens) if served.map_embeds is not None and ids else tokens
    parts = [plain[:pad]]
    if served.row_prefix is not None:
        parts.append(served.row_prefix(tokens[:n_input]).to(frozen.dtype))
    parts.append(mapped[:n_input])
    if served.after is not None:
        parts.append(served.after)
    parts.append(mapped[n_input:])
    return torch.cat(parts)


def forward_rows(frozen: FrozenModel, served: Sequence[ServedPrompt], queries: Sequence[Query]) -> Pass:
    """Run B rows, each over its own prompt, in one pass (differentiable when gradients are on)."""
    device = frozen.device
    shared = [s.extra_width + len(q.input_ids) for s, q in zip(served, queries, strict=True)]
    widths = [s.extra_width + q.tokens for s, q in zip(served, queries, strict=True)]
    width = max(widths)
    ids = torch.zeros(len(queries), width, dtype=torch.long)
    segments = torch.full((len(queries), width), -1, dtype=torch.long)  # -1 pad, 0 shared, k+1 branch k
    positions = torch.zeros(len(queries), width, dtype=torch.long)
    last: list[int] = []
    branch_starts: list[list[int]] = []
    for row, (prompt, query) in enumerate(zip(served, queries, strict=True)):
        start = width - widths[row]
        first_position = prompt.length
        # Token ids sit where the tokens are; the prompt's own slots (row prefix, after) hold 0 until replaced.
        at = start + prompt.row_prefix_length
        ids[row, at : at + len(query.input_ids)] = torch.tensor(list(query.input_ids), dtype=torch.long)
        end = start + shared[row]
        segments[row, start:end] = 0
        positions[row, start:end] = torch.arange(first_position, first_position + shared[row])
        last.append(end - 1 if shared[row] else width)
        starts = []
        for k, branch in enumerate(query.branches):
            starts.append(end)
            ids[row, end : end + len(branch)] = torch.tensor(list(branch), dtype=torch.long)
            segments[row, end : end + len(branch)] = k + 1
            positions[row, end : end + len(branch)] = torch.arange(
                first_position + shared[row], first_position + shared[row] + len(branch)
            )
            end += len(branch)
        branch_starts.append(starts)
    cache, prompt_real = batch_cache(frozen, [s.kv for s in served])
    segments, positions = segments.to(device), positions.to(device)
    key_real = torch.cat([prompt_real, segments >= 0], dim=1)
    prompt_last = torch.zeros(len(queries), 1, frozen.hidden_size, device=device, dtype=frozen.dtype)
    for row, prompt in enumerate(served):
        if shared[row] == 0:
            if prompt.kv is None or prompt.kv.last_hidden is None:
                raise ValueError(f"row {row} has no input tokens and its prompt gives no state to read; give an input.")
            prompt_last = prompt_last.index_copy(
                0, torch.tensor([row], device=device), prompt.kv.last_hidden[None, None]
            )
    last_slots = torch.tensor(last, device=device)
    if width == 0:
        return Pass(prompt_last, cache, key_real, last_slots, branch_starts)
    plain = frozen.embed(ids)
    embeds = torch.stack(
        [
            _row_embeds(frozen, prompt, query, width - widths[row], plain[row])
            for row, (prompt, query) in enumerate(zip(served, queries, strict=True))
        ]
    )
    span = prompt_real.shape[1]
    key_segments = torch.cat([torch.zeros_like(prompt_real, dtype=torch.long), segments], dim=1)
    causal = torch.arange(span + width, device=device) <= span + torch.arange(width, device=device).unsqueeze(1)
    # A query sees real keys at or before it that are prompt, shared part, or its own branch (never a sibling).
    same = (key_segments.unsqueeze(1) == 0) | (key_segments.unsqueeze(1) == segments.unsqueeze(2))
    allowed = key_real.unsqueeze(1) & causal & same
    # No query row is fully masked since every real query sees itself (pad queries see nothing real and are
    # never read). A cached prompt's real keys sit at positions 0..n_b-1, in slot order.
    key_positions = torch.cat([prompt_real.long().cumsum(dim=1) - 1, positions], dim=1)
    mask = attention_mask(frozen, allowed, positions, key_positions)
    output = frozen.model.base_model(
        inputs_embeds=embeds, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True
    )
    hidden = torch.cat([output.last_hidden_state, prompt_last], dim=1)
    return Pass(hidden, output.cache, key_real, last_slots, branch_starts)


def score_targets(
    frozen: FrozenModel,
    served: Sequence[ServedPrompt],
    inputs: Sequence[Sequence[int]],
    targets: Sequence[Sequence[Sequence[int]]],
) -> list[torch.Tensor]:
    """Total log-probability of each row's target sequences after its input: one float32 tensor [K_b] per row.

    A target's first token is read at the input's last state; the rest is fed as a branch of the same pass, so
    the input runs once however many targets (labels) a row scores. A row whose prompt has a label head feeds no
    branches: its K targets are its task's labels, scored by the head over the input's last state. Differentiable
    (training uses it).
    """
    for row, row_targets in enumerate(targets):
        if any(not target for target in row_targets):
            raise ValueError(f"row {row} has an empty target.")
        head = served[row].head
        if head is not None and len(row_targets) != head.labels:
            raise ValueError(
                f"row {row}'s prompt has a label head over {head.labels} labels; the row scores {len(row_targets)}."
            )
    queries = [
        Query(ids, () if prompt.head is not None else tuple(target[:-1] for target in row_targets if len(target) > 1))
        for prompt, ids, row_targets in zip(served, inputs, targets, strict=True)
    ]
    result = forward_rows(frozen, served, queries)
    slots: dict[tuple[int, int], int] = {}  # (row, hidden slot) -> row of `logits`: each state read once
    reads: list[tuple[int, int, int]] = []  # (state, target token, target number)
    count = 0
    for row, row_targets in enumerate(targets):
        if served[row].head is not None:
            continue
        source = int(result.last[row])
        starts = iter(result.branch_starts[row])
        for target in row_targets:
            branch = next(starts) if len(target) > 1 else -1
            for step, token in enumerate(target):
                # Token `step` is predicted by the input's last state, then by the branch's previous token.
                at = source if step == 0 else branch + step - 1
                reads.append((slots.setdefault((row, at), len(slots)), token, count))
            count += 1
    worded: list[torch.Tensor] = []
    if reads:
        where = torch.tensor(list(slots), device=frozen.device)
        logits = frozen.logits(result.hidden[where[:, 0], where[:, 1]]).float()
        # log p(token) = logit - logsumexp: no second [N, vocab] tensor for a full log_softmax.
        normalizers = torch.logsumexp(logits, dim=-1)
        state_index, target_ids, target_index = torch.tensor(reads, device=frozen.device).unbind(1)
        picked = logits[state_index, target_ids] - normalizers[state_index]
        totals = torch.zeros(count, device=frozen.device).index_add(0, target_index, picked)
        worded = list(totals.split([len(t) for row, t in enumerate(targets) if served[row].head is None]))
    worded.reverse()
    scores = []
    for row, prompt in enumerate(served):
        if prompt.head is None:
            scores.append(worded.pop())
        else:
            scores.append(prompt.head.log_probs(result.hidden[row, result.last[row]][None])[0])
    return scores


def target_logits(
    frozen: FrozenModel,
    served: Sequence[ServedPrompt],
    inputs: Sequence[Sequence[int]],
    targets: Sequence[Sequence[int]],
) -> list[torch.Tensor]:
    """Float32 logits [len(target_b), vocab] predicting each token of row b's target after its input (teacher
    forcing: the target is fed as a branch, its first token read at the input's last state). Differentiable."""
    if any(not target for target in targets):
        raise ValueError("every row needs a non-empty target.")
    queries = [
        Query(ids, (target[:-1],) if len(target) > 1 else ()) for ids, target in zip(inputs, targets, strict=True)
    ]
    result = forward_rows(frozen, served, queries)
    where: list[tuple[int, int]] = []
    for row, target in enumerate(targets):
        branch = result.branch_starts[row][0] if len(target) > 1 else -1
        where.extend((row, int(result.last[row]) if step == 0 else branch + step - 1) for step in range(len(target)))
    at = torch.tensor(where, device=frozen.device)
    logits = frozen.logits(result.hidden[at[:, 0], at[:, 1]]).float()
    return list(logits.split([len(target) for target in targets]))
