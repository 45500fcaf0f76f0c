"""What a tune job takes: its budget and its search space (stored in Job.options)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from app.bodies import Strict
from app.engine.methods import REGISTRY


class StepBudget(Strict):
    steps: int = Field(ge=1, le=100_000, description="Optimizer steps over all trials.")


class TimeBudget(Strict):
    minutes: float = Field(gt=0, le=24 * 60, description="Wall time of the search; the trials running then finish.")


class SearchSpace(Strict):
    """What a tune job searches over."""

    methods: list[str] | Literal["all"] = Field(default="all", description='Methods to try, or "all".')
    num_virtual_tokens: list[int] = Field(
        default_factory=lambda: [5, 10, 20], min_length=1, max_length=8, description="Prompt lengths to try."
    )
    learning_rate: tuple[float, float] | None = Field(
        default=None,
        description="[low, high], sampled on a log scale; by default each method's own default / 5 to x 5.",
    )
    init: list[Literal["text", "vocab", "random", "labels"]] | None = Field(
        default=None, min_length=1, description='Inits to try; by default "text" (and "labels" for classification).'
    )
    label_head: list[bool] | None = Field(
        default=None,
        min_length=1,
        description="Label readouts to try (classification): false scores the label words, true a learned linear "
        "head over the final hidden state; by default both for classification, neither for generation.",
    )
    patience: int | None = Field(
        default=2,
        ge=1,
        le=100,
        description="A trial stops after this many of its evaluations (five per trial) in a row without a better "
        "score, and the steps it did not run go back to the budget; null trains every trial to its end.",
    )
    steps_per_trial: int = Field(default=200, ge=5, le=10_000, description="Steps a trial trains at most.")
    pack: int = Field(
        default=4,
        ge=1,
        le=16,
        description="Trials trained at once in shared passes, a slot refilled as soon as its trial ends (1: one "
        "after another).",
    )

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, list):
            unknown = [name for name in value if name not in REGISTRY]
            if unknown or not value:
                raise ValueError(f'methods must be some of {", ".join(sorted(REGISTRY))} (or "all"); got {value}.')
        return value

    @field_validator("num_virtual_tokens")
    @classmethod
    def _lengths(cls, value: list[int]) -> list[int]:
        if any(not 1 <= n <= 256 for n in value):
            raise ValueError("every length must be between 1 and 256.")
        return value

    @model_validator(mode="after")
    def _learning_rate_range(self) -> SearchSpace:
        if self.learning_rate is not None:
            low, high = self.learning_rate
            if not 0 < low < high <= 10:
                raise ValueError("learning_rate is [low, high] with 0 < low < high <= 10.")
        return self

    def method_names(self) -> list[str]:
        return sorted(REGISTRY) if self.methods == "all" else list(dict.fromkeys(self.methods))


class TuneOptions(BaseModel):
    """What a tune job stores in Job.options."""

    budget: StepBudget | TimeBudget
    search: SearchSpace
    seed: int = 0
    ensemble: int | None = None
    distill: bool = False
