"""The job types POST /v1/jobs accepts, and what each takes besides the method's hyperparameters.

A distill or meta_init job's own hyperparameters (alpha, temperature; order, inner_steps, ...) arrive in the same
`hyperparameters` object as the method's. Each job type's body validates them with one model that is the method's
config and the job type's options together (`app.engine.methods.config_union`); the job row stores them together,
and the worker splits them again with `split_options`.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

JOB_TYPES = ("train", "length_search", "distill", "meta_init")
JobType = Literal["train", "length_search", "distill", "meta_init"]


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


class Distillation(BaseModel):
    """A distill job's own hyperparameters (beside the student's method and training loop)."""

    model_config = ConfigDict(extra="forbid")

    alpha: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Weight of the gold outputs' cross-entropy; 1 - alpha weighs the KL to the teacher. 0 trains "
        "on the teacher alone and accepts datasets without outputs.",
    )
    temperature: float = Field(default=2.0, gt=0, le=100, description="Softens both distributions in the KL term.")
    generations: int = Field(
        default=1, ge=1, le=10, description="Distil again with each student as the next teacher (G0 -> G1 -> ...)."
    )
    top_k: int = Field(
        default=64,
        ge=1,
        le=4096,
        description="Generation tasks: the teacher's most likely next tokens kept per output position.",
    )
    max_new_tokens: int = Field(
        default=32, ge=1, le=512, description="Generation tasks without outputs: length of the teacher's outputs."
    )


MetaOrder = Literal["second", "first", "reptile"]
# Fields of the training loop that a meta_init job replaces with its own.
_REPLACED = {
    "steps": "outer_steps",
    "learning_rate": "outer_lr",
    "batch_size": "support_size and query_size",
    "warmup_steps": "outer_steps",
    "validation_fraction": "query_size",
}


class MetaLearning(BaseModel):
    """A meta_init job's own hyperparameters: MAML's inner and outer loops."""

    model_config = ConfigDict(extra="forbid")

    order: MetaOrder = Field(
        default="first",
        description='"second": differentiate through the inner steps (Hessian-vector products); "first": the '
        'first-order approximation; "reptile": move towards the adapted prompt.',
    )
    inner_steps: int = Field(default=3, ge=1, le=50, description="K: SGD steps on a task's support set.")
    inner_lr: float = Field(default=0.01, gt=0, le=100, description="SGD learning rate of the inner steps.")
    outer_lr: float = Field(default=0.01, gt=0, le=10, description="Adam learning rate of the initialisation.")
    outer_steps: int = Field(default=100, ge=1, le=100_000, description="Updates of the initialisation.")
    meta_batch: int = Field(default=4, ge=1, le=64, description="Tasks sampled per outer step.")
    support_size: int = Field(default=8, ge=1, le=256, description="Examples a task adapts on, per sample.")
    query_size: int = Field(default=8, ge=1, le=256, description="Examples the adapted prompt is scored on.")

    @model_validator(mode="after")
    def _no_training_loop_fields(self) -> MetaLearning:
        given = sorted(set(_REPLACED) & self.model_fields_set)
        if given:
            uses = ", ".join(f"{name} (use {_REPLACED[name]})" for name in given)
            raise ValueError(f"a meta_init job has no {uses}.")
        return self


Options = TypeVar("Options", bound=BaseModel)


def split_options(data: dict[str, Any], options: type[Options]) -> tuple[dict[str, Any], Options]:
    """A job row's hyperparameters as the method's part and the job type's options."""
    own = {key: value for key, value in data.items() if key in options.model_fields}
    rest = {key: value for key, value in data.items() if key not in options.model_fields}
    return rest, options.model_validate(own)


JOB_OPTIONS: dict[str, type[BaseModel]] = {"distill": Distillation, "meta_init": MetaLearning}


def job_config(job_type: str, hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """The method's part of a job row's hyperparameters (what parse_config reads)."""
    options = JOB_OPTIONS.get(job_type)
    return hyperparameters if options is None else split_options(hyperparameters, options)[0]
