"""Serving one task's prompt: label probabilities for classification, greedy decoding for generation."""

from __future__ import annotations

import torch

from app.engine.forward import build_batch, hidden_states, row_length, target_logprobs
from app.engine.model import FrozenModel
from app.engine.text import EncodedExample, TaskSpec, encode_example, label_token_ids, output_text, render


def token_budget(frozen: FrozenModel, num_virtual_tokens: int, example: EncodedExample, extra: int = 0) -> int:
    """Positions a row needs (prompt + input + target + extra, e.g. max_new_tokens); compare to max_positions."""
    del frozen  # kept in the signature so callers need not know which parts of the model a budget uses
    return num_virtual_tokens + len(example.input_ids) + len(example.target_ids) + extra


def _chunks(items: list, size: int) -> list[list]:
    if size < 1:
        raise ValueError(f"batch_size must be at least 1, got {size}.")
    return [items[start : start + size] for start in range(0, len(items), size)]


def _single_token_scores(
    frozen: FrozenModel,
    prompt: torch.Tensor | None,
    spec: TaskSpec,
    inputs: list[str],
    label_ids: list[int],
    batch_size: int,
) -> torch.Tensor:
    """Log-probs [N, K] of single-token labels: one forward per batch, LM head at the last position only."""
    scores = []
    for chunk in _chunks(inputs, batch_size):
        examples = [encode_example(frozen, spec, text, None) for text in chunk]
        batch = build_batch(frozen, [prompt] * len(examples), examples)
        # Left padding puts every row's last token at the last position.
        last = hidden_states(frozen, batch)[:, -1]
        logprobs = torch.log_softmax(frozen.logits(last).float(), dim=-1)
        scores.append(logprobs[:, label_ids])
    return torch.cat(scores)


def _sequence_scores(
    frozen: FrozenModel, prompt: torch.Tensor | None, spec: TaskSpec, inputs: list[str], batch_size: int
) -> torch.Tensor:
    """Total log-probs [N, K] of multi-token labels: every (input, label) pair scored as a target."""
    pairs = [encode_example(frozen, spec, text, label) for text in inputs for label in spec.labels]
    totals = [target_logprobs(frozen, [prompt] * len(chunk), chunk) for chunk in _chunks(pairs, batch_size)]
    return torch.cat(totals).view(len(inputs), len(spec.labels))


@torch.no_grad()
def classify(
    frozen: FrozenModel, prompt: torch.Tensor | None, spec: TaskSpec, inputs: list[str], *, batch_size: int = 16
) -> list[dict[str, float]]:
    """Probabilities over spec.labels for each input (softmax of each label's total log-prob), inputs order."""
    if spec.kind != "classification":
        raise ValueError(f"classify needs a classification task, this one is {spec.kind}.")
    if not inputs:
        return []
    labels = label_token_ids(frozen, spec)
    empty = [label for label, ids in zip(spec.labels, labels, strict=True) if not ids]
    if empty:
        raise ValueError(f"labels {empty} encode to no tokens.")
    firsts = [ids[0] for ids in labels]
    if all(len(ids) == 1 for ids in labels) and len(set(firsts)) == len(firsts):
        scores = _single_token_scores(frozen, prompt, spec, inputs, firsts, batch_size)
    else:
        scores = _sequence_scores(frozen, prompt, spec, inputs, batch_size)
    probabilities = torch.softmax(scores, dim=-1).tolist()
    return [dict(zip(spec.labels, row, strict=True)) for row in probabilities]


def _cut_at_stop(text: str, stop: list[str]) -> str | None:
    """The text before the earliest stop string, or None when no stop string occurs."""
    hits = [text.find(marker) for marker in stop if marker and marker in text]
    return text[: min(hits)] if hits else None


def _generate_batch(
    frozen: FrozenModel,
    prompt: torch.Tensor | None,
    spec: TaskSpec,
    inputs: list[str],
    max_new_tokens: int,
    stop: list[str],
) -> list[str]:
    """Greedy decoding of one batch with the KV cache; rows finish independently."""
    examples = [encode_example(frozen, spec, text, None) for text in inputs]
    rendered = [render(spec.template, text) for text in inputs]
    # Never run past the context: a row near the limit gets fewer new tokens.
    budgets = [min(max_new_tokens, frozen.max_positions - row_length(prompt, ex)) for ex in examples]
    batch = build_batch(frozen, [prompt] * len(examples), examples)
    body = frozen.model.base_model
    output = body(
        inputs_embeds=batch.inputs_embeds,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=True,
    )
    attention_mask = batch.attention_mask
    positions = batch.position_ids[:, -1:]
    generated: list[list[int]] = [[] for _ in inputs]
    results: list[str | None] = [None] * len(inputs)
    done = [budget <= 0 for budget in budgets]
    while not all(done):
        next_ids = frozen.logits(output.last_hidden_state[:, -1]).argmax(dim=-1)
        for row, token in enumerate(next_ids.tolist()):
            if done[row]:
                continue
            if token == frozen.eos_token_id:
                done[row] = True
                continue
            generated[row].append(token)
            text = output_text(rendered[row], frozen.decode(generated[row]))
            cut = _cut_at_stop(text, stop)
            if cut is not None:
                results[row] = cut
                done[row] = True
            elif len(generated[row]) >= budgets[row]:
                done[row] = True
        if all(done):
            break
        # Finished rows keep being fed their argmax token: cheaper than reshaping the cache, and harmless
        # because no row attends to another.
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(inputs), 1)], dim=1)
        positions = positions + 1
        output = body(
            input_ids=next_ids.unsqueeze(1),
            attention_mask=attention_mask,
            position_ids=positions,
            cache=output.cache,  # transformers >= 5.24 name; past_key_values is deprecated
            use_cache=True,
        )
    return [
        result if result is not None else output_text(rendered[row], frozen.decode(generated[row]))
        for row, result in enumerate(results)
    ]


@torch.no_grad()
def generate(
    frozen: FrozenModel,
    prompt: torch.Tensor | None,
    spec: TaskSpec,
    inputs: list[str],
    *,
    max_new_tokens: int = 32,
    stop: list[str] | None = None,
    batch_size: int = 16,
) -> list[str]:
    """Greedy continuations, one per input: stop at eos, max_new_tokens or a stop string (cut before it)."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be at least 0, got {max_new_tokens}.")
    results: list[str] = []
    for chunk in _chunks(inputs, batch_size):
        results.extend(_generate_batch(frozen, prompt, spec, chunk, max_new_tokens, stop or []))
    return results
