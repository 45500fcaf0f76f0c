"""Rows of different tasks and methods in one forward pass, each over its own prompt version from a source."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

import torch

from app.engine.core.decode import Decoding, decode
from app.engine.core.forward import Query, forward_rows, score_targets, target_logits
from app.engine.core.model import FrozenModel
from app.engine.core.segments import ServedPrompt
from app.engine.core.text import TaskSpec, encode_example, label_token_ids, render


class PromptSource(Protocol):
    """Where rows' prompts come from (the serving pool, or a plain `core.prompts.Prompts`): served prompts by id,
    at most capacity at once."""

    capacity: int

    def get_many(self, prompt_ids: Sequence[int]) -> dict[int, ServedPrompt]: ...


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
    """One request row: which prompt version serves it, its task, its input, and generation limits.

    input_ids: the rendered input's token ids, computed once per request (by the batcher's submit, on the
    caller's thread); rows built without them are tokenised when first served.
    """

    prompt_id: int
    spec: TaskSpec
    text: str
    max_new_tokens: int = 32
    stop: tuple[str, ...] = ()
    input_ids: tuple[int, ...] | None = None
    pooling: Literal["last", "mean"] | None = None  # set: the row asks for its hidden state (an embedding)
    # set by the request's thread when its client went away or its deadline passed: a decoding row stops at its
    # next step, a row not yet computed is skipped
    cancel: threading.Event | None = field(default=None, compare=False, repr=False)
    # a generating row's progress, called on the engine thread with (text so far, tokens generated): see Decoding
    on_progress: Callable[[str, int], None] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop", tuple(self.stop))
        if self.input_ids is not None:
            object.__setattr__(self, "input_ids", tuple(self.input_ids))
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be at least 0, got {self.max_new_tokens}.")

    def tokenized(self, frozen: FrozenModel) -> Row:
        """This row with its input ids (itself when it has them)."""
        if self.input_ids is not None:
            return self
        ids = tuple(encode_example(frozen, self.spec, self.text, None).input_ids)
        return replace(self, input_ids=ids)

    @property
    def ids(self) -> tuple[int, ...]:
        if self.input_ids is None:
            raise ValueError("the row is not tokenized; call tokenized(frozen) first.")
        return self.input_ids


def _batches(
    frozen: FrozenModel,
    prompts: PromptSource,
    rows: list[Row],
    tokens: list[int],
    extra: list[int],
    budget: int,
) -> Iterator[tuple[list[int], list[ServedPrompt]]]:
    """Row indices sorted by width and cut into sub-batches, each with its rows' served prompts.

    Rows are taken in chunks of at most prompts.capacity distinct prompts (all of a round, when they fit), the
    chunk's missing prompts resolved together; each chunk is cut by _partition. tokens: each row's own token
    positions (input and branches); extra: new tokens it may decode.
    """
    if budget < 1:
        raise ValueError(f"max_batch_tokens must be at least 1, got {budget}.")
    # Similar widths together keep padding small; equal prompts together keep distinct prompts per chunk few.
    order = sorted(range(len(rows)), key=lambda i: (tokens[i], extra[i], rows[i].prompt_id))
    overhead = forward_overhead(frozen)
    for chunk in _prompt_chunks(order, rows, prompts.capacity):
        ready = prompts.get_many(sorted({rows[i].prompt_id for i in chunk}))
        served = {index: ready[rows[index].prompt_id] for index in chunk}
        widths = {index: tokens[index] + served[index].extra_width for index in chunk}
        for index in chunk:
            needed = served[index].length + widths[index]
            if needed > frozen.max_positions:
                raise ValueError(
                    f"row {index} needs {needed} positions but the model's context holds {frozen.max_positions}."
                )
        spans = {index: served[index].length for index in chunk}
        ordered = sorted(chunk, key=lambda i: (widths[i], extra[i], rows[i].prompt_id))
        for group in _partition(ordered, widths, extra, spans, budget, overhead):
            yield group, [served[index] for index in group]


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
    order: list[int], widths: dict[int, int], extra: list[int], spans: dict[int, int], budget: int, overhead: int
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


def _label_targets(frozen: FrozenModel, spec: TaskSpec, memo: dict[TaskSpec, list[list[int]]]) -> list[list[int]]:
    """Each label's token ids after an input of this task."""
    if spec not in memo:
        if spec.kind != "classification":
            raise ValueError(f"classify_rows needs classification tasks, got a {spec.kind} task.")
        labels = label_token_ids(frozen, spec)
        empty = [label for label, ids in zip(spec.labels, labels, strict=True) if not ids]
        if empty:
            raise ValueError(f"labels {empty} encode to no tokens.")
        memo[spec] = labels
    return memo[spec]


def target_scores(
    frozen: FrozenModel,
    prompts: PromptSource,
    rows: list[Row],
    targets: Sequence[Sequence[Sequence[int]]],
    *,
    max_batch_tokens: int = 4096,
) -> list[torch.Tensor]:
    """Each row's total log-probability of each of its target sequences, float32 [K_b], rows in order.

    A target's first token is read at the input's last position; the rest is fed as a branch in the same
    forward pass, seeing the input but not the other targets, so the input runs once however many targets.
    """
    rows = [row.tokenized(frozen) for row in rows]
    tokens = [
        len(row.ids) + sum(len(t) - 1 for t in row_targets) for row, row_targets in zip(rows, targets, strict=True)
    ]
    results: list[torch.Tensor] = [torch.empty(0) for _ in rows]
    for group, served in _batches(frozen, prompts, rows, tokens, [0] * len(rows), max_batch_tokens):
        totals = score_targets(frozen, served, [rows[i].ids for i in group], [targets[i] for i in group])
        for index, scores in zip(group, totals, strict=True):
            results[index] = scores
    return results


@torch.no_grad()
def target_top_k(
    frozen: FrozenModel,
    prompts: PromptSource,
    rows: list[Row],
    targets: Sequence[Sequence[int]],
    *,
    k: int,
    temperature: float = 1.0,
    max_batch_tokens: int = 4096,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per row, the k most likely tokens at each position of its target (teacher forcing) at a temperature:
    (ids long [L, k], probabilities float32 [L, k], renormalised over the k), rows in order. What a generation
    teacher hands its student: k of the vocabulary's probabilities per position, not all of them."""
    rows = [row.tokenized(frozen) for row in rows]
    tokens = [len(row.ids) + len(target) - 1 for row, target in zip(rows, targets, strict=True)]
    results: list[tuple[torch.Tensor, torch.Tensor]] = [(torch.empty(0), torch.empty(0)) for _ in rows]
    for group, served in _batches(frozen, prompts, rows, tokens, [0] * len(rows), max_batch_tokens):
        logits = target_logits(frozen, served, [rows[i].ids for i in group], [targets[i] for i in group])
        for index, row_logits in zip(group, logits, strict=True):
            top = torch.topk(row_logits / temperature, min(k, row_logits.shape[-1]), dim=-1)
            results[index] = (top.indices.cpu(), torch.softmax(top.values, dim=-1).cpu())
    return results


def label_scores(
    frozen: FrozenModel, prompts: PromptSource, rows: list[Row], *, max_batch_tokens: int = 4096
) -> list[torch.Tensor]:
    """Each row's total log-probability of each of its task's labels, float32 [K] in spec.labels order."""
    memo: dict[TaskSpec, list[list[int]]] = {}
    targets = [_label_targets(frozen, row.spec, memo) for row in rows]
    return target_scores(frozen, prompts, rows, targets, max_batch_tokens=max_batch_tokens)


@torch.no_grad()
def classify_rows(
    frozen: FrozenModel, prompts: PromptSource, rows: list[Row], *, max_batch_tokens: int = 4096
) -> list[dict[str, float]]:
    """Probabilities over each row's labels (softmax of each label's total log-prob), rows in order."""
    scores = label_scores(frozen, prompts, rows, max_batch_tokens=max_batch_tokens)
    return [
        dict(zip(row.spec.labels, torch.softmax(row_scores, dim=-1).tolist(), strict=True))
        for row, row_scores in zip(rows, scores, strict=True)
    ]


@torch.no_grad()
def logits_rows(
    frozen: FrozenModel, prompts: PromptSource, rows: list[Row], *, max_batch_tokens: int = 4096
) -> list[torch.Tensor]:
    """Float32 logits [vocab] predicting the token after each row's rendered input, rows in order."""
    return [
        frozen.logits(state).float() for state in state_rows(frozen, prompts, rows, max_batch_tokens=max_batch_tokens)
    ]


@torch.no_grad()
def state_rows(
    frozen: FrozenModel, prompts: PromptSource, rows: list[Row], *, max_batch_tokens: int = 4096
) -> list[torch.Tensor]:
    """Each row's hidden state [H] under its prompt, rows in order, pooled as row.pooling says: the final state
    after its input (None or "last"), or the mean over its input's positions ("mean")."""
    rows = [row.tokenized(frozen) for row in rows]
    results: list[torch.Tensor] = [torch.empty(0) for _ in rows]
    tokens = [len(row.ids) for row in rows]
    for group, served in _batches(frozen, prompts, rows, tokens, [0] * len(rows), max_batch_tokens):
        result = forward_rows(frozen, served, [Query(rows[i].ids) for i in group])
        for b, index in enumerate(group):
            last, n_input = int(result.last[b]), len(rows[index].ids)
            if rows[index].pooling != "mean" or n_input == 0:  # nothing of its own: the state after the prompt
                results[index] = result.hidden[b, last]
                continue
            # The shared part ends at `last`: [row prefix | input | after]; the input is its middle.
            first = last - served[b].after_length - n_input + 1
            results[index] = result.hidden[b, first : first + n_input].mean(dim=0)
    return results


@torch.no_grad()
def generate_rows(
    frozen: FrozenModel, prompts: PromptSource, rows: list[Row], *, max_batch_tokens: int = 4096
) -> list[str]:
    """Greedy continuations of rows of any tasks, each stopping on its own (eos, max_new_tokens, stop), in order."""
    rows = [row.tokenized(frozen) for row in rows]
    tokens = [len(row.ids) for row in rows]
    extra = [row.max_new_tokens for row in rows]
    results: list[str] = ["" for _ in rows]
    for group, served in _batches(frozen, prompts, rows, tokens, extra, max_batch_tokens):
        decodings = [
            Decoding(
                render(rows[i].spec.template, rows[i].text),
                rows[i].ids,
                rows[i].max_new_tokens,
                rows[i].stop,
                rows[i].cancel,
                rows[i].on_progress,
            )
            for i in group
        ]
        for index, text in zip(group, decode(frozen, served, decodings), strict=True):
            results[index] = text
    return results
