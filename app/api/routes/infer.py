"""Inference: a task's active prompt on a list of inputs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from app.api.deps import AUTH_RESPONSES, INFER, OPERATOR, ReadSessionDep, RuntimeDep, SettingsDep, request_budget
from app.api.metrics import TASK_NAME, TASK_ROWS, TASK_TOP_SCORES, TASK_VERSION
from app.api.schemas import EmbedRequest, EmbedResponse, ErrorResponse, InferRequest, InferResponse, ensemble_spec
from app.errors import InvalidInput
from app.services.inference import embed, infer
from app.services.tasks import resolve_task

router = APIRouter(prefix="/v1", tags=["inference"], responses=AUTH_RESPONSES)

MODEL_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "No task with this id or name (task_not_found)."},
    409: {"model": ErrorResponse, "description": "task_not_trained, base_model_mismatch, prompt_corrupt."},
    422: {"model": ErrorResponse, "description": "input_too_long, request_too_large, too_many_inputs, ..."},
    503: {"model": ErrorResponse, "description": "overloaded, queue_timeout, model_unavailable (Retry-After)."},
}


def note_task(
    request: Request, task: str, rows: int, prompt_id: int | None = None, outputs: list[dict[str, Any]] | None = None
) -> None:
    """Tell the metrics middleware which task this request served, with how many rows, by which version, and (a
    classification) each row's top label probability."""
    setattr(request.state, TASK_NAME, task)
    setattr(request.state, TASK_ROWS, rows)
    setattr(request.state, TASK_VERSION, prompt_id)
    if outputs is not None:
        top = [max(output["scores"].values()) for output in outputs if output.get("scores")]
        setattr(request.state, TASK_TOP_SCORES, top)


def check_count(inputs: list[str], limit: int) -> None:
    if len(inputs) > limit:
        raise InvalidInput(f"at most {limit} inputs per call; split the request", code="too_many_inputs")


@router.post(
    "/infer",
    dependencies=[INFER],
    responses=MODEL_RESPONSES,
)
def run_inference(
    body: InferRequest, request: Request, session: ReadSessionDep, runtime: RuntimeDep, settings: SettingsDep
) -> InferResponse:
    """Classify or generate with the task's active prompt."""
    check_count(body.inputs, settings.max_infer_inputs)
    result = infer(
        session,
        runtime,
        resolve_task(session, body.task),
        body.inputs,
        max_new_tokens=body.max_new_tokens,
        stop=body.stop,
        priority=body.priority,
        budget=request_budget(request, settings, body.timeout_ms),
        ensemble=ensemble_spec(body.ensemble),
        user=body.user,
    )
    note_task(request, result.task.name, len(body.inputs), result.prompt_id, result.outputs)
    return InferResponse.model_validate(
        {
            "task": result.task.name,
            "prompt_id": result.prompt_id,
            "ensemble": result.ensemble,
            "outputs": result.outputs,
        }
    )


@router.post(
    "/embed",
    dependencies=[INFER],
    responses=MODEL_RESPONSES,
)
def run_embedding(
    body: EmbedRequest, request: Request, session: ReadSessionDep, runtime: RuntimeDep, settings: SettingsDep
) -> EmbedResponse:
    """One vector per input: the frozen model's hidden state under the task's prompt."""
    check_count(body.inputs, settings.max_infer_inputs)
    result = embed(
        session,
        runtime,
        resolve_task(session, body.task),
        body.inputs,
        pooling=body.pooling,
        priority=body.priority,
        budget=request_budget(request, settings, body.timeout_ms),
    )
    note_task(request, result.task.name, len(body.inputs))
    return EmbedResponse(
        task=result.task.name,
        prompt_id=result.prompt_id,
        pooling=body.pooling,
        dimensions=len(result.outputs[0]),
        embeddings=result.outputs,
    )


@router.get("/stats", dependencies=[OPERATOR])
def stats(runtime: RuntimeDep, request: Request) -> dict[str, Any]:
    """Engine counters: prompt pool (size, hits, misses, evictions), batches, queue time; requests answered by
    each task's versions (a traffic split's shares, as served by this process), and for classification the rows
    each version labelled with their mean top label probability (its confidence, to compare a canary with)."""
    metrics = request.app.state.metrics
    return {"engine": runtime.stats(), "versions": metrics.version_counts(), "version_scores": metrics.version_scores()}
