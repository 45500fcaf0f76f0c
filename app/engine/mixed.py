"""Rows of different tasks in one forward pass: each row's input attends over its prompt's pooled keys/values."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from app.engine.inference import _cut_at_stop
from app.engine.model import FrozenModel
from app.engine.pool import PromptPool
from app.engine.prompt_cache import PromptKV, Query, forward_cached
from app.engine.text import TaskSpec, encode_example, label_token_ids, output_text, render

Loader = Callable[[int], torch.Tensor]


def forward_overhead(frozen: FrozenModel) -> int:
    """The fixed cost of one forward pass, in query positions: what splitting a batch in two costs.

    On the project's 2-core CPU, SmolLM2-135M float32 costs about 40 ms + 0.75 ms per query position per pass
    (least squares over batches of 1-32 rows of 8-64 tokens), i.e. 50-60 positions, the price of streaming the
    weights once; small passes also use the cores worse, and sweeping this value over 32 rows of 12-54 tokens
    gave 0.99x (16), 1.07x (64), 1.09x (128), 1.06x (256) the speed of the inputs alone in sorted batches of 16
    (`python -m bench.forward_cost`). An accelerator, idle on small batches, pays far more positions' worth.
    """
    return 128 if frozen.device.type == "cpu" else 2048


@dataclass(frozen=True)
class Row:
    """One request row: which prompt version serves it, its task, its input, and generation limits."""

    prompt_id: int
    spec: TaskSpec
    text: str
    max_new_tokens: int = 32
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop", tuple(self.stop))
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be at least 0, got {self.max_new_tokens}.")


def _batches(
    frozen: FrozenModel,
    pool: PromptPool,
    rows: list[Row],
    widths: list[int],
    extra: list[int],
    load: Loader,
    budget: int,
) -> Iterator[tuple[list[int], list[PromptKV]]]:
    """Row indices sorted by width and cut into sub-batches, each with its rows' prompt keys/values.

    Rows are taken in chunks of at most pool.capacity distinct prompts (all of a round, when they fit), the
    chunk's missing prompts computed together; each chunk is cut by _partition.
    """
    if budget < 1:
        raise ValueError(f"max_batch_tokens must be at least 1, got {budget}.")
    # Similar widths together keep padding small; equal prompts together keep distinct prompts per chunk few.
    order = sorted(range(len(rows)), key=lambda i: (widths[i], extra[i], rows[i].prompt_id))
    overhead = forward_overhead(frozen)
    for chunk in _prompt_chunks(order, rows, pool.capacity):
        ready = pool.get_many(sorted({rows[i].prompt_id for i in chunk}), load)
        kvs = {index: ready[rows[index].prompt_id] for index in chunk}
        for index in chunk:
            if kvs[index].length + widths[index] > frozen.max_positions:
                raise ValueError(
                    f"row {index} needs {kvs[index].length + widths[index]} positions but the model's context "
                    f"holds {frozen.max_positions}."
                )
        spans = {index: kvs[index].length for index in chunk}
        for group in _partition(chunk, widths, extra, spans, budget, overhead):
            yield group, [kvs[index] for index in group]


def _prompt_chunks(order: list[int], rows: list[Row], capacity: int) -> Iterator[list[int]]:
    """Consecutive runs of `order` holding at most `capacity` distinct prompts each."""
    chunk: list[int] = []
    prompts: set[int] = set()
    for index in order:
        if rows[index].prompt_id not in prompts and len(prompts) == capacity:
            yield chunk
            chunk, prompts = [], set()
        chunk.append(index)
        prompts.add(rows[index].prompt_id)
    if chunk:
        yield chunk


def _partition(
    order: list[int], widths: list[int], extra: list[int], spans: dict[int, int], budget: int, overhead: int
) -> list[list[int]]:
    """Cut rows sorted by width into consecutive sub-batches of least estimated cost (dynamic programming).

    A sub-batch of B rows, Q the widest input, E the most new tokens, costs about overhead * (1 + E) + B * (Q + E)
    positions (a prefill plus E decoding passes): padding every row to Q and one pass too many both count. It
    must keep B * (P + Q + E) <= budget, P the longest prompt (a lone row may exceed it).
    """
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: least cost of the first j rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        longest = most = span = 0
        for i in range(j - 1, -1, -1):  # sub-batch order[i:j]; it only grows as i falls
            index = order[i]
            longest, most, span = max(longest, widths[index]), max(most, extra[index]), max(span, spans[index])
            size = j - i
            if size > 1 and size * (span + longest + most) > budget:
                break
            cost = best[i] + overhead * (1 + most) + size * (longest + most)
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups: list[list[int]] = []
    j = n
    while j > 0:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]


def _label_targets(
    frozen: FrozenModel, spec: TaskSpec, text: str, memo: dict[TaskSpec, list[list[int]]]
) -> list[list[int]]:
    """Each label's token ids after this input, exactly as inference.classify scores them."""
    if spec not in memo:
        if spec.kind != "classification":
            raise ValueError(f"classify_rows needs classification tasks, got a {spec.kind} task.")
        labels = label_token_ids(frozen, spec)
        empty = [label for label, ids in zip(spec.labels, labels, strict=True) if not ids]
        if empty:
            raise ValueError(f"labels {empty} encode to no tokens.")
        memo[spec] = labels
    labels = memo[spec]
    firsts = [ids[0] for ids in labels]
    if all(len(ids) == 1 for ids in labels) and len(set(firsts)) == len(firsts):
        return labels
    # Multi-token labels are tokenized after the real rendered input, like inference's target scoring.
    return [encode_example(frozen, spec, text, label).target_ids for label in spec.labels]


@torch.no_grad()
def classify_rows(
    frozen: FrozenModel, pool: PromptPool, rows: list[Row], load: Loader, *, max_batch_tokens: int = 4096
) -> list[dict[str, float]]:
    """Probabilities over each row's labels (softmax of each label's total log-prob), rows of any tasks, in order.

    A label's first token is read at the input's last position; the rest of a multi-token label is fed as a
    branch in the same forward pass, seeing the input but not the other labels, so the input runs once.
    """
    memo: dict[TaskSpec, list[list[int]]] = {}
    targets = [_label_targets(frozen, row.spec, row.text, memo) for row in rows]
    queries = [
        Query(encode_example(frozen, row.spec, row.text, None).input_ids, tuple(t[:-1] for t in labels if len(t) > 1))
        for row, labels in zip(rows, targets, strict=True)
    ]
    widths = [query.width for query in queries]
    results: list[dict[str, float]] = [{} for _ in rows]
    for group, kvs in _batches(frozen, pool, rows, widths, [0] * len(rows), load, max_batch_tokens):
        hidden = forward_cached(frozen, kvs, [queries[i] for i in group])[0]
        width = hidden.shape[1] - 1
        slots: dict[tuple[int, int], int] = {}  # (row in batch, hidden index) -> row of `logits`: each read once
        reads: list[tuple[int, int, int]] = []  # (slot, target token, label number within the batch)
        n_labels = 0
        for b, index in enumerate(group):
            source = queries[index].last_input_slot(width)
            branch = width - queries[index].width + len(queries[index].input_ids)
            for label in targets[index]:
                for step, token in enumerate(label):
                    # Token `step` is predicted by the input's last state, then by the branch's previous token.
                    at = source if step == 0 else branch + step - 1
                    reads.append((slots.setdefault((b, at), len(slots)), token, n_labels))
                n_labels += 1
                if len(label) > 1:
                    branch += len(label) - 1
        where = torch.tensor(list(slots), device=frozen.device)
        logits = frozen.logits(hidden[where[:, 0], where[:, 1]]).float()
        # log p(token) = logit - logsumexp: no second [N, vocab] tensor for a full log_softmax.
        normalizers = torch.logsumexp(logits, dim=-1)
        state_index, target_ids, label_index = torch.tensor(reads, device=frozen.device).unbind(1)
        picked = logits[state_index, target_ids] - normalizers[state_index]
        totals = torch.zeros(n_labels, device=frozen.device).index_add(0, label_index, picked)
        start = 0
        for index in group:
            labels = rows[index].spec.labels
            probabilities = torch.softmax(totals[start : start + len(labels)], dim=-1).tolist()
            results[index] = dict(zip(labels, probabilities, strict=True))
            start += len(labels)
    return results


@torch.no_grad()
def logits_rows(
    frozen: FrozenModel, pool: PromptPool, rows: list[Row], load: Loader, *, max_batch_tokens: int = 4096
) -> list[torch.Tensor]:
    """Float32 logits [vocab] predicting the token after each row's rendered input, rows in order."""
    queries = [Query(encode_example(frozen, row.spec, row.text, None).input_ids) for row in rows]
    results: list[torch.Tensor] = [torch.empty(0) for _ in rows]
    widths = [query.width for query in queries]
    for group, kvs in _batches(frozen, pool, rows, widths, [0] * len(rows), load, max_batch_tokens):
        hidden = forward_cached(frozen, kvs, [queries[i] for i in group])[0]
        slots = torch.tensor([queries[i].last_input_slot(hidden.shape[1] - 1) for i in group], device=frozen.device)
        logits = frozen.logits(hidden[torch.arange(len(group), device=frozen.device), slots]).float()
        for b, index in enumerate(group):
            results[index] = logits[b]
    return results


def _generate_batch(frozen: FrozenModel, rows: list[Row], inputs: list[list[int]], kvs: list[PromptKV]) -> list[str]:
    """Greedy decoding of one sub-batch with the cache; finished rows leave the batch."""
    rendered = [render(row.spec.template, row.text) for row in rows]
    # Never run past the context: a row near the limit gets fewer new tokens (as inference.generate does).
    budgets = [
        min(row.max_new_tokens, frozen.max_positions - kv.length - len(ids))
        for row, ids, kv in zip(rows, inputs, kvs, strict=True)
    ]
    texts = [output_text(text, "") for text in rendered]
    active = [i for i, budget in enumerate(budgets) if budget > 0]
    if not active:
        return texts
    queries = [Query(inputs[i]) for i in active]
    hidden, cache, key_real = forward_cached(frozen, [kvs[i] for i in active], queries)
    slots = torch.tensor([query.last_input_slot(hidden.shape[1] - 1) for query in queries], device=frozen.device)
    last = hidden[torch.arange(len(active), device=frozen.device), slots]
    positions = torch.tensor([kvs[i].length + len(inputs[i]) for i in active], device=frozen.device)
    generated: list[list[int]] = [[] for _ in rows]
    body = frozen.model.base_model
    while True:
        next_ids = frozen.logits(last).argmax(dim=-1)
        keep: list[int] = []
        for slot, token in enumerate(next_ids.tolist()):
            i = active[slot]
            if token == frozen.eos_token_id:
                continue
            generated[i].append(token)
            texts[i] = output_text(rendered[i], frozen.decode(generated[i]))
            cut = _cut_at_stop(texts[i], list(rows[i].stop))
            if cut is not None:
                texts[i] = cut
            elif len(generated[i]) < budgets[i]:
                keep.append(slot)
        if not keep:
            return texts
        if len(keep) < len(active):
            # Dropping finished rows from the cache costs one gather per layer and saves their later steps.
            index = torch.tensor(keep, device=frozen.device)
            cache.batch_select_indices(index)
            key_real, next_ids, positions = key_real[index], next_ids[index], positions[index]
            active = [active[slot] for slot in keep]
        key_real = torch.cat([key_real, key_real.new_ones(len(active), 1)], dim=1)
        output = body(
            input_ids=next_ids.unsqueeze(1),
            attention_mask=key_real.long(),
            position_ids=positions.unsqueeze(1),
            cache=cache,  # transformers >= 5.24 name; past_key_values is deprecated
            use_cache=True,
        )
        positions = positions + 1
        last = output.last_hidden_state[:, -1]


@torch.no_grad()
def generate_rows(
    frozen: FrozenModel, pool: PromptPool, rows: list[Row], load: Loader, *, max_batch_tokens: int = 4096
) -> list[str]:
    """Greedy continuations of rows of any tasks, each stopping on its own (eos, max_new_tokens, stop), in order."""
    inputs = [encode_example(frozen, row.spec, row.text, None).input_ids for row in rows]
    widths = [len(ids) for ids in inputs]
    extra = [row.max_new_tokens for row in rows]
    results: list[str] = ["" for _ in rows]
    for group, kvs in _batches(frozen, pool, rows, widths, extra, load, max_batch_tokens):
        texts = _generate_batch(frozen, [rows[i] for i in group], [inputs[i] for i in group], kvs)
        for index, text in zip(group, texts, strict=True):
            results[index] = text
    return results
