"""A search's trials: asked from the study one at a time, trained up to `search.pack` at once in shared passes
(workers/training.train_prompts, a slot refilled with a newly asked trial as soon as its trial ends), each reporting
its evaluations to the study, which may prune it, and each recorded (a JobTrial row; a `trial` event once ended).

The budget counts trial steps: a pass of four trials spends four. A trial is asked only while the budget holds
steps for one beyond what the running trials may still run, so the search never exceeds it; a pruned trial's
unused steps go to the trials asked after it. The job's step is the search's count of trial steps so far: it only
grows, and its total is the step budget.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
from pydantic import ValidationError

from app.engine.methods import TrainConfig, get_method
from workers.jobs.base import JobContext
from workers.jobs.tune.options import StepBudget, TuneOptions
from workers.training import Ended, EvalReport, StepReport, TrainJob, TrainResult, train_prompts

ENDED = {"pruned": optuna.trial.TrialState.PRUNED, "failed": optuna.trial.TrialState.FAIL}
MAX_FAILED = 20  # trials that fail before the search gives up (a space where nothing trains)
MIN_TRIAL_STEPS = 5  # a trial shorter than this has too few evaluations to rank

Finished = tuple[float, int, TrainResult, TrainConfig]  # (value, trial number, result, config)


@dataclass
class _Live:
    """A trial training now: its config, its scores so far, and the job's step when it began."""

    trial: optuna.Trial
    config: TrainConfig
    job: TrainJob | None = None
    scores: list[float] = field(default_factory=list)
    began: int = 0


class Trials:
    """The trials of one search, trained `search.pack` at once until the budget is spent."""

    def __init__(
        self,
        ctx: JobContext,
        options: TuneOptions,
        study: optuna.Study,
        configure: Callable[[optuna.Trial, int], TrainConfig],
        train: list[tuple[str, str]],
        val: list[tuple[str, str]],
    ) -> None:
        self.ctx, self.options, self.study, self.configure = ctx, options, study, configure
        self.train, self.val = train, val
        self.started = time.monotonic()
        self.spent = 0  # steps the ended trials ran
        self.step = 0  # the job's step: trial steps of the whole search so far
        self.total = 0
        self.live: list[_Live] = []
        self.finished: list[Finished] = []
        self.ended: dict[str, int] = {"finished": 0, "pruned": 0, "failed": 0}
        # What ends the whole search (a cancel, a lost job, a stopping worker): the running trials stop at their next
        # step and the search raises it.
        self.fatal: Exception | None = None

    def run(self) -> None:
        """Train trials until the budget is spent (or too many failed)."""
        jobs = [job for _ in range(self.options.search.pack) if (job := self.next()) is not None]
        if jobs:
            train_prompts(self.ctx.model, jobs, refill=self.refill)
        if self.fatal is not None:
            raise self.fatal

    def left(self) -> int | None:
        """Steps the budget still has beyond what the running trials may run; None while a time budget lasts."""
        budget = self.options.budget
        if isinstance(budget, StepBudget):
            return budget.steps - self.spent - sum(live.config.steps for live in self.live)
        return None if time.monotonic() - self.started < budget.minutes * 60 else 0

    def next(self) -> TrainJob | None:
        """The next trial's training job, asked from the study while the budget has steps for one; else None."""
        search, budget = self.options.search, self.options.budget
        while self.fatal is None and self.ended["failed"] < MAX_FAILED:
            remaining = self.left()
            if remaining is not None and remaining < MIN_TRIAL_STEPS:
                return None
            steps = search.steps_per_trial if remaining is None else min(search.steps_per_trial, remaining)
            held = self.spent + sum(live.config.steps for live in self.live) + steps
            self.total = budget.steps if isinstance(budget, StepBudget) else max(self.total, held)
            self.ctx.set_total_steps(self.total)
            trial = self.study.ask()
            try:
                config = self.configure(trial, steps)
                get_method(config.method).check(self.ctx.model, config)
            except (ValidationError, ValueError) as exc:
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                row = _row(trial.params.get("method", "?"), {}, 0, [], None, "failed")
                self.ctx.record_trial(trial.number, row, self._details(0, self.step))
                self.ctx.event("warning", f"trial {trial.number}: {exc}", {"number": trial.number})
                self.ended["failed"] += 1
                continue
            return self._start(trial, config)
        return None

    def _start(self, trial: optuna.Trial, config: TrainConfig) -> TrainJob:
        live = _Live(trial, config, began=self.step)
        shown = config.model_dump(mode="json")

        def on_step(report: StepReport) -> None:
            self.step += 1
            self.ctx.on_step(StepReport(self.step, self.total, report.loss, report.lr))

        def on_eval(report: EvalReport) -> None:
            score = report.value
            live.scores.append(score)
            self.ctx.on_eval(EvalReport(self.step, report.val_loss, report.val_accuracy))
            row = _row(config.method, shown, report.step, live.scores, max(live.scores), "running")
            self.ctx.record_trial(trial.number, row)
            if report.step > 0:
                trial.report(score, step=report.step)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at step {report.step}")

        live.job = TrainJob(
            self.ctx.task_spec,
            self.train,
            self.val,
            config,
            on_step=on_step,
            on_eval=on_eval,
            should_stop=lambda: self.fatal is not None or self.ctx.should_stop(),
        )
        self.live.append(live)
        self.ctx.record_trial(trial.number, _row(config.method, shown, 0, [], None, "running"))
        return live.job

    def refill(self, ended: Ended) -> TrainJob | None:
        """A trial ended: tell the study, record it, and return the next trial to train in its slot (or None)."""
        live = next(live for live in self.live if live.job is ended.job)
        self.live.remove(live)
        if self.fatal is not None:
            return None
        outcome, number, config, scores = ended.outcome, live.trial.number, live.config, live.scores
        if isinstance(outcome, TrainResult):
            state = "finished"
        elif isinstance(outcome, optuna.TrialPruned):
            state = "pruned"
        elif isinstance(outcome, ValueError | RuntimeError):  # this configuration fails; the search goes on
            state = "failed"
            self.ctx.event("warning", f"trial {number} failed: {outcome}", {"number": number})
        else:
            self.fatal = outcome
            return None
        value = max(scores) if scores and state == "pruned" else None  # a pruned trial ranks by what it reached
        if isinstance(outcome, TrainResult):
            value = outcome.value
        if state == "finished":
            self.study.tell(live.trial, value)
        else:
            self.study.tell(live.trial, state=ENDED[state])
        row = _row(config.method, config.model_dump(mode="json"), ended.steps, scores, value, state)
        self.ctx.record_trial(number, row, self._details(ended.packed_with, live.began))
        self.ended[state] += 1
        if isinstance(outcome, TrainResult) and value is not None:
            self.finished.append((value, number, outcome, config))
        self.spent += ended.steps
        return self.next()

    def _details(self, packed_with: int, began: int) -> dict[str, Any]:
        """An ended trial's event details: the most other trials that shared a pass with it, and the job's steps
        it lived between (trials whose spans overlap trained side by side)."""
        return {"packed_with": packed_with, "began_at_step": began, "ended_at_step": self.step}


def _row(
    method: str, hyperparameters: dict[str, Any], steps: int, scores: list[float], value: float | None, state: str
) -> dict[str, Any]:
    """A trial's JobTrial columns (non-finite scores stored as None-free floats are kept finite for JSON)."""
    clean = [score if math.isfinite(score) else -1e30 for score in scores]
    return {
        "method": method,
        "hyperparameters": hyperparameters,
        "steps": steps,
        "scores": clean,
        "value": value,
        "state": state,
    }
