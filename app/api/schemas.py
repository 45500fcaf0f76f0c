"""Request and response bodies of the HTTP API (the contract; add fields, never rename them)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.engine.methods import TrainConfigUnion
from app.engine.methods.prompt import PromptConfig
from app.services.job_types import JobType, LengthSearch


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable error code.")
    message: str = Field(description="What went wrong and what to fix.")
    details: Any = None


class ErrorResponse(BaseModel):
    error: ErrorBody


# --- datasets -------------------------------------------------------------------------------------------


class DatasetCreate(Strict):
    name: str = Field(min_length=1, max_length=200)
    examples: list[dict[str, Any]] = Field(description='[{"input": "...", "output": "..."}, ...]')


class DatasetOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    num_examples: int
    labels: list[str]
    created_at: datetime


class DatasetDetail(DatasetOut):
    preview: list[dict[str, str]] = Field(description="The first few examples.")


class EnsembleTop(Strict):
    top: int = Field(ge=1, le=16, description="The task's k best versions by validation score.")


PromptIds = Annotated[list[Annotated[int, Field(ge=1, le=2**31 - 1)]], Field(min_length=1, max_length=16)]


def ensemble_spec(value: PromptIds | EnsembleTop | None) -> list[int] | dict[str, int] | None:
    """An ensemble as services take it: prompt ids, {"top": k}, or None."""
    return value.model_dump() if isinstance(value, EnsembleTop) else value


# --- tasks ----------------------------------------------------------------------------------------------

TaskStatus = Literal["untrained", "training", "ready"]


class TaskCreate(Strict):
    name: str = Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z][A-Za-z0-9_.-]*$",
        description="Unique; starts with a letter (so it never reads as an id).",
    )
    kind: Literal["classification", "generation"]
    labels: list[str] = Field(default_factory=list, description="Required (two or more) for classification.")
    template: str | None = Field(
        default=None, max_length=2000, description='Must contain "{input}"; a default is chosen per kind.'
    )


class TaskOut(BaseModel):
    id: int
    name: str
    kind: str
    labels: list[str]
    template: str
    status: TaskStatus
    active_prompt_id: int | None
    ensemble: PromptIds | EnsembleTop | None = Field(
        default=None, description="Served by default instead of the active version (classification)."
    )
    created_at: datetime


class TaskUpdate(Strict):
    ensemble: PromptIds | EnsembleTop | None = Field(
        description='Serve an ensemble by default: prompt ids of this task, {"top": k}, or null for the active '
        "version alone."
    )


# --- jobs -----------------------------------------------------------------------------------------------


class JobCreate(Strict):
    type: JobType = Field(default="train", description='"train", or "length_search" (trains several lengths).')
    task: str | int = Field(description="Task id or name.")
    dataset_id: int
    validation_dataset_id: int | None = None
    hyperparameters: TrainConfigUnion = Field(  # type: ignore[valid-type]
        default_factory=PromptConfig,
        description='The method (`method`, default "prompt") and its hyperparameters.',
    )
    search: LengthSearch | None = Field(default=None, description='Options of a "length_search" job.')
    priority: int = Field(default=0, ge=-100, le=100, description="Higher runs first.")

    @model_validator(mode="after")
    def _check_type_options(self) -> JobCreate:
        if self.search is not None and self.type != "length_search":
            raise ValueError('"search" only goes with "type": "length_search".')
        return self


class JobProgress(BaseModel):
    step: int = 0
    total_steps: int = 0
    loss: float | None = None
    val_accuracy: float | None = None
    val_loss: float | None = None


class JobOut(BaseModel):
    id: int
    type: str
    task: int
    task_name: str
    dataset_id: int | None
    validation_dataset_id: int | None
    status: str
    progress: JobProgress
    hyperparameters: dict[str, Any]
    result_prompt_id: int | None
    error: str | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobEventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: str
    message: str
    data: dict[str, Any]
    created_at: datetime


# --- prompts --------------------------------------------------------------------------------------------


class BaseModelIdentity(BaseModel):
    name: str
    fingerprint: str


class PromptOut(BaseModel):
    id: int
    task: int
    version: int
    active: bool
    method: str
    num_virtual_tokens: int = Field(description="Positions the prompt adds to each row (before and after the input).")
    shapes: dict[str, list[int]] = Field(description="Shape of each stored tensor, by name.")
    hidden_size: int
    base_model: BaseModelIdentity
    size_bytes: int
    metrics: dict[str, Any]
    hyperparameters: dict[str, Any]
    job_id: int | None
    dataset_id: int | None
    created_at: datetime


# --- inference ------------------------------------------------------------------------------------------


class InferRequest(Strict):
    task: str | int = Field(description="Task id or name.")
    inputs: list[str] = Field(min_length=1)
    max_new_tokens: int = Field(default=32, ge=1, le=512, description="Generation tasks only.")
    stop: list[str] = Field(default_factory=list, max_length=8, description="Generation: cut at these strings.")
    priority: int = Field(default=0, ge=-100, le=100, description="Higher is served first when the queue is busy.")
    timeout_ms: int | None = Field(
        default=None, ge=1, le=600_000, description="Fail fast with 503 if not started within this time."
    )
    ensemble: PromptIds | EnsembleTop | None = Field(
        default=None,
        description="Classification: average the label probabilities of these versions of the task (prompt ids, "
        'or {"top": k}: the k best by validation score), run in the same batches.',
    )


class EmbedRequest(Strict):
    task: str | int = Field(description="Task id or name.")
    inputs: list[str] = Field(min_length=1)
    pooling: Literal["last", "mean"] = Field(
        default="last", description="The last position's hidden state, or the mean over the input's positions."
    )
    priority: int = Field(default=0, ge=-100, le=100, description="Higher is served first when the queue is busy.")
    timeout_ms: int | None = Field(
        default=None, ge=1, le=600_000, description="Fail fast with 503 if not started within this time."
    )


class EmbedResponse(BaseModel):
    task: str
    prompt_id: int
    pooling: str
    dimensions: int
    embeddings: list[list[float]]


class ClassificationOutput(BaseModel):
    label: str
    scores: dict[str, float]


class GenerationOutput(BaseModel):
    text: str


class InferResponse(BaseModel):
    task: str
    prompt_id: int = Field(description="The version that served (an ensemble's first member).")
    ensemble: list[int] | None = Field(default=None, description="The versions whose probabilities were averaged.")
    outputs: list[ClassificationOutput] | list[GenerationOutput]


# --- health ---------------------------------------------------------------------------------------------


class ModelHealth(BaseModel):
    loaded: bool
    name: str | None = None
    fingerprint: str | None = None
    device: str | None = None
    error: str | None = None


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    model: ModelHealth
    database: bool
