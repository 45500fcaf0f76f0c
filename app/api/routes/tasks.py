"""Tasks: a name, a kind, labels and a template; trained prompts hang off a task."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Response, status
from sqlalchemy.orm import Session

from app.api.deps import (
    AUTH_RESPONSES,
    READ,
    TRAIN,
    LimitDep,
    OffsetDep,
    ReadSessionDep,
    RuntimeDep,
    SessionDep,
    TaskDep,
    WritableTaskDep,
)
from app.api.schemas import (
    ErrorResponse,
    EvaluationList,
    EvaluationOut,
    ReferenceOut,
    TaskCreate,
    TaskOut,
    TaskUpdate,
    ensemble_spec,
)
from app.db.models import Task
from app.services import evaluation
from app.services import tasks as service

router = APIRouter(prefix="/v1/tasks", tags=["tasks"], responses=AUTH_RESPONSES)


def task_out(session: Session, tasks: Sequence[Task]) -> list[TaskOut]:
    statuses = service.task_statuses(session, tasks)
    return [
        TaskOut(
            id=t.id,
            name=t.name,
            kind=t.kind,
            labels=t.labels,
            template=t.template,
            status=statuses[t.id],
            active_prompt_id=t.active_prompt_id,
            ensemble=t.ensemble,
            traffic=t.traffic,
            evaluation_dataset_id=t.evaluation_dataset_id,
            evaluation_holdout=t.evaluation_holdout,
            created_at=t.created_at,  # type: ignore[arg-type]
        )
        for t in tasks
    ]


@router.post("", status_code=status.HTTP_201_CREATED, dependencies=[TRAIN], responses={409: {"model": ErrorResponse}})
def create_task(body: TaskCreate, session: SessionDep) -> TaskOut:
    """Create an untrained task."""
    task = service.create_task(
        session,
        name=body.name,
        kind=body.kind,
        labels=body.labels,
        template=body.template,
        evaluation_holdout=body.evaluation_holdout,
    )
    return task_out(session, [task])[0]


@router.get("", dependencies=[READ])
def list_tasks(session: ReadSessionDep, limit: LimitDep, offset: OffsetDep) -> list[TaskOut]:
    """List tasks with their training status."""
    return task_out(session, service.list_tasks(session, limit=limit, offset=offset))


@router.get("/{task}", dependencies=[READ], responses={404: {"model": ErrorResponse}})
def get_task(task: TaskDep, session: ReadSessionDep) -> TaskOut:
    """One task, by id or name."""
    return task_out(session, [task])[0]


@router.patch("/{task}", dependencies=[TRAIN], responses={404: {"model": ErrorResponse}, 422: {"model": ErrorResponse}})
def update_task(body: TaskUpdate, task: WritableTaskDep, session: SessionDep) -> TaskOut:
    """Set what the task serves: an ensemble of its versions by default, a traffic split between versions
    (canary), or (null) its active version alone."""
    changes: dict[str, Any] = {}
    if "ensemble" in body.model_fields_set:
        changes["ensemble"] = ensemble_spec(body.ensemble)
    if "traffic" in body.model_fields_set:
        changes["traffic"] = None if body.traffic is None else [share.model_dump() for share in body.traffic]
    if "evaluation_dataset_id" in body.model_fields_set:
        changes["evaluation_dataset_id"] = body.evaluation_dataset_id
    if "evaluation_holdout" in body.model_fields_set:
        changes["evaluation_holdout"] = body.evaluation_holdout
    service.update_task(session, task, changes)
    return task_out(session, [task])[0]


@router.get("/{task}/evaluations", dependencies=[READ], responses={404: {"model": ErrorResponse}})
def list_evaluations(task: TaskDep, session: ReadSessionDep) -> EvaluationList:
    """Every version's scores on the task's evaluation dataset (the same set for all), oldest version first."""
    rows = evaluation.evaluations(session, task)
    return EvaluationList(
        data=[
            EvaluationOut(
                prompt_id=prompt.id,
                version=prompt.version,
                dataset_id=scores.dataset_id,
                metrics=scores.metrics,
                active=prompt.id == task.active_prompt_id,
            )
            for prompt, scores in rows
        ],
        references=[ReferenceOut.model_validate(row) for row in evaluation.references(session, task)],
    )


@router.delete(
    "/{task}", status_code=status.HTTP_204_NO_CONTENT, dependencies=[TRAIN], responses={404: {"model": ErrorResponse}}
)
def delete_task(task: WritableTaskDep, session: SessionDep, runtime: RuntimeDep) -> Response:
    """Delete a task with its prompts and jobs."""
    service.delete_task(session, task, runtime)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
