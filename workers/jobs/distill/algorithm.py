"""`"type": "distill"`: train a student prompt on a teacher's soft outputs (knowledge distillation).

The teacher is stored versions of the task (several: their distributions are averaged), or the frozen model
reading an English instruction and solved examples in its context (context distillation). Its outputs are
computed once per example per generation, batched through the engine (no gradients):
- classification: its distribution over the task's labels at temperature T;
- generation: at each position of the output (the dataset's, or the teacher's own greedy output when the dataset
  has inputs only), its top_k next tokens with their probabilities at T, renormalised over those k.
The student (any method, length and init) minimises, per batch,
    alpha * CE(gold) + (1 - alpha) * T^2 * KL(teacher || student at T),
where CE is over the label distribution (classification) or per output token (generation). With "generations": n
each student teaches the next one (G0 -> G1 -> ...); every generation's validation score is a job event and the
best student is stored. Validation scores against the dataset's outputs, or, for inputs only, against the first
teacher's labels or outputs (agreement with it).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from app.engine.core.forward import score_targets, target_logits
from app.engine.core.mixed import Row, generate_rows, label_scores, target_top_k
from app.engine.core.model import FrozenModel
from app.engine.core.prompts import Prompts, single
from app.engine.core.segments import Segments, resolve
from app.engine.core.text import TaskSpec, context_template, encode_example, label_token_ids
from app.engine.formats.artifact import Artifact
from app.engine.methods import load_segments
from app.engine.methods.base import PromptModule
from workers.auto_init import resolve_auto
from workers.jobs.base import JobContext, Trained
from workers.jobs.distill.options import ContextTeacher, Distillation, DistillOptions, PromptTeacher
from workers.train_steps import is_better
from workers.training import StepReport, TrainResult, train_prompt

STOP = ("\n\n",)  # a context teacher's examples are separated by blank lines: its answer ends at one


@dataclass(frozen=True)
class Teacher:
    """What teaches: prompts served from a pool (several are averaged), each reading inputs as `spec` says."""

    name: str
    spec: TaskSpec
    pool: Prompts
    members: int


def prompts_teacher(frozen: FrozenModel, spec: TaskSpec, name: str, artifacts: list[Artifact]) -> Teacher:
    loaders = [partial(load_segments, frozen, artifact) for artifact in artifacts]
    pool = Prompts(frozen, lambda index: loaders[index]())
    return Teacher(name, spec, pool, len(loaders))


def context_teacher(frozen: FrozenModel, spec: TaskSpec, teacher: ContextTeacher) -> Teacher:
    """The frozen model with no soft prompt, reading the instruction and examples before each input."""
    shots = [(shot.input, shot.output) for shot in teacher.examples]
    template = context_template(spec, teacher.instruction, shots)
    pool = single(frozen, Segments())
    return Teacher("the instruction in context", TaskSpec(spec.kind, template, spec.labels), pool, 1)


@torch.no_grad()
def soft_labels(frozen: FrozenModel, teacher: Teacher, texts: list[str], temperature: float) -> torch.Tensor:
    """[N, K] the teacher's label distribution per input at the temperature, averaged over its members."""
    rows = [Row(member, teacher.spec, text) for member in range(teacher.members) for text in texts]
    scores = torch.stack(label_scores(frozen, teacher.pool, rows)).view(teacher.members, len(texts), -1)
    return torch.softmax(scores / temperature, dim=-1).mean(dim=0)


@torch.no_grad()
def soft_tokens(
    frozen: FrozenModel, teacher: Teacher, texts: list[str], targets: list[list[int]], temperature: float, k: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per input, the teacher's top-k tokens at each target position: (ids [L, k], probabilities [L, k])."""
    per_member = [
        target_top_k(
            frozen, teacher.pool, [Row(m, teacher.spec, t) for t in texts], targets, k=k, temperature=temperature
        )
        for m in range(teacher.members)
    ]
    if teacher.members == 1:
        return per_member[0]
    merged = []
    for index, target in enumerate(targets):
        # Average the members' (sparse) distributions over the vocabulary, then keep the k most likely again.
        vocab = 1 + max(int(member[index][0].max()) for member in per_member)
        dense = torch.zeros(len(target), vocab)
        for member in per_member:
            ids, probs = member[index]
            dense.scatter_add_(1, ids, probs / teacher.members)
        top = dense.topk(k, dim=-1)
        merged.append((top.indices, top.values / top.values.sum(dim=-1, keepdim=True)))
    return merged


def pseudo_outputs(frozen: FrozenModel, teacher: Teacher, texts: list[str], options: Distillation) -> list[str]:
    """What the teacher answers: its most likely label, or its greedy output (first member)."""
    if teacher.spec.kind == "classification":
        best = soft_labels(frozen, teacher, texts, 1.0).argmax(dim=-1).tolist()
        return [teacher.spec.labels[i] for i in best]
    rows = [Row(0, teacher.spec, text, options.max_new_tokens, STOP) for text in texts]
    with torch.no_grad():
        outputs = generate_rows(frozen, teacher.pool, rows)
    return [output.strip() or "." for output in outputs]  # an empty answer still needs a target to learn


def distill_objective(
    frozen: FrozenModel, spec: TaskSpec, pairs: list[tuple[str, str]], teacher: Teacher, options: Distillation
) -> Any:
    """The loss of a batch of train indices under the student module: gold CE and the KL to the teacher."""
    encoded = [encode_example(frozen, spec, text, output) for text, output in pairs]
    texts = [text for text, _ in pairs]
    alpha, temperature = options.alpha, options.temperature
    if spec.kind == "classification":
        labels = label_token_ids(frozen, spec)
        soft = soft_labels(frozen, teacher, texts, temperature).to(frozen.device)
        gold = torch.tensor([spec.labels.index(output) for _, output in pairs], device=frozen.device)

        def classification_loss(module: PromptModule, batch: list[int]) -> torch.Tensor:
            served = resolve(frozen, [module.segments()])[0]
            inputs = [encoded[i].input_ids for i in batch]
            scores = torch.stack(score_targets(frozen, [served] * len(batch), inputs, [labels] * len(batch)))
            target = soft[batch]
            kl = (target * (target.clamp_min(1e-12).log() - F.log_softmax(scores / temperature, dim=-1))).sum(-1)
            loss = (1 - alpha) * temperature**2 * kl.mean()
            if alpha > 0:
                loss = loss + alpha * F.cross_entropy(scores, gold[batch])
            return loss

        return classification_loss
    targets = [example.target_ids for example in encoded]
    top = soft_tokens(frozen, teacher, texts, targets, temperature, options.top_k)

    def generation_loss(module: PromptModule, batch: list[int]) -> torch.Tensor:
        served = resolve(frozen, [module.segments()])[0]
        logits = target_logits(
            frozen, [served] * len(batch), [encoded[i].input_ids for i in batch], [targets[i] for i in batch]
        )
        kl = ce = torch.zeros((), device=frozen.device)
        for index, row in zip(batch, logits, strict=True):
            ids, probs = (t.to(frozen.device) for t in top[index])
            student = F.log_softmax(row / temperature, dim=-1).gather(1, ids)
            kl = kl + (probs * (probs.clamp_min(1e-12).log() - student)).sum()
            ce = ce + F.cross_entropy(row, torch.tensor(targets[index], device=frozen.device), reduction="sum")
        tokens = sum(len(targets[i]) for i in batch)
        return ((1 - alpha) * temperature**2 * kl + alpha * ce) / tokens

    return generation_loss


def _score(result: TrainResult) -> tuple[float, float | None]:
    return float(result.metrics["best_val_loss"]), result.metrics["best_val_accuracy"]  # type: ignore[arg-type,return-value]


def distill(ctx: JobContext, stored: DistillOptions) -> Trained:
    """Train the student (generation after generation); the best student by validation is the one stored."""
    spec, frozen = ctx.task_spec, ctx.model
    options, teacher_spec = stored.distillation, stored.teacher
    if isinstance(teacher_spec, PromptTeacher):
        ids = [prompt_id for prompt_id, _ in ctx.teachers]
        name = "prompt" + ("s " if len(ids) > 1 else " ") + ", ".join(map(str, ids))
        teacher = prompts_teacher(frozen, spec, name, [artifact for _, artifact in ctx.teachers])
    else:
        teacher = context_teacher(frozen, spec, teacher_spec)
    texts = [text for text, _ in ctx.train]
    # Inputs without outputs take the first teacher's answers: as targets (generation) and as the labels that
    # validation measures agreement with. alpha is 0 for them (the API refuses more), so no gold term uses them.
    first_answers = None
    if any(output is None for _, output in ctx.train):
        first_answers = pseudo_outputs(frozen, teacher, texts, options)
    val = ctx.val
    if val is not None and any(output is None for _, output in val):
        val_answers = pseudo_outputs(frozen, teacher, [text for text, _ in val], options)
        val = [(text, answer) for (text, _), answer in zip(val, val_answers, strict=True)]
    labeled_val = ctx.labeled(val)
    config, init, lineage = ctx.config, ctx.init, dict[str, Any]()
    generations, steps = options.generations, ctx.config.steps
    ctx.set_total_steps(steps * generations)
    best: tuple[TrainResult, int] | None = None
    scores: dict[str, Any] = {}
    for generation in range(1, generations + 1):
        answers = first_answers
        if answers is not None and generation > 1 and spec.kind == "generation":
            answers = pseudo_outputs(frozen, teacher, texts, options)  # the new teacher's own outputs
        train = [(text, output if output is not None else answers[i]) for i, (text, output) in enumerate(ctx.train)]  # type: ignore[index]
        if generation == 1 and config.init == "auto":
            config, init, lineage = resolve_auto(frozen, spec, train, config, ctx.candidates, ctx.event)
        objective = distill_objective(frozen, spec, train, teacher, options)
        done = (generation - 1) * steps

        def on_step(report: StepReport, done: int = done) -> None:
            ctx.on_step(StepReport(done + report.step, steps * generations, report.loss, report.lr))

        result = train_prompt(
            frozen,
            spec,
            train,
            labeled_val,
            config,
            init=init,
            on_step=on_step,
            on_eval=ctx.on_eval,
            should_stop=ctx.should_stop,
            objective=objective,
        )
        loss, accuracy = _score(result)
        scores[f"G{generation}"] = {"val_loss": loss, "val_accuracy": accuracy}
        shown = f"val_accuracy {accuracy:.4f}" if accuracy is not None else f"val_loss {loss:.4f}"
        ctx.event(
            "generation",
            f"G{generation} (taught by {teacher.name}): {shown}",
            {"generation": generation, "teacher": teacher.name, "val_loss": loss, "val_accuracy": accuracy},
        )
        if best is None or is_better(loss, accuracy, _score(best[0])):
            best = (result, generation)
        teacher = prompts_teacher(frozen, spec, f"G{generation}", [result.artifact])
    assert best is not None
    result, generation = best
    teachers = [prompt_id for prompt_id, _ in ctx.teachers]
    lineage.update(teachers=teachers, teacher="prompts" if teachers else "context", generation=generation)
    return Trained(
        result.artifact,
        result.positions,
        result.best_step,
        {**result.metrics, "generation": generation, "generations": scores},
        {**ctx.config.model_dump(mode="json"), **options.model_dump(mode="json")},
        lineage=lineage,
    )
