"""What a meta_init job takes besides the prompt's method: its tasks, its name, and MAML's loops."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MetaOrder = Literal["second", "first", "reptile"]
# Fields of the training loop that a meta_init job replaces with its own.
REPLACED = {
    "steps": "outer_steps",
    "learning_rate": "outer_lr",
    "batch_size": "support_size and query_size",
    "warmup_steps": "outer_steps",
    "validation_fraction": "query_size",
}

# The training loop's fields left out of a meta_init job's stored hyperparameters (the outer loop replaces them).
NOT_STORED = frozenset({"steps", "learning_rate", "batch_size", "warmup_steps"})


class MetaLearning(BaseModel):
    """A meta_init job's own hyperparameters: MAML's inner and outer loops (in the body's `hyperparameters`)."""

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
        given = sorted(set(REPLACED) & self.model_fields_set)
        if given:
            uses = ", ".join(f"{name} (use {REPLACED[name]})" for name in given)
            raise ValueError(f"a meta_init job has no {uses}.")
        return self


class SourceTask(BaseModel):
    """A task a meta_init job learns from, as checked at enqueue."""

    task_id: int
    task_name: str
    dataset_id: int


class MetaInitOptions(BaseModel):
    """What a meta_init job stores in Job.options."""

    name: str
    tasks: list[SourceTask]
    meta: MetaLearning = Field(default_factory=MetaLearning)
