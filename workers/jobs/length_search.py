"""`"type": "length_search"`: train one method at several prompt lengths and keep the shortest good one.

Lengths are given (e.g. 1, 5, 10, 20, 50) or derived from the token length t of the English init text (t/4, t/2,
t, 2t): the lecture's two ways to pick a length. Every length's validation score is recorded as a job event; the
stored prompt is the shortest whose score is within `tolerance` of the best (accuracy points for classification,
loss per token for generation).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.orm import Session

from app.engine.core.model import FrozenModel
from app.engine.core.text import TaskSpec
from app.engine.methods import get_method
from app.engine.methods.init import default_init_text
from app.errors import InvalidInput
from app.services.jobs import Planned
from workers.jobs.base import JobContext, JobKind, Trained
from workers.jobs.train import TrainJobCreate, check_training
from workers.training import StepReport, TrainResult, train_prompt


class LengthSearch(BaseModel):
    """A length search's options (POST /v1/jobs `search`)."""

    model_config = ConfigDict(extra="forbid")

    lengths: list[int] | Literal["from_init_text"] = Field(
        default_factory=lambda: [1, 5, 10, 20, 50],
        description='Prompt lengths to train, or "from_init_text": t/4, t/2, t and 2t for the init text\'s t tokens.',
    )
    tolerance: float = Field(
        default=0.01, ge=0, le=1, description="Keep the shortest length scoring within this of the best."
    )

    @field_validator("lengths")
    @classmethod
    def _check_lengths(cls, value: list[int] | str) -> list[int] | str:
        if isinstance(value, list):
            if not 1 <= len(value) <= 8:
                raise ValueError("give between 1 and 8 lengths.")
            if any(not 1 <= n <= 256 for n in value):
                raise ValueError("every length must be between 1 and 256.")
        return value


class LengthSearchOptions(BaseModel):
    """What a length_search job stores in Job.options."""

    search: LengthSearch = Field(default_factory=LengthSearch)


class LengthSearchJobCreate(TrainJobCreate):
    type: Literal["length_search"] = Field(description="Train several prompt lengths; keep the shortest good one.")  # type: ignore[assignment]
    search: LengthSearch | None = Field(default=None, description="The lengths to try and the tolerance.")


def search_lengths(search: LengthSearch, model: FrozenModel, spec: TaskSpec, init_text: str | None) -> list[int]:
    """The lengths to train, ascending and distinct."""
    if isinstance(search.lengths, list):
        return sorted(set(search.lengths))
    tokens = max(1, len(model.encode(init_text or default_init_text(spec))))
    return sorted({min(256, max(1, n)) for n in (tokens // 4, tokens // 2, tokens, 2 * tokens)})


class LengthSearchKind(JobKind):
    name: ClassVar[str] = "length_search"
    Body = LengthSearchJobCreate
    Options = LengthSearchOptions

    def check(self, session: Session, body: LengthSearchJobCreate, model: FrozenModel | None) -> Planned:
        config = body.hyperparameters
        if config.init_prompt_id is not None or config.init == "auto":
            raise InvalidInput(
                "a length search trains prompts of several lengths, so no one stored prompt fits them all; start it "
                'from "text", "vocab", "random" or "labels"',
                code="init_prompt_invalid",
            )
        options = LengthSearchOptions(search=body.search or LengthSearch())
        positions = get_method(config.method).positions(config)
        if isinstance(options.search.lengths, list):
            positions += max(options.search.lengths) - config.num_virtual_tokens
        task, config = check_training(session, body, model, "to search lengths", positions)
        return Planned(
            self.name,
            config.model_dump(mode="json"),
            options.model_dump(mode="json"),
            config.steps,
            f"length_search job ({config.method}) queued for task {task.name!r}",
            task=task,
            dataset_id=body.dataset_id,
            validation_dataset_id=body.validation_dataset_id,
        )

    def run(self, ctx: JobContext) -> Trained:
        search: LengthSearch = ctx.options.search
        lengths = search_lengths(search, ctx.model, ctx.task_spec, ctx.config.init_text)
        train, val = ctx.labeled(ctx.train) or [], ctx.labeled(ctx.val)
        steps = ctx.config.steps
        ctx.set_total_steps(steps * len(lengths))
        results: list[tuple[int, TrainResult]] = []
        for index, length in enumerate(lengths):
            config = ctx.config.model_copy(update={"num_virtual_tokens": length})
            done = index * steps

            def on_step(report: StepReport, done: int = done) -> None:
                ctx.on_step(StepReport(done + report.step, steps * len(lengths), report.loss, report.lr))

            result = train_prompt(
                ctx.model,
                ctx.task_spec,
                train,
                val,
                config,
                on_step=on_step,
                on_eval=ctx.on_eval,
                should_stop=ctx.should_stop,
            )
            results.append((length, result))
            metrics = {key: result.metrics[key] for key in ("best_val_accuracy", "best_val_loss", "best_step")}
            ctx.event("length", f"length {length}: score {result.value:.4f}", {"length": length, **metrics})
        best = max(result.value for _, result in results)
        length, chosen = next((n, r) for n, r in results if r.value >= best - search.tolerance)
        scores = {str(n): r.value for n, r in results}
        ctx.event(
            "length_chosen",
            f"kept length {length} (score {chosen.value:.4f}; best {best:.4f}, tolerance {search.tolerance})",
            {"length": length, "scores": scores},
        )
        hyperparameters = {**ctx.config.model_dump(mode="json"), "num_virtual_tokens": length}
        return Trained(
            chosen.artifact,
            chosen.positions,
            chosen.best_step,
            {**chosen.metrics, "length_scores": scores},
            hyperparameters,
        )


KIND = LengthSearchKind()
