"""Stored prompt versions: list, inspect, delete, activate, export (PEFT or safetensors) and import (PEFT)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response, status
from sqlalchemy.orm import Session
from starlette.datastructures import UploadFile

from app.api.deps import (
    AUTH_RESPONSES,
    MULTIPART_OVERHEAD,
    READ,
    TRAIN,
    IdPath,
    LimitDep,
    OffsetDep,
    ReadSessionDep,
    RuntimeDep,
    SessionDep,
    SettingsDep,
    Trainer,
    refuse_declared_over,
)
from app.api.schemas import BaseModelIdentity, ErrorResponse, PromptOut
from app.db.models import Prompt, PromptKind
from app.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from app.services import peft_interchange
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
            num_virtual_tokens=p.positions,
            shapes=p.shapes or {},
            hidden_size=p.width,
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


@router.get(
    "/{prompt_id}/export",
    dependencies=[READ],
    response_class=Response,
    responses={
        200: {"content": {"application/zip": {}, "application/octet-stream": {}}, "description": "the file"},
        404: {"model": ErrorResponse},
        409: {"model": ErrorResponse, "description": "base_model_mismatch: trained on another base model"},
        422: {"model": ErrorResponse, "description": "export_unsupported: a method PEFT has no equivalent of"},
    },
)
def export_prompt(
    prompt_id: IdPath,
    session: ReadSessionDep,
    runtime: RuntimeDep,
    format: Literal["peft", "safetensors"] = Query(  # noqa: A002 - the query parameter's name
        "peft", description="peft: a zip of a PEFT adapter folder; safetensors: promptbank's own artifact."
    ),
) -> Response:
    """Download a version: as a PEFT adapter (PromptTuning for "prompt", PrefixTuning for "prefix") or as stored."""
    exported = peft_interchange.export_prompt(session, prompt_id, format, runtime)
    return Response(
        exported.data,
        media_type=exported.media_type,
        headers={"Content-Disposition": f'attachment; filename="{exported.filename}"'},
    )


@dataclass(frozen=True)
class AdapterUpload:
    task: str
    files: dict[str, bytes]
    fingerprint: str | None


async def read_adapter_upload(request: Request, settings: SettingsDep) -> AdapterUpload:
    """A multipart form: `task`, then a zip (any file field) or the adapter's two files, `fingerprint`?."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise UnsupportedMediaType(
            "send the adapter as multipart/form-data: a field task and a zip of the adapter folder (or its "
            "adapter_config.json and adapter_model.safetensors)"
        )
    limit = settings.max_upload_bytes
    refuse_declared_over(request, limit, allowance=MULTIPART_OVERHEAD)
    async with request.form(max_files=2, max_fields=4, max_part_size=limit) as form:
        files: dict[str, bytes] = {}
        for field, value in form.multi_items():
            if isinstance(value, UploadFile):
                data = await value.read(limit + 1)
                if len(data) > limit:
                    raise PayloadTooLarge(f"{value.filename} is over the limit of {limit} bytes")
                files[value.filename or field] = data
        task, fingerprint = form.get("task"), form.get("fingerprint")
    if not isinstance(task, str) or not task.strip():
        raise InvalidInput("name the task the adapter is for in the form field task (id or name)", code="task_missing")
    if not files:
        raise InvalidInput(
            "attach the adapter: a zip of its folder, or adapter_config.json and adapter_model.safetensors",
            code="file_missing",
        )
    return AdapterUpload(task.strip(), files, fingerprint if isinstance(fingerprint, str) and fingerprint else None)


@router.post(
    "/import",
    status_code=status.HTTP_201_CREATED,
    responses={
        404: {"model": ErrorResponse},
        409: {"model": ErrorResponse, "description": "base_model_mismatch: an adapter of another base model"},
        413: {"model": ErrorResponse},
        415: {"model": ErrorResponse},
        422: {"model": ErrorResponse, "description": "adapter_invalid / adapter_unsupported"},
        429: {"model": ErrorResponse, "description": "storage_quota_exceeded"},
    },
)
def import_prompt(
    principal: Trainer,
    upload: Annotated[AdapterUpload, Depends(read_adapter_upload)],
    session: SessionDep,
    runtime: RuntimeDep,
    settings: SettingsDep,
) -> PromptOut:
    """Store a PEFT adapter (PROMPT_TUNING, P_TUNING or PREFIX_TUNING) as the task's next, active version."""
    task = resolve_task(session, upload.task)
    adapter = peft_interchange.read_adapter_files(upload.files, settings.max_upload_bytes)
    prompt = peft_interchange.import_adapter(
        session, task=task, adapter=adapter, runtime=runtime, limits=principal.limits, fingerprint=upload.fingerprint
    )
    return prompt_out(session, [prompt])[0]
