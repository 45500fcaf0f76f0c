"""Request and response bodies of the HTTP API (the contract; add fields, never rename them)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

import workers.jobs
from app.bodies import PromptIds, RowId, Strict

MAX_LABELS = 1000  # every label is scored for every input: a bound on a request's work


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable error code.")
    message: str = Field(description="What went wrong and what to fix.")
    details: Any = None


class ErrorResponse(BaseModel):
    error: ErrorBody


# --- datasets -------------------------------------------------------------------------------------------


class DatasetCreate(Strict):
    name: str = Field(min_length=1, max_length=200)
    examples: list[dict[str, Any]] = Field(
        description='[{"input": "...", "output": "..."}, ...], or [{"input": "..."}, ...] for inputs only'
    )


class DatasetOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    num_examples: int
    labels: list[str]
    labeled: bool = Field(description="False for inputs without outputs (usable by distill jobs with alpha 0).")
    source_dataset_id: int | None = Field(
        default=None, description="A task's held-out evaluation set: the dataset its examples were taken from."
    )
    created_at: datetime


class DatasetDetail(DatasetOut):
    preview: list[dict[str, str]] = Field(description="The first few examples.")
    source_rows: list[int] | None = Field(
        default=None,
        description="A held-out evaluation set: its examples' positions (from 0) in the source dataset, in order; "
        "jobs of the task on that dataset never train on them.",
    )


class EnsembleTop(Strict):
    top: int = Field(ge=1, le=16, description="The task's k best versions by validation score.")


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
    labels: list[str] = Field(
        default_factory=list,
        max_length=MAX_LABELS,
        description=f"Required (two or more) for classification; at most {MAX_LABELS}.",
    )
    template: str | None = Field(
        default=None, max_length=2000, description='Must contain "{input}"; a default is chosen per kind.'
    )
    evaluation_holdout: bool = Field(
        default=True,
        description="The task's first job on a dataset of 100+ labeled examples holds a fifth of it (at most 500) "
        "out as the task's evaluation set; false: none is held out.",
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
    traffic: list[TrafficShare] | None = Field(
        default=None, description="The split of requests between versions (weights sum to 1), if any."
    )
    evaluation_dataset_id: int | None = Field(default=None, description="The evaluation gate's dataset, if any.")
    evaluation_holdout: bool = Field(
        default=True, description="Whether a job holds the evaluation set out of its dataset while the task has none."
    )
    created_at: datetime


class TrafficShare(Strict):
    prompt_id: RowId = Field(description="A version of the task.")
    weight: float = Field(gt=0, le=1000, description="Its share of the requests (weights are normalised).")


class TaskUpdate(Strict):
    """Only the fields given change."""

    ensemble: PromptIds | EnsembleTop | None = Field(
        default=None,
        description='Serve an ensemble by default: prompt ids of this task, {"top": k}, or null for the active '
        "version alone.",
    )
    traffic: list[TrafficShare] | None = Field(
        default=None,
        max_length=8,
        description="Split the task's requests between versions by weight (canary), or null to serve the active "
        "version; a request's `user` always meets the same version.",
    )

    evaluation_dataset_id: RowId | None = Field(
        default=None,
        description="A labeled dataset every new version is scored on (the evaluation gate), or null for none "
        "(which also turns evaluation_holdout off, unless given).",
    )
    evaluation_holdout: bool = Field(
        default=True,
        description="Whether a job on a task without an evaluation set holds one out of its dataset (see POST).",
    )

    @model_validator(mode="after")
    def _something(self) -> TaskUpdate:
        if not self.model_fields_set:
            raise ValueError('give "ensemble", "traffic", "evaluation_dataset_id" or "evaluation_holdout".')
        return self


# --- jobs -----------------------------------------------------------------------------------------------


# POST /v1/jobs: each job kind declares its body (workers/jobs/); the union is built from the registry.
JobCreate = workers.jobs.JobCreate


class JobProgress(BaseModel):
    step: int = 0
    total_steps: int = 0
    loss: float | None = None
    val_accuracy: float | None = None
    val_loss: float | None = None


class JobHoldout(BaseModel):
    evaluation_dataset_id: int | None = Field(description="The task's evaluation set when the job was queued.")
    excluded: int = Field(description="Examples of the job's dataset it never trains on: that set's, held out of it.")
    created: bool = Field(description="Whether this job held the set out of its dataset.")
    reason: str | None = Field(description="Why no evaluation set was held out, when none was.")


class JobOut(BaseModel):
    id: int
    type: str
    task: int | None = Field(description="The task the job trains for; null for a meta_init job (see options).")
    task_name: str | None
    dataset_id: int | None
    validation_dataset_id: int | None
    status: str
    progress: JobProgress
    hyperparameters: dict[str, Any]
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="What the job type takes besides hyperparameters: a length search's search, a distillation's "
        "teacher, a meta_init job's name and tasks.",
    )
    promote: str = Field(default="always", description="Whether the stored version becomes active (see POST).")
    evaluation_holdout: JobHoldout | None = Field(
        default=None, description="The task's evaluation set and the dataset rows held out for it (a job of a task)."
    )
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


class JobMetricOut(BaseModel):
    """One point of a job's curve: its training figures after the step and its evaluation's, where one ran."""

    attempt: int = Field(description="The attempt (1, 2, ...) that recorded it: a requeued job starts a new curve.")
    step: int
    loss: float | None = Field(description="Training loss of the step.")
    learning_rate: float | None
    val_loss: float | None = Field(description="Validation loss, at evaluation steps.")
    val_score: float | None = Field(description="Validation accuracy (classification), at evaluation steps.")
    seconds: float = Field(description="Seconds since the attempt started.")


class EvaluationOut(BaseModel):
    prompt_id: int
    version: int
    dataset_id: int
    metrics: dict[str, Any] = Field(
        description="Classification: accuracy, macro_f1, calibration_error; generation: exact_match, token_f1; "
        "and examples."
    )
    active: bool


class ReferenceOut(BaseModel):
    name: str = Field(description='"majority" or "tfidf_logistic_regression".')
    training_dataset_id: int = Field(description="What it was trained on: the active version's training dataset.")
    metrics: dict[str, Any]


class EvaluationList(BaseModel):
    data: list[EvaluationOut]
    references: list[ReferenceOut] = Field(
        default_factory=list,
        description="Classification: what a user might pick instead, scored on the same set (trained on the "
        "active version's training dataset).",
    )


class TrialOut(BaseModel):
    """One configuration a tune job tried (its latest attempt's)."""

    model_config = ConfigDict(from_attributes=True)

    number: int = Field(description="0, 1, ... in the order the search tried them.")
    method: str
    hyperparameters: dict[str, Any] = Field(description="The method's config the trial trained with.")
    steps: int = Field(description="Optimizer steps it ran (fewer than its budget when pruned).")
    scores: list[float] = Field(description="Validation score at each evaluation (accuracy, or minus the loss).")
    value: float | None = Field(description="Its best validation score: what the search ranks.")
    state: Literal["running", "pruned", "finished", "failed"]


class TrialList(BaseModel):
    data: list[TrialOut]


# --- methods --------------------------------------------------------------------------------------------


class MethodOut(BaseModel):
    name: str = Field(description='The value of "method" in a job\'s hyperparameters.')
    description: str
    cacheable: str = Field(description="What the prompt pool caches per version, in words.")
    config_schema: dict[str, Any] = Field(description="JSON schema of the method's hyperparameters.")
    defaults: dict[str, Any] = Field(description="The hyperparameters a job gets for each field it leaves out.")


class MethodList(BaseModel):
    data: list[MethodOut]


# --- prompts --------------------------------------------------------------------------------------------


class BaseModelIdentity(BaseModel):
    name: str
    fingerprint: str


class PromptOut(BaseModel):
    id: int
    task: int | None = Field(description="The task it serves; null for a meta-initialisation.")
    kind: Literal["task", "meta_init"] = Field(description='"meta_init": a meta-learned start of no task.')
    name: str | None = Field(default=None, description="A meta-initialisation's name.")
    version: int = Field(description="Counted per task, and among meta-initialisations.")
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
    lineage: dict[str, Any] = Field(
        description="How the version was made: job type and id, dataset, init version, teachers, source tasks, "
        "hyperparameters (ids as they were: deleting a teacher or source leaves its students as they are)."
    )
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
    user: str | None = Field(
        default=None,
        max_length=256,
        description="Who asks: under a traffic split, the same user meets the same version.",
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
    shared_limits: Literal["off", "up", "down"] = Field(
        description='Whether rate limits are shared through Redis (PROMPTBANK_REDIS_URL) and it answers; "down" '
        "does not make the service degraded: each process then limits on its own."
    )
