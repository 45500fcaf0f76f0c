"""`"type": "meta_init"`: meta-learn a prompt initialisation across tasks (MAML; the algorithm: algorithm.py),
stored as a prompt of no task. MAML's own hyperparameters (order, inner_steps, ...) arrive in the body's
`hyperparameters` beside the prompt's method; they are stored in Job.options with the job's name and tasks."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, TypeAdapter, field_validator
from sqlalchemy.orm import Session

from app.bodies import JobCreateBase, RowId, Strict
from app.db.models import Job, Task
from app.db.repositories import PromptRepository
from app.engine.core.model import FrozenModel
from app.engine.methods import TrainConfig, config_union, get_method, split_config
from app.errors import Conflict, InvalidInput
from app.services.datasets import check_labels, get_dataset, require_labeled
from app.services.jobs import Planned, check_fits_context, check_method
from app.services.tasks import resolve_task
from workers.inputs import JobInputs, load_inputs, read_source
from workers.jobs.base import JobContext, JobKind, Trained
from workers.jobs.meta_init.algorithm import meta_learn
from workers.jobs.meta_init.options import NOT_STORED, MetaInitOptions, MetaLearning, SourceTask

MetaConfigUnion = config_union(MetaLearning)
MIN_META_TASKS = 3


class MetaTask(Strict):
    task: str | int = Field(description="Task id or name.")
    dataset_id: RowId = Field(description="A labeled dataset of the task.")


class MetaInitJobCreate(JobCreateBase):
    type: Literal["meta_init"] = Field(description="Meta-learn a prompt initialisation across tasks (MAML).")
    name: str = Field(min_length=1, max_length=200, description="Names the meta-initialisation.")
    tasks: list[MetaTask] = Field(min_length=3, max_length=256, description="The tasks to meta-learn from (3+).")
    hyperparameters: MetaConfigUnion = Field(  # type: ignore[valid-type]
        default_factory=lambda: TypeAdapter(MetaConfigUnion).validate_python({}),
        description="The prompt's method and length, with order, inner_steps, inner_lr, outer_lr, outer_steps, "
        "meta_batch, support_size, query_size.",
    )

    @field_validator("name")
    @classmethod
    def _printable(cls, value: str) -> str:
        if not value.strip() or "\x00" in value:
            raise ValueError("give a name with visible characters (no NUL).")
        return value


def _check_base_model(session: Session, task: Task, model: FrozenModel) -> None:
    """Refuse a task whose prompts were trained on another base model: its data was set up for that model."""
    active = PromptRepository(session).get(task.active_prompt_id) if task.active_prompt_id is not None else None
    if active is not None and active.base_model_fingerprint != model.identity.fingerprint:
        raise Conflict(
            f"task {task.name!r} serves prompts of base model {active.base_model_name!r}, not {model.identity.name!r}; "
            "meta-learn from tasks of the model this service runs",
            code="base_model_mismatch",
        )


class MetaInit(JobKind):
    name: ClassVar[str] = "meta_init"
    Body = MetaInitJobCreate
    own_hyperparameters = "meta"
    Options = MetaInitOptions

    def check(self, session: Session, body: MetaInitJobCreate, model: FrozenModel | None) -> Planned:
        """Validate a meta-learning request: 3+ labeled tasks on this base model."""
        config, meta = split_config(body.hyperparameters, MetaLearning, exclude=NOT_STORED)
        if config.init in ("labels", "auto"):
            raise InvalidInput(
                f"a meta-initialisation serves tasks of any labels, so it cannot start from init {config.init!r}; "
                'use "text", "vocab", "random" or {"from_prompt": id}',
                code="init_prompt_invalid",
            )
        if config.label_head:
            raise InvalidInput(
                "a meta-initialisation serves tasks of any labels, and a label head has one row per label of one "
                "task; leave label_head out",
                code="label_head_invalid",
            )
        check_method(session, config, model)
        sources: list[SourceTask] = []
        positions = get_method(config.method).positions(config)
        for entry in body.tasks:
            task = resolve_task(session, entry.task)
            dataset = get_dataset(session, entry.dataset_id, with_examples=True, lock="share")
            require_labeled(dataset, "to meta-learn from a task")
            if task.kind == "classification":
                check_labels(dataset, task.labels)
            if dataset.num_examples < 2:
                raise InvalidInput(
                    f"dataset {dataset.id} of task {task.name!r} has {dataset.num_examples} example; a task needs "
                    "at least 2 (a support and a query example)",
                    code="dataset_too_small",
                )
            if model is not None:
                _check_base_model(session, task, model)
                check_fits_context(model, task, dataset.examples, positions)
            sources.append(SourceTask(task_id=task.id, task_name=task.name, dataset_id=dataset.id))
        distinct = {source.task_id for source in sources}
        if len(distinct) < MIN_META_TASKS:
            raise InvalidInput(
                f"meta-learning needs at least {MIN_META_TASKS} different tasks; got {len(distinct)}",
                code="too_few_tasks",
            )
        options = MetaInitOptions(name=body.name, tasks=sources, meta=meta)
        return Planned(
            self.name,
            config.model_dump(mode="json", exclude=set(NOT_STORED)),
            options.model_dump(mode="json"),
            meta.outer_steps,
            f"meta_init job ({config.method}, {meta.order} order) queued over {len(distinct)} tasks",
        )

    def inputs(
        self, session: Session, job: Job, config: TrainConfig, options: MetaInitOptions, model: FrozenModel
    ) -> JobInputs:
        inputs = load_inputs(session, job, config, model)
        inputs.sources = [read_source(session, s.task_id, s.task_name, s.dataset_id) for s in options.tasks]
        return inputs

    def run(self, ctx: JobContext) -> Trained:
        return meta_learn(ctx, ctx.options)


KIND = MetaInit()
