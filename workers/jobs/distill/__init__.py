"""`"type": "distill"`: train a student prompt on a teacher's soft outputs (the algorithm: algorithm.py).

The teacher is stored versions of the task, or the frozen model reading an instruction and solved examples in its
context. The job's own hyperparameters (alpha, temperature, generations, top_k, max_new_tokens) arrive in the
body's `hyperparameters` beside the student's method; they are stored in Job.options with the teacher.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, TypeAdapter
from sqlalchemy.orm import Session

from app.bodies import JobCreateBase, RowId
from app.db.models import Job, Prompt, Task
from app.db.repositories import PromptRepository
from app.engine.core.model import FrozenModel
from app.engine.core.text import context_template, render
from app.engine.methods import TrainConfig, config_union, get_method, split_config
from app.errors import InvalidInput
from app.services.datasets import check_labels, get_dataset, require_labeled
from app.services.jobs import Planned, check_fits_context, check_init_for_task, check_method
from app.services.tasks import resolve_task, task_spec
from workers.inputs import JobInputs, load_inputs, read_teachers
from workers.jobs.base import JobContext, JobKind, Trained
from workers.jobs.distill.algorithm import distill
from workers.jobs.distill.options import ContextTeacher, Distillation, DistillOptions, PromptTeacher

DistillConfigUnion = config_union(Distillation)


class DistillJobCreate(JobCreateBase):
    type: Literal["distill"] = Field(description="Train a student prompt on a teacher's soft outputs.")
    task: str | int = Field(description="Task id or name.")
    dataset_id: RowId = Field(description="Inputs (with outputs, or without when alpha is 0).")
    validation_dataset_id: RowId | None = None
    teacher: PromptTeacher | ContextTeacher = Field(
        description='{"prompts": [ids]}: stored versions of the task; or {"instruction", "examples"?}: the frozen '
        "model reading them in its context (context distillation)."
    )
    hyperparameters: DistillConfigUnion = Field(  # type: ignore[valid-type]
        default_factory=lambda: TypeAdapter(DistillConfigUnion).validate_python({}),
        description="The student's method and training loop, with alpha, temperature, generations and top_k.",
    )


def _teachers(session: Session, task: Task, ids: list[int], model: FrozenModel | None) -> list[Prompt]:
    """The stored teacher versions, refused unless each is a version of this task that this model serves."""
    teachers = []
    for prompt_id in dict.fromkeys(ids):
        prompt = PromptRepository(session).get(prompt_id)
        if prompt is None or prompt.task_id != task.id:
            where = "does not exist" if prompt is None else "is not a version of this task"
            raise InvalidInput(
                f"teacher prompt {prompt_id} {where}; GET /v1/prompts?task={task.name} lists the task's versions",
                code="teacher_invalid",
            )
        if model is not None and (
            prompt.base_model_fingerprint != model.identity.fingerprint or prompt.width != model.hidden_size
        ):
            raise InvalidInput(
                f"teacher prompt {prompt_id} was trained on base model {prompt.base_model_name!r} (hidden size "
                f"{prompt.width}); this service runs {model.identity.name!r} (hidden size {model.hidden_size}), "
                "whose layers cannot read it",
                code="teacher_invalid",
            )
        teachers.append(prompt)
    return teachers


def _check_teacher_context(
    model: FrozenModel, task: Task, teacher: ContextTeacher, examples: list[dict[str, str]]
) -> None:
    """Refuse examples that overflow the context once the teacher's instruction and shots precede them."""
    spec = task_spec(task)
    shots = [(shot.input, shot.output) for shot in teacher.examples]
    overhead = len(model.encode(context_template(spec, teacher.instruction, shots))) - len(model.encode(spec.template))
    for number, example in enumerate(examples, start=1):
        needed = overhead + len(model.encode(render(spec.template, example["input"]))) + 1
        if needed > model.max_positions:
            raise InvalidInput(
                f"example {number} needs about {needed} tokens after the teacher's instruction and examples, more "
                f"than the model's context of {model.max_positions}; shorten the instruction or give fewer examples",
                code="input_too_long",
                details={"example": number, "tokens": needed, "context": model.max_positions},
            )


class Distill(JobKind):
    name: ClassVar[str] = "distill"
    Body = DistillJobCreate
    own_hyperparameters = "distillation"
    Options = DistillOptions

    def check(self, session: Session, body: DistillJobCreate, model: FrozenModel | None) -> Planned:
        """Validate a distillation (teacher, student, data)."""
        task = resolve_task(session, body.task)
        config, distillation = split_config(body.hyperparameters, Distillation)
        check_method(session, config, model)
        check_init_for_task(config, task)
        if isinstance(body.teacher, PromptTeacher):
            _teachers(session, task, body.teacher.prompts, model)
        dataset = get_dataset(session, body.dataset_id, with_examples=True, lock="share")
        if distillation.alpha > 0:
            require_labeled(
                dataset,
                f"for alpha {distillation.alpha} (its gold term); set alpha to 0 to learn from the teacher alone",
            )
        datasets = [dataset]
        if body.validation_dataset_id is not None:
            datasets.append(get_dataset(session, body.validation_dataset_id, with_examples=True, lock="share"))
        if body.validation_dataset_id is None and dataset.num_examples < 2:
            raise InvalidInput(
                f"dataset {body.dataset_id} has {dataset.num_examples} example; distillation needs at least 2 (one "
                "is held out for validation) or a validation_dataset_id",
                code="dataset_too_small",
            )
        positions = get_method(config.method).positions(config)
        for data in datasets:
            if task.kind == "classification" and data.labeled:
                check_labels(data, task.labels)
            if model is not None:
                check_fits_context(model, task, data.examples, positions)
                if isinstance(body.teacher, ContextTeacher):
                    _check_teacher_context(model, task, body.teacher, data.examples)
        options = DistillOptions(teacher=body.teacher, distillation=distillation)
        return Planned(
            self.name,
            config.model_dump(mode="json"),
            options.model_dump(mode="json"),
            config.steps * distillation.generations,
            f"distill job ({config.method} student) queued for task {task.name!r}",
            task=task,
            dataset_id=body.dataset_id,
            validation_dataset_id=body.validation_dataset_id,
        )

    def inputs(
        self, session: Session, job: Job, config: TrainConfig, options: DistillOptions, model: FrozenModel
    ) -> JobInputs:
        inputs = load_inputs(session, job, config, model)
        if isinstance(options.teacher, PromptTeacher):
            inputs.teachers = read_teachers(session, options.teacher.prompts)
        return inputs

    def run(self, ctx: JobContext) -> Trained:
        return distill(ctx, ctx.options)


KIND = Distill()
