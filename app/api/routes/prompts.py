"""Stored prompt versions: list, inspect, delete, activate."""

from __future__ import annotations

from fastapi import APIRouter, Query, Response, status
from sqlalchemy.orm import Session

from app.api.deps import (
    AUTH_RESPONSES,
    READ,
    TRAIN,
    IdPath,
    LimitDep,
    OffsetDep,
    ReadSessionDep,
    RuntimeDep,
    SessionDep,
)
from app.api.schemas import BaseModelIdentity, ErrorResponse, PromptOut
from app.db.models import Prompt, PromptKind
from app.services import prompts as service
from app.services.tasks import resolve_task

router = APIRouter(prefix="/v1/prompts", tags=["prompts"], responses=AUTH_RESPONSES)


def prompt_out(session: Session, prompts: list[Prompt]) -> list[PromptOut]:
    active = service.active_ids(session, prompts)
    return [
        PromptOut(
            id=p.id,
            task=p.task_id,
            kind=PromptKind(p.kind).value,
            name=p.name,
            version=p.version,
            active=p.id in active,
            method=p.method,
            num_virtual_tokens=p.num_virtual_tokens,
            shapes=p.shapes or {},
            hidden_size=p.hidden_size,
            base_model=BaseModelIdentity(name=p.base_model_name, fingerprint=p.base_model_fingerprint),
            size_bytes=p.size_bytes,
            metrics=p.metrics,
            hyperparameters=p.hyperparameters,
            job_id=p.job_id,
            dataset_id=p.dataset_id,
            lineage=p.lineage or {},
            created_at=p.created_at,
        )
        for p in prompts
    ]


@router.get("", dependencies=[READ], responses={404: {"model": ErrorResponse, "description": "?task= names no task"}})
def list_prompts(
    session: ReadSessionDep,
    limit: LimitDep,
    offset: OffsetDep,
    task: str | None = Query(None, description="Only this task's prompts (id or name)."),
    kind: PromptKind | None = Query(None, description='"meta_init": only meta-initialisations; "task": only tasks\'.'),
) -> list[PromptOut]:
    """List stored prompt versions (and meta-initialisations) with metadata and size."""
    owner = resolve_task(session, task) if task is not None else None
    return prompt_out(session, list(service.list_prompts(session, task=owner, limit=limit, offset=offset, kind=kind)))


@router.get("/{prompt_id}", dependencies=[READ], responses={404: {"model": ErrorResponse}})
def get_prompt(prompt_id: IdPath, session: ReadSessionDep) -> PromptOut:
    """One prompt version's metadata."""
    return prompt_out(session, [service.get_prompt(session, prompt_id)])[0]


@router.delete(
    "/{prompt_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[TRAIN],
    responses={404: {"model": ErrorResponse}},
)
def delete_prompt(prompt_id: IdPath, session: SessionDep, runtime: RuntimeDep) -> Response:
    """Delete a version; an active one falls back to the previous version, or the task becomes untrained."""
    service.delete_prompt(session, prompt_id, runtime)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{prompt_id}/activate", dependencies=[TRAIN], responses={404: {"model": ErrorResponse}})
def activate_prompt(prompt_id: IdPath, session: SessionDep) -> PromptOut:
    """Serve this version for its task from the next request on."""
    return prompt_out(session, [service.activate_prompt(session, prompt_id)])[0]
