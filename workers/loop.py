"""The skeleton every training loop shares (a train job's steps, each length of a length search, each generation
of a distillation, a meta_init job's outer steps): the cancel check, a report after every step, an evaluation every
`eval_every` steps and at the last, the best checkpoint by validation, early stopping on the validation curve, and
the summary metrics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from app.engine.formats.artifact import Artifact
from app.engine.methods.base import PromptModule
from workers.train_steps import is_better

Score = tuple[float, float | None]  # (validation loss, validation accuracy or None for generation)


def ranking_value(loss: float, accuracy: float | None) -> float:
    """One number to rank runs by, higher is better: validation accuracy, or minus the loss (generation)."""
    return float(accuracy) if accuracy is not None else -float(loss)


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

    @property
    def value(self) -> float:
        return ranking_value(self.val_loss, self.val_accuracy)


class Cancelled(Exception):
    """should_stop() asked the job to end; nothing is returned."""


class Loop:
    """One run's steps: evaluates the start at once (step 0), then after each `stepped` when due, keeping the
    module's best artifact. `evaluate` scores the module as it is now; the callbacks relay to the job's progress.
    With `patience`, the run is done after that many evaluations in a row without a better score."""

    def __init__(
        self,
        module: PromptModule,
        total_steps: int,
        eval_every: int,
        evaluate: Callable[[], Score],
        *,
        on_step: Callable[[StepReport], None] | None = None,
        on_eval: Callable[[EvalReport], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        unit: str = "step",
        patience: int | None = None,
    ) -> None:
        self.module, self.total_steps, self.eval_every = module, total_steps, eval_every
        self._evaluate, self.on_step, self.on_eval, self.should_stop = evaluate, on_step, on_eval, should_stop
        self.unit = unit  # how a cancel names the step it stopped at ("outer step")
        self.step, self.train_loss, self.seconds = 0, float("nan"), 0.0
        self.stopped_early_at: int | None
        self.patience, self.stale, self.stopped_early_at = patience, 0, None
        self.best = self.first = self.evaluate()
        self.best_step, self.best_artifact = 0, module.artifact()

    @property
    def done(self) -> bool:
        return self.step >= self.total_steps or self.stopped_early_at is not None

    def evaluate(self) -> Score:
        """Score the module now and report it."""
        score = self._evaluate()
        if self.on_eval is not None:
            self.on_eval(EvalReport(step=self.step, val_loss=score[0], val_accuracy=score[1]))
        return score

    def check_stop(self) -> None:
        """Raise Cancelled when the job was asked to stop (before a step begins)."""
        if self.should_stop is not None and self.should_stop():
            raise Cancelled(f"stopped at {self.unit} {self.step + 1} of {self.total_steps}")

    def stepped(self, loss: float, lr: float, seconds: float) -> None:
        """After an optimizer step: report it, and evaluate when due (keeping the best)."""
        self.step += 1
        self.train_loss, self.seconds = loss, self.seconds + seconds
        if self.on_step is not None:
            self.on_step(StepReport(step=self.step, total_steps=self.total_steps, loss=loss, lr=lr))
        if self.step % self.eval_every == 0 or self.step == self.total_steps:
            current = self.evaluate()
            if is_better(*current, self.best):
                self.best, self.best_step, self.stale = current, self.step, 0
                self.best_artifact = self.module.artifact()
            else:
                self.stale += 1
                if self.patience is not None and self.stale >= self.patience and self.step < self.total_steps:
                    self.stopped_early_at = self.step

    def metrics(self) -> dict[str, float | int | None]:
        """What every run reports: the best checkpoint's step and scores, the start's, time per step, size."""
        return {
            "best_step": self.best_step,
            "best_val_loss": self.best[0],
            "best_val_accuracy": self.best[1],
            "init_val_loss": self.first[0],
            "init_val_accuracy": self.first[1],
            "seconds_per_step": self.seconds / max(1, self.step),
            "steps": self.total_steps,
            "stopped_early_at": self.stopped_early_at,
            "trainable_parameters": sum(p.numel() for p in self.module.parameters() if p.requires_grad),
        }

    def best_result(self) -> tuple[Artifact, int]:
        """The best artifact and the step it came from."""
        return self.best_artifact, self.best_step
