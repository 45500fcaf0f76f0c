"""PEFT's own prompt-learning methods as baselines of the quality benchmark, at promptbank's training budget.

Each baseline wraps a private copy of the frozen model with `peft.get_peft_model` (PromptTuning, P-tuning's
PromptEncoder, PrefixTuning) and trains with what promptbank's trainer uses: the same steps, batch size, batch
sampler, AdamW, warm-up and cosine schedule (workers.training.get_lr), gradient clipping, validation points and
best-checkpoint rule. The loss is PEFT's own (labels passed to the wrapped model: mean cross-entropy over the
target tokens). PromptTuning starts from the text embeddings promptbank's `prompt` starts from; P-tuning and
PrefixTuning from PEFT's own initialisation. Rows are right-padded: PEFT passes no position ids, so left padding
would shift the inputs. Evaluation scores labels and decodes greedily with the model's own forward, no cache.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import save

from app.engine.core.decode import cut_at_stop
from app.engine.core.model import FrozenModel
from app.engine.core.text import EncodedExample, TaskSpec, encode_example, label_token_ids, output_text, render
from app.engine.methods import parse_config
from app.engine.methods.init import initial_vectors
from bench.quality_data import Pair
from workers.train_steps import batches, get_lr, is_better

EVAL_BATCH = 16


@dataclass(frozen=True)
class PeftBaseline:
    """A PEFT method: how to build its config (num_virtual_tokens -> config) and its peak learning rate."""

    name: str
    make_config: Callable[[int], Any]
    learning_rate: float
    text_init: bool = False  # start the prompt from the same text embeddings promptbank's `prompt` starts from


def _baselines() -> dict[str, PeftBaseline]:
    from peft import PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, TaskType

    causal = TaskType.CAUSAL_LM
    return {
        b.name: b
        for b in (
            # Learning rates as promptbank's nearest method: prompt 0.03, prefix 0.01; P-tuning's MLP encoder
            # like the other reparameterised methods (input_mapping 0.003).
            PeftBaseline(
                "peft_prompt_tuning", lambda n: PromptTuningConfig(task_type=causal, num_virtual_tokens=n), 0.03, True
            ),
            PeftBaseline("peft_p_tuning", lambda n: PromptEncoderConfig(task_type=causal, num_virtual_tokens=n), 0.003),
            PeftBaseline(
                "peft_prefix_tuning", lambda n: PrefixTuningConfig(task_type=causal, num_virtual_tokens=n), 0.01
            ),
        )
    }


def peft_names() -> list[str]:
    return ["peft_prompt_tuning", "peft_p_tuning", "peft_prefix_tuning"]


def _padded(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids [B, W] and attention mask [B, W]."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for index, row in enumerate(rows):
        ids[index, : len(row)] = torch.tensor(list(row), dtype=torch.long)
        mask[index, : len(row)] = 1
    return ids, mask


def _logits(model: Any, frozen: FrozenModel, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, int]:
    """Logits [B, offset + W, V] of right-padded rows and the offset of token slot 0 (PEFT's virtual tokens)."""
    ids, mask = _padded(rows, frozen.eos_token_id)
    logits = model(input_ids=ids.to(frozen.device), attention_mask=mask.to(frozen.device)).logits
    return logits, logits.shape[1] - ids.shape[1]


@torch.no_grad()
def _target_logprobs(model: Any, frozen: FrozenModel, inputs: list[list[int]], targets: list[list[int]]) -> list[float]:
    """Total log-probability of each target after its input."""
    totals: list[float] = []
    for start in range(0, len(inputs), EVAL_BATCH):
        chunk = list(zip(inputs[start : start + EVAL_BATCH], targets[start : start + EVAL_BATCH], strict=True))
        logits, offset = _logits(model, frozen, [ids + target for ids, target in chunk])
        for row, (ids, target) in enumerate(chunk):
            # Token t of the row is predicted at slot offset + t - 1.
            slots = torch.arange(offset + len(ids) - 1, offset + len(ids) + len(target) - 1)
            logprobs = torch.log_softmax(logits[row, slots].float(), dim=-1)
            totals.append(float(logprobs[torch.arange(len(target)), torch.tensor(target)].sum()))
    return totals


def _accuracy_and_loss(
    model: Any, frozen: FrozenModel, spec: TaskSpec, pairs: list[Pair]
) -> tuple[float, float | None]:
    """(mean loss per gold target token, label accuracy or None) on pairs, as promptbank's validation reads them."""
    encoded = [encode_example(frozen, spec, text, output) for text, output in pairs]
    tokens = sum(len(example.target_ids) for example in encoded)
    if spec.kind != "classification":
        totals = _target_logprobs(model, frozen, [e.input_ids for e in encoded], [e.target_ids for e in encoded])
        return -sum(totals) / tokens, None
    labels = label_token_ids(frozen, spec)
    inputs = [e.input_ids for e in encoded for _ in labels]
    scores = torch.tensor(_target_logprobs(model, frozen, inputs, labels * len(encoded))).view(len(pairs), -1)
    gold = torch.tensor([spec.labels.index(output) for _, output in pairs])
    loss = -float(scores[torch.arange(len(pairs)), gold].sum()) / tokens
    return loss, float((scores.argmax(dim=1) == gold).float().mean())


@torch.no_grad()
def _generate(model: Any, frozen: FrozenModel, spec: TaskSpec, texts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy continuations without a cache (each step reruns the rows), stopping at eos, a newline or the limit."""
    rendered = [render(spec.template, text) for text in texts]
    rows = [frozen.encode(text) for text in rendered]
    generated: list[list[int]] = [[] for _ in texts]
    outputs = [output_text(text, "") for text in rendered]
    for start in range(0, len(texts), EVAL_BATCH):
        active = list(range(start, min(start + EVAL_BATCH, len(texts))))
        for _ in range(max_new_tokens):
            if not active:
                break
            logits, offset = _logits(model, frozen, [rows[i] + generated[i] for i in active])
            ends = torch.tensor([offset + len(rows[i]) + len(generated[i]) - 1 for i in active])
            tokens = logits[torch.arange(len(active)), ends].argmax(dim=-1).tolist()
            still = []
            for i, token in zip(active, tokens, strict=True):
                if token == frozen.eos_token_id:
                    continue
                generated[i].append(token)
                outputs[i] = output_text(rendered[i], frozen.decode(generated[i]))
                cut = cut_at_stop(outputs[i], ["\n"])
                if cut is not None:
                    outputs[i] = cut
                else:
                    still.append(i)
            active = still
    return outputs


def score_test(model: Any, frozen: FrozenModel, spec: TaskSpec, test: list[Pair], max_new_tokens: int) -> float:
    """Held-out accuracy: label scoring for classification, exact match of the greedy text for generation."""
    if spec.kind == "classification":
        return _accuracy_and_loss(model, frozen, spec, test)[1] or 0.0
    texts = _generate(model, frozen, spec, [text for text, _ in test], max_new_tokens)
    return sum(text.strip() == output for text, (_, output) in zip(texts, test, strict=True)) / len(test)


def train_peft(
    frozen: FrozenModel,
    name: str,
    spec: TaskSpec,
    train: list[Pair],
    val: list[Pair],
    test: list[Pair],
    *,
    steps: int,
    batch_size: int,
    eval_every: int,
    seed: int,
    num_virtual_tokens: int,
    max_new_tokens: int,
) -> dict[str, Any]:
    """Train one PEFT baseline and score it on test; the figures promptbank's methods report."""
    from peft import get_peft_model, get_peft_model_state_dict

    baseline = _baselines()[name]
    # The schedule's config: promptbank's prompt method with this baseline's learning rate (warm-up etc. shared).
    schedule = parse_config({"method": "prompt", "steps": steps, "batch_size": batch_size, "seed": seed})
    schedule = schedule.model_copy(update={"learning_rate": baseline.learning_rate})
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # PEFT initialises its encoders from the global generator
    with warnings.catch_warnings():  # PEFT calls transformers methods deprecated in v5
        warnings.simplefilter("ignore", FutureWarning)
        model: Any = get_peft_model(copy.deepcopy(frozen.model), baseline.make_config(num_virtual_tokens))
        if baseline.text_init:
            start = initial_vectors(frozen, schedule, spec, generator, num_virtual_tokens)
            with torch.no_grad():
                model.prompt_encoder["default"].embedding.weight.copy_(start)
        model.eval()  # no dropout anywhere, as promptbank trains
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=schedule.learning_rate, weight_decay=schedule.weight_decay)
        examples = [encode_example(frozen, spec, text, output) for text, output in train]
        best = _accuracy_and_loss(model, frozen, spec, val)
        best_step, best_state = 0, [p.detach().clone() for p in trainable]
        sampler = batches(len(examples), min(batch_size, len(examples)), generator)
        seconds = 0.0
        for step in range(1, steps + 1):
            started = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = get_lr(step - 1, schedule)
            loss = _batch_loss(model, frozen, [examples[i] for i in next(sampler)])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, schedule.max_grad_norm)
            optimizer.step()
            seconds += time.perf_counter() - started
            if step % eval_every == 0 or step == steps:
                current = _accuracy_and_loss(model, frozen, spec, val)
                if is_better(*current, best):
                    best, best_step, best_state = current, step, [p.detach().clone() for p in trainable]
        with torch.no_grad():
            for parameter, saved in zip(trainable, best_state, strict=True):
                parameter.copy_(saved)
        stored = save({k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()})
        accuracy = score_test(model, frozen, spec, test, max_new_tokens)
    return {
        "accuracy": accuracy,
        "trainable_parameters": sum(p.numel() for p in trainable),
        "bytes": len(stored),
        "seconds_per_step": seconds / steps,
        "best_step": best_step,
        "best_val_accuracy": best[1],
        "learning_rate": baseline.learning_rate,
    }


def _batch_loss(model: Any, frozen: FrozenModel, chunk: list[EncodedExample]) -> torch.Tensor:
    """PEFT's loss on a batch: the wrapped model's cross-entropy over the target tokens (inputs masked out)."""
    rows = [example.input_ids + example.target_ids for example in chunk]
    ids, mask = _padded(rows, frozen.eos_token_id)
    labels = torch.full_like(ids, -100)
    for index, example in enumerate(chunk):
        labels[index, len(example.input_ids) : len(rows[index])] = torch.tensor(example.target_ids)
    device = frozen.device
    return model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)).loss  # type: ignore[no-any-return]
