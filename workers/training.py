"""Train prompts of any method on a frozen model: read top to bottom, nanoGPT style. Torch only, no DB.

`train_prompts` trains several jobs at once: every step, the rows of each job's batch (each with its own job's
prompt) share one forward/backward pass, while each job keeps its own optimizer, schedule, batch order,
validation, best checkpoint, cancel and progress. One job failing or cancelled never disturbs the others.
`train_prompt` is the same loop for one job. A caller may keep the pack full: `refill` hears of each job that ends
and may hand over another to train in its place (a tune job's search, one trial per job).

Training, validation and serving share one forward (app/engine/core/forward.py): a step scores the gold targets of the
batches over the modules' current prompts with gradients; validation serves a job's current prompt through the
same batched path the inference engine uses (its keys/values computed once per evaluation).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import torch

from app.engine.core.model import FrozenModel
from app.engine.core.text import TaskSpec
from app.engine.formats.artifact import Artifact
from app.engine.methods import TrainConfig, get_method
from app.engine.methods.base import PromptModule
from workers.loop import Cancelled, EvalReport, Loop, StepReport, ranking_value
from workers.train_steps import (
    batch_loss,
    batch_losses,
    batches,
    encode_all,
    evaluate,
    get_lr,
    split_validation,
    validation_indices,
)

__all__ = [
    "Cancelled",
    "Ended",
    "EvalReport",
    "StepReport",
    "TrainJob",
    "TrainResult",
    "batch_loss",
    "encode_all",
    "get_lr",
    "split_validation",
    "train_prompt",
    "train_prompts",
]


@dataclass
class TrainResult:
    """The best prompt seen (a detached CPU artifact), the step it came from, and summary metrics."""

    artifact: Artifact
    positions: int
    best_step: int
    metrics: dict[str, float | int | None]

    @property
    def value(self) -> float:
        """The best checkpoint's ranking value (loop.ranking_value): what a length search and a tune job compare."""
        return ranking_value(self.metrics["best_val_loss"], self.metrics["best_val_accuracy"])  # type: ignore[arg-type]


Objective = Callable[[PromptModule, list[int]], torch.Tensor]


@dataclass
class TrainJob:
    """One training job's inputs. objective: the loss of a batch, given the module and the batch's indices into
    `train` as passed (default: the gold outputs' cross-entropy per token); a distillation brings its teacher's
    term this way, and such a job runs its own pass beside the packed ones."""

    spec: TaskSpec
    train: list[tuple[str, str]]
    val: list[tuple[str, str]] | None
    config: TrainConfig
    init: Artifact | None = None
    on_step: Callable[[StepReport], None] | None = None
    on_eval: Callable[[EvalReport], None] | None = None
    should_stop: Callable[[], bool] | None = None
    objective: Objective | None = None


@dataclass
class Ended:
    """A job of train_prompts that ended: its result or the exception that ended it, the steps it ran, and the most
    other jobs that shared one pass with it."""

    job: TrainJob
    outcome: TrainResult | Exception
    steps: int
    packed_with: int


Refill = Callable[[Ended], TrainJob | None]


class _Run:
    """One job's state through the loop: its module, optimizer, batch order, best checkpoint and timings."""

    def __init__(self, frozen: FrozenModel, job: TrainJob) -> None:
        if not job.train:
            raise ValueError("the training set is empty.")
        self.frozen, self.job, config = frozen, job, job.config
        method = get_method(config.method)
        method.check(frozen, config)
        # One seeded CPU generator per job drives its split, initialisation and batch order, so a seeded job is
        # bit-reproducible on CPU, and trains the same packed beside others as alone.
        generator = torch.Generator().manual_seed(config.seed)
        train, val = job.train, job.val
        self.index = list(range(len(train)))  # position in the job's train of each example trained on
        if not val:
            self.index, held = validation_indices(len(train), config, generator)
            train, val = [train[i] for i in self.index], [train[i] for i in held]
        elif len(val) > config.max_validation_examples:
            keep = torch.randperm(len(val), generator=generator)[: config.max_validation_examples].tolist()
            val = [val[i] for i in sorted(keep)]
        positions = method.positions(config)
        self.train_examples = encode_all(frozen, job.spec, train, positions, "training")
        self.val, self.val_examples = val, encode_all(frozen, job.spec, val, positions, "validation")
        self.module = method.build(frozen, config, job.spec, generator, job.init)
        # The optimizer sees the prompt and nothing else: the base model is frozen and shared.
        self.optimizer = torch.optim.AdamW(
            self.module.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        self.sampler = batches(len(self.train_examples), min(config.batch_size, len(self.train_examples)), generator)
        self.most_packed = 1
        self.loop = Loop(
            self.module,
            config.steps,
            config.eval_every,
            lambda: evaluate(frozen, job.spec, self.module, self.val, self.val_examples),
            on_step=job.on_step,
            on_eval=job.on_eval,
            should_stop=job.should_stop,
            patience=config.patience,
        )

    @property
    def done(self) -> bool:
        return self.loop.done

    def begin_step(self) -> list[int]:
        """Check for a cancel, set this step's learning rate, and draw its batch (indices into the examples)."""
        self.loop.check_stop()
        for group in self.optimizer.param_groups:
            group["lr"] = get_lr(self.loop.step, self.job.config)
        self.optimizer.zero_grad(set_to_none=True)
        return next(self.sampler)

    def own_loss(self, batch: list[int]) -> torch.Tensor:
        """The loss of a job with its own objective (it runs its own pass)."""
        assert self.job.objective is not None
        return self.job.objective(self.module, [self.index[i] for i in batch])

    def end_step(self, loss: float, seconds: float, packed: int) -> None:
        """After backward: clip, step the optimizer, then report and evaluate when due (workers/loop.py). seconds:
        wall time of the pass this job took part in (shared with the jobs packed beside it)."""
        torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.job.config.max_grad_norm)
        self.optimizer.step()
        self.most_packed = max(self.most_packed, packed)
        self.loop.stepped(loss, self.optimizer.param_groups[0]["lr"], seconds)

    def result(self) -> TrainResult:
        artifact, best_step = self.loop.best_result()
        return TrainResult(
            artifact=artifact,
            positions=self.module.positions,
            best_step=best_step,
            metrics={
                **self.loop.metrics(),
                "final_train_loss": self.loop.train_loss,
                "packed_with": self.most_packed - 1,
                "train_size": len(self.train_examples),
                "val_size": len(self.val_examples),
            },
        )


def _shared_pass(frozen: FrozenModel, runs: list[_Run], drawn: dict[_Run, list[int]]) -> dict[_Run, float]:
    """One forward/backward over every run's batch; each run's own loss, by run."""
    losses = batch_losses(frozen, [(run.module, [run.train_examples[i] for i in drawn[run]]) for run in runs])
    losses.sum().backward()
    return {run: float(loss) for run, loss in zip(runs, losses.detach(), strict=True)}


def train_prompts(
    frozen: FrozenModel, jobs: Sequence[TrainJob], *, refill: Refill | None = None
) -> list[TrainResult | BaseException]:
    """Train every job to its own number of steps; for each, its result or the exception that ended it.

    Jobs with the default objective share one pass per step; a job whose pass failed is retried alone that step,
    so only the job at fault ends. KeyboardInterrupt and SystemExit still end the whole call. refill, when given,
    is called as each job ends and may return a job to train in its place from the next step on; the outcomes of
    the jobs it returned follow those of `jobs`, in the order they were returned.
    """
    outcomes: list[TrainResult | BaseException | None] = []
    runs: dict[_Run, int] = {}
    waiting = list(jobs)

    def finish(number: int, ended: Ended) -> None:
        outcomes[number] = ended.outcome
        if refill is not None and (job := refill(ended)) is not None:
            waiting.append(job)

    def end(run: _Run, outcome: TrainResult | Exception) -> None:
        finish(runs.pop(run), Ended(run.job, outcome, run.loop.step, run.most_packed - 1))

    while True:
        for run in [run for run in runs if run.done]:
            end(run, run.result())
        while waiting:  # a job that cannot start ends at once (and may be refilled in turn)
            job = waiting.pop(0)
            outcomes.append(None)
            try:
                runs[_Run(frozen, job)] = len(outcomes) - 1
            except Exception as error:
                finish(len(outcomes) - 1, Ended(job, error, 0, 0))
        if not runs:
            break
        started = time.perf_counter()
        drawn: dict[_Run, list[int]] = {}
        for run in list(runs):
            try:
                drawn[run] = run.begin_step()
            except Exception as error:
                end(run, error)
        shared = [run for run in drawn if run.job.objective is None]
        losses: dict[_Run, float] = {}
        packed = 1
        if len(shared) > 1:
            try:
                losses, packed = _shared_pass(frozen, shared, drawn), len(shared)
            except Exception:
                # Find the job at fault: each runs its step alone below.
                for run in shared:
                    run.optimizer.zero_grad(set_to_none=True)
        for run in drawn:
            if run in losses:
                continue
            try:
                if run.job.objective is None:
                    losses[run] = _shared_pass(frozen, [run], drawn)[run]
                else:
                    own = run.own_loss(drawn[run])
                    own.backward()
                    losses[run] = float(own.detach())
            except Exception as error:
                end(run, error)
        seconds = time.perf_counter() - started
        for run, loss in losses.items():
            try:
                run.end_step(loss, seconds, packed if run in shared else 1)
            except Exception as error:
                end(run, error)
    assert all(outcome is not None for outcome in outcomes)
    return cast(list[TrainResult | BaseException], outcomes)


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
    """Train config.method's prompt with AdamW on the frozen model; return the best prompt by validation metric."""
    job = TrainJob(spec, train, val, config, init, on_step, on_eval, should_stop, objective)
    (outcome,) = train_prompts(frozen, [job])
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome
