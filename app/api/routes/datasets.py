"""Datasets: JSONL/CSV uploads or JSON bodies of {"input", "output"} examples, validated line by line."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response, status
from pydantic import ValidationError
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
    SessionDep,
    SettingsDep,
    Trainer,
    refuse_declared_over,
)
from app.api.schemas import DatasetCreate, DatasetDetail, DatasetOut, ErrorResponse
from app.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from app.services import datasets as service
from app.services.dataset_parsing import loads_without_duplicates

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=AUTH_RESPONSES)

UPLOAD_DOC = {
    "requestBody": {
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "a .jsonl or .csv file"},
                        "name": {"type": "string", "description": "dataset name (default: the file name)"},
                    },
                }
            },
            "application/json": {"schema": DatasetCreate.model_json_schema()},
        },
        "required": True,
    }
}


@dataclass(frozen=True)
class Upload:
    data: bytes | None = None
    filename: str | None = None
    content_type: str | None = None
    name: str | None = None
    body: DatasetCreate | None = None


async def _read_limited(request: Request, limit: int) -> bytes:
    refuse_declared_over(request, limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the upload is over the limit of {limit} bytes (PROMPTBANK_MAX_UPLOAD_BYTES)")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_upload(request: Request, settings: SettingsDep) -> Upload:
    """The dataset from a multipart upload (field "file") or a JSON body, within the size limit."""
    content_type = request.headers.get("content-type", "")
    limit = settings.max_upload_bytes
    if content_type.startswith("multipart/form-data"):
        refuse_declared_over(request, limit, allowance=MULTIPART_OVERHEAD)
        async with request.form(max_files=1, max_fields=4, max_part_size=limit) as form:
            file = form.get("file")
            if not isinstance(file, UploadFile):
                raise InvalidInput('send the dataset as a multipart file field named "file"', code="file_missing")
            data = await file.read(limit + 1)
            if len(data) > limit:
                raise PayloadTooLarge(f"the file is over the limit of {limit} bytes (PROMPTBANK_MAX_UPLOAD_BYTES)")
            name = form.get("name")
            return Upload(
                data=data,
                filename=file.filename,
                content_type=file.content_type,
                name=name if isinstance(name, str) else None,
            )
    if content_type.startswith("application/json") or not content_type:
        raw = await _read_limited(request, limit)
        try:
            parsed: Any = loads_without_duplicates(raw)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            raise InvalidInput(
                f"the request body is not valid JSON ({reason}); send a JSON object", code="invalid_json"
            ) from exc
        except ValueError as exc:  # a key twice, or a number too long to read
            raise InvalidInput(f"the request body is refused: {exc}", code="invalid_json") from exc
        try:
            return Upload(body=DatasetCreate.model_validate(parsed))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise InvalidInput(
                f"{where}: {first['msg']}",
                code="validation_error",
                details=[{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()],
            ) from exc
    raise UnsupportedMediaType(
        f"unsupported content type {content_type!r}; upload a file as multipart/form-data or send application/json"
    )


UploadDep = Annotated[Upload, Depends(read_upload)]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    openapi_extra=UPLOAD_DOC,
    responses={
        400: {"model": ErrorResponse, "description": "unsupported_format: a file that is not UTF-8 JSONL or CSV"},
        413: {"model": ErrorResponse},
        415: {"model": ErrorResponse},
        422: {"model": ErrorResponse},
        429: {"model": ErrorResponse},
    },
)
def create_dataset(principal: Trainer, upload: UploadDep, session: SessionDep, settings: SettingsDep) -> DatasetOut:
    """Upload a dataset (JSONL/CSV file, or JSON examples); every line is validated."""
    if upload.body is not None:
        dataset = service.create_from_body(
            session,
            name=upload.body.name,
            items=upload.body.examples,
            max_examples=settings.max_examples,
            limits=principal.limits,
        )
    else:
        assert upload.data is not None
        dataset = service.create_from_upload(
            session,
            data=upload.data,
            filename=upload.filename,
            content_type=upload.content_type,
            name=upload.name,
            max_examples=settings.max_examples,
            limits=principal.limits,
        )
    return DatasetOut.model_validate(dataset)


@router.get("", dependencies=[READ])
def list_datasets(session: ReadSessionDep, limit: LimitDep, offset: OffsetDep) -> list[DatasetOut]:
    """List datasets (without their examples)."""
    return [DatasetOut.model_validate(d) for d in service.list_datasets(session, limit=limit, offset=offset)]


@router.get("/{dataset_id}", dependencies=[READ], responses={404: {"model": ErrorResponse}})
def get_dataset(dataset_id: IdPath, session: ReadSessionDep) -> DatasetDetail:
    """One dataset with a preview of its first examples."""
    dataset = service.get_dataset(session, dataset_id, with_examples=True)
    preview = dataset.examples[: service.PREVIEW_EXAMPLES]
    shown = DatasetOut.model_validate(dataset).model_dump()
    return DatasetDetail(**shown, preview=preview, source_rows=dataset.source_rows)


@router.delete(
    "/{dataset_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[TRAIN],
    responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}},
)
def delete_dataset(dataset_id: IdPath, session: SessionDep) -> Response:
    """Delete a dataset no unfinished job needs."""
    service.delete_dataset(session, dataset_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
