"""The pieces of a training loop that hold no state: schedule, splits, batches, encoding, losses, evaluation.

workers/training.py runs the loop; these are pure helpers (nanoGPT's get_lr and evaluate), also used by the other
job kinds (distillation, meta-learning).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch

from app.engine.core.forward import score_targets
from app.engine.core.mixed import Row, label_scores, target_scores
from app.engine.core.model import FrozenModel
from app.engine.core.prompts import single
from app.engine.core.segments import ServedPrompt, resolve
from app.engine.core.text import EncodedExample, TaskSpec, encode_example
from app.engine.methods import TrainConfig
from app.engine.methods.base import PromptModule


def get_lr(step: int, config: TrainConfig) -> float:
    """Learning rate for a 0-based step: linear warm-up, then cosine decay to 10% of the peak."""
    warmup = min(config.warmup_steps, config.steps)
    if step < warmup:
        return config.learning_rate * (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, config.steps - warmup)
    min_lr = 0.1 * config.learning_rate
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))) * (config.learning_rate - min_lr)


def validation_indices(size: int, config: TrainConfig, generator: torch.Generator) -> tuple[list[int], list[int]]:
    """(kept, held out): a seeded validation_fraction of range(size), at least 1, at most max_validation_examples."""
    if size < 2:
        raise ValueError("need at least 2 examples to hold one out for validation, or give a validation set.")
    count = round(size * config.validation_fraction)
    count = max(1, min(count, config.max_validation_examples, size - 1))
    order = torch.randperm(size, generator=generator).tolist()
    held = set(order[:count])
    return [i for i in range(size) if i not in held], sorted(held)


def split_validation(
    train: list[tuple[str, str]], config: TrainConfig, generator: torch.Generator
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Hold out a seeded validation_fraction of train (at least 1, at most max_validation_examples)."""
    kept, held = validation_indices(len(train), config, generator)
    return [train[i] for i in kept], [train[i] for i in held]


def batches(size: int, batch_size: int, generator: torch.Generator) -> Iterator[list[int]]:
    """Endless seeded batches of indices: shuffled epochs, so every example is seen once per epoch."""
    order: list[int] = []
    while True:
        batch: list[int] = []
        while len(batch) < batch_size:
            if not order:
                order = torch.randperm(size, generator=generator).tolist()
            batch.append(order.pop())
        yield batch


def encode_all(
    frozen: FrozenModel, spec: TaskSpec, pairs: list[tuple[str, str]], positions: int, name: str
) -> list[EncodedExample]:
    """Encode (input, output) pairs, refusing unknown labels and rows longer than the context."""
    examples = []
    for line, (text, output) in enumerate(pairs, start=1):
        if spec.kind == "classification" and output not in spec.labels:
            raise ValueError(f'{name} example {line}: label "{output}" is not one of {list(spec.labels)}.')
        example = encode_example(frozen, spec, text, output)
        needed = positions + len(example.input_ids) + len(example.target_ids)
        if needed > frozen.max_positions:
            raise ValueError(
                f"{name} example {line}: needs {needed} positions with the prompt, "
                f"but the model's context holds {frozen.max_positions}; shorten it."
            )
        examples.append(example)
    return examples


@torch.no_grad()
def evaluate(
    frozen: FrozenModel,
    spec: TaskSpec,
    module: PromptModule,
    val: list[tuple[str, str]],
    examples: list[EncodedExample],
) -> tuple[float, float | None]:
    """(mean loss per target token, accuracy or None) of the module's current prompt on the validation set.

    Served as the engine serves a stored version: through a prompt source (its keys/values computed once) in batched
    mixed passes. Classification reads every label's score in one pass and takes the gold one's as the loss.
    """
    pool = single(frozen, module.segments())
    rows = [Row(0, spec, text, input_ids=tuple(ex.input_ids)) for (text, _), ex in zip(val, examples, strict=True)]
    tokens = sum(len(example.target_ids) for example in examples)
    if spec.kind != "classification":
        totals = target_scores(frozen, pool, rows, [[ex.target_ids] for ex in examples])
        return -float(sum(float(t.sum()) for t in totals)) / tokens, None
    scores = label_scores(frozen, pool, rows)
    gold = [spec.labels.index(output) for _, output in val]
    if module.head is not None:  # a head's loss is per example, as it trains
        tokens = len(examples)
    loss = -sum(float(row[g]) for row, g in zip(scores, gold, strict=True)) / tokens
    hits = sum(int(row.argmax()) == g for row, g in zip(scores, gold, strict=True))
    return loss, hits / len(val)


def batch_losses(frozen: FrozenModel, batches: Sequence[tuple[PromptModule, Sequence[EncodedExample]]]) -> torch.Tensor:
    """Mean cross-entropy per target token of each (module, batch) pair, all in one pass: float32 [len(batches)].

    Every row carries its own module's prompt (keys/values resolved once per module), so the gradient of the sum
    reaches each module from its own rows only: summing and calling backward once trains every module exactly as
    its own loss would, which is how packed training and meta-batches share a pass. A module with a label head
    scores all its labels by the head, and its loss is the gold label's cross-entropy per example.
    """
    served = resolve(frozen, [module.segments() for module, _ in batches])
    rows: list[tuple[ServedPrompt, EncodedExample, list[list[int]]]] = []
    for prompt, (module, examples) in zip(served, batches, strict=True):
        labels = module.label_targets if prompt.head is not None else None
        rows.extend((prompt, example, labels or [example.target_ids]) for example in examples)
    totals = score_targets(
        frozen, [prompt for prompt, _, _ in rows], [ex.input_ids for _, ex, _ in rows], [t for _, _, t in rows]
    )
    losses, at = [], 0
    for prompt, (module, examples) in zip(served, batches, strict=True):
        own = totals[at : at + len(examples)]
        if prompt.head is None:
            tokens = sum(len(ex.target_ids) for ex in examples)
            losses.append(-torch.cat(own).sum() / tokens)
        else:
            labels = module.label_targets or []
            gold = [scores[labels.index(list(ex.target_ids))] for scores, ex in zip(own, examples, strict=True)]
            losses.append(-torch.stack(gold).sum() / len(examples))
        at += len(examples)
    return torch.stack(losses)


def batch_loss(frozen: FrozenModel, module: PromptModule, examples: Sequence[EncodedExample]) -> torch.Tensor:
    """Mean cross-entropy per target token of a batch under the module's prompt (differentiable)."""
    return batch_losses(frozen, [(module, examples)])[0]


def is_better(loss: float, accuracy: float | None, best: tuple[float, float | None]) -> bool:
    """Classification: higher accuracy, ties to lower loss. Generation: lower loss."""
    best_loss, best_accuracy = best
    if accuracy is None or best_accuracy is None:
        return loss < best_loss
    return accuracy > best_accuracy or (accuracy == best_accuracy and loss < best_loss)
