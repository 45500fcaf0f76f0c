"""Inference: a task's active prompt on a list of inputs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.api.deps import ReadSessionDep, RuntimeDep, SettingsDep
from app.api.schemas import ErrorResponse, InferRequest, InferResponse
from app.errors import InvalidInput
from app.services.inference import infer
from app.services.tasks import resolve_task

router = APIRouter(prefix="/v1", tags=["inference"])


@router.post(
    "/infer", responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}, 503: {"model": ErrorResponse}}
)
def run_inference(
    body: InferRequest, session: ReadSessionDep, runtime: RuntimeDep, settings: SettingsDep
) -> InferResponse:
    """Classify or generate with the task's active prompt."""
    if len(body.inputs) > settings.max_infer_inputs:
        raise InvalidInput(
            f"at most {settings.max_infer_inputs} inputs per call; split the request", code="too_many_inputs"
        )
    result = infer(
        session,
        runtime,
        resolve_task(session, body.task),
        body.inputs,
        max_new_tokens=body.max_new_tokens,
        stop=body.stop,
        priority=body.priority,
        timeout=None if body.timeout_ms is None else body.timeout_ms / 1000,
    )
    return InferResponse.model_validate(
        {"task": result.task.name, "prompt_id": result.prompt_id, "outputs": result.outputs}
    )


@router.get("/stats")
def stats(runtime: RuntimeDep) -> dict[str, Any]:
    """Engine counters: prompt pool (size, hits, misses, evictions), batches, queue time."""
    return {"engine": runtime.stats()}
