"""Train one prompt of any method on a frozen model: read top to bottom, nanoGPT style. Torch only, no DB.

Training, validation and serving share one forward (app/engine/forward.py): a step scores the gold targets of a
batch over the module's current prompt with gradients; validation serves the current prompt through the same
batched path the inference engine uses (its keys/values computed once per evaluation).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from app.engine.artifact import Artifact
from app.engine.forward import score_targets
from app.engine.methods import TrainConfig, get_method
from app.engine.methods.base import PromptModule
from app.engine.mixed import Row, label_scores, target_scores
from app.engine.model import FrozenModel
from app.engine.pool import PromptPool
from app.engine.segments import resolve
from app.engine.text import EncodedExample, TaskSpec, encode_example

EVAL_BATCH_SIZE = 16


@dataclass
class StepReport:
    """Reported after every optimizer step."""

    step: int
    total_steps: int
    loss: float
    lr: float


@dataclass
class EvalReport:
    """Reported after every evaluation; val_accuracy is None for generation tasks."""

    step: int
    val_loss: float
    val_accuracy: float | None


@dataclass
class TrainResult:
    """The best prompt seen (a detached CPU artifact), the step it came from, and summary metrics."""

    artifact: Artifact
    positions: int
    best_step: int
    metrics: dict[str, float | int | None]


Objective = Callable[[PromptModule, list[int]], torch.Tensor]


class Cancelled(Exception):
    """should_stop() asked the job to end; nothing is returned."""


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

    Served as the engine serves a stored version: through a pool (its keys/values computed once) in batched
    mixed passes. Classification reads every label's score in one pass and takes the gold one's as the loss.
    """
    pool = PromptPool(frozen, capacity=1, loader=lambda _: module.segments())
    rows = [Row(0, spec, text, input_ids=tuple(ex.input_ids)) for (text, _), ex in zip(val, examples, strict=True)]
    tokens = sum(len(example.target_ids) for example in examples)
    if spec.kind != "classification":
        totals = target_scores(frozen, pool, rows, [[ex.target_ids] for ex in examples])
        return -float(sum(float(t.sum()) for t in totals)) / tokens, None
    scores = label_scores(frozen, pool, rows)
    gold = [spec.labels.index(output) for _, output in val]
    loss = -sum(float(row[g]) for row, g in zip(scores, gold, strict=True)) / tokens
    hits = sum(int(row.argmax()) == g for row, g in zip(scores, gold, strict=True))
    return loss, hits / len(val)


def batch_loss(frozen: FrozenModel, module: PromptModule, examples: list[EncodedExample]) -> torch.Tensor:
    """Mean cross-entropy per target token of a batch under the module's prompt (differentiable)."""
    served = resolve(frozen, [module.segments()])[0]  # the prompt's keys/values once for the whole batch
    totals = score_targets(
        frozen, [served] * len(examples), [ex.input_ids for ex in examples], [[ex.target_ids] for ex in examples]
    )
    return -torch.cat(totals).sum() / sum(len(ex.target_ids) for ex in examples)


def is_better(loss: float, accuracy: float | None, best: tuple[float, float | None]) -> bool:
    """Classification: higher accuracy, ties to lower loss. Generation: lower loss."""
    best_loss, best_accuracy = best
    if accuracy is None or best_accuracy is None:
        return loss < best_loss
    return accuracy > best_accuracy or (accuracy == best_accuracy and loss < best_loss)


def train_prompt(
    frozen: FrozenModel,
    spec: TaskSpec,
    train: list[tuple[str, str]],
    val: list[tuple[str, str]] | None,
    config: TrainConfig,
    *,
    init: Artifact | None = None,
    on_step: Callable[[StepReport], None] | None = None,
    on_eval: Callable[[EvalReport], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    objective: Objective | None = None,
) -> TrainResult:
    """Train config.method's prompt with AdamW on the frozen model; return the best prompt by validation metric.

    objective: the loss of a batch, given the module and the batch's indices into `train` as passed (default:
    the gold outputs' cross-entropy per token). A distillation brings its teacher's term this way.
    """
    if not train:
        raise ValueError("the training set is empty.")
    method = get_method(config.method)
    method.check(frozen, config)
    # One seeded CPU generator drives the split, the initialisation and the batch order, so a seeded job
    # is bit-reproducible on CPU.
    generator = torch.Generator().manual_seed(config.seed)
    index = list(range(len(train)))  # position in the caller's train of each example trained on
    if not val:
        index, held = validation_indices(len(train), config, generator)
        train, val = [train[i] for i in index], [train[i] for i in held]
    elif len(val) > config.max_validation_examples:
        keep = torch.randperm(len(val), generator=generator)[: config.max_validation_examples].tolist()
        val = [val[i] for i in sorted(keep)]
    positions = method.positions(config)
    train_examples = encode_all(frozen, spec, train, positions, "training")
    val_examples = encode_all(frozen, spec, val, positions, "validation")

    module = method.build(frozen, config, spec, generator, init)
    # The optimizer sees the prompt and nothing else: the base model is frozen and shared.
    optimizer = torch.optim.AdamW(module.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)

    def run_eval(step: int) -> tuple[float, float | None]:
        loss, accuracy = evaluate(frozen, spec, module, val, val_examples)
        if on_eval is not None:
            on_eval(EvalReport(step=step, val_loss=loss, val_accuracy=accuracy))
        return loss, accuracy

    best = run_eval(0)
    best_step, best_artifact = 0, module.artifact()
    init_loss, init_accuracy = best
    sampler = batches(len(train_examples), min(config.batch_size, len(train_examples)), generator)
    train_loss = float("nan")
    train_seconds = 0.0
    for step in range(1, config.steps + 1):
        if should_stop is not None and should_stop():
            raise Cancelled(f"stopped at step {step} of {config.steps}")
        started = time.perf_counter()
        lr = get_lr(step - 1, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = next(sampler)
        if objective is None:
            loss = batch_loss(frozen, module, [train_examples[i] for i in batch])
        else:
            loss = objective(module, [index[i] for i in batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), config.max_grad_norm)
        optimizer.step()
        train_loss = loss.item()
        train_seconds += time.perf_counter() - started
        if on_step is not None:
            on_step(StepReport(step=step, total_steps=config.steps, loss=train_loss, lr=lr))
        if step % config.eval_every == 0 or step == config.steps:
            current = run_eval(step)
            if is_better(*current, best):
                best, best_step = current, step
                best_artifact = module.artifact()

    return TrainResult(
        artifact=best_artifact,
        positions=module.positions,
        best_step=best_step,
        metrics={
            "best_step": best_step,
            "best_val_loss": best[0],
            "best_val_accuracy": best[1],
            "init_val_loss": init_loss,
            "init_val_accuracy": init_accuracy,
            "final_train_loss": train_loss,
            "seconds_per_step": train_seconds / config.steps,
            "train_size": len(train_examples),
            "val_size": len(val_examples),
            "steps": config.steps,
            "trainable_parameters": sum(p.numel() for p in module.parameters() if p.requires_grad),
        },
    )
