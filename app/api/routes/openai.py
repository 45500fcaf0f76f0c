"""OpenAI-compatible serving: a task is a model (by name), served by the same mixed-task engine as /v1/infer.

GET /v1/models lists the ready tasks; POST /v1/completions and /v1/chat/completions answer in OpenAI's shapes,
with `stream: true` as server-sent events (`data: {chunk}` per token, then `data: [DONE]`). Errors on these routes
use OpenAI's error shape.
"""

from __future__ import annotations

from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Request

from app.api.auth import PrincipalDep
from app.api.deps import AUTH_RESPONSES, INFER, READ, ReadSessionDep, RuntimeDep, SettingsDep, request_budget
from app.api.openai_responses import CompletionShape
from app.api.openai_schemas import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList
from app.api.openai_stream import Progress, stream_completion
from app.api.routes.infer import MODEL_RESPONSES, check_count, note_task
from app.db.models import Task
from app.db.repositories import scope_session
from app.errors import Conflict
from app.services.inference import RequestBudget
from app.services.openai_compat import Completion, complete, ready_models
from app.services.tasks import resolve_task

router = APIRouter(prefix="/v1", tags=["openai-compatible"], responses=AUTH_RESPONSES)


def _card(task: Task) -> ModelCard:
    return ModelCard(id=task.name, created=int(task.created_at.timestamp()), owned_by=task.tenant)


@router.get("/models", dependencies=[READ])
def list_models(session: ReadSessionDep) -> ModelList:
    """The ready tasks (those with an active prompt version), as OpenAI models named by the task's name."""
    return ModelList(data=[_card(task) for task in ready_models(session)])


@router.get("/models/{model}", dependencies=[READ], responses={404: {}, 409: {}})
def get_model(model: str, session: ReadSessionDep) -> ModelCard:
    """One ready task as an OpenAI model."""
    task = resolve_task(session, model)
    if task.active_prompt_id is None:
        raise Conflict(f"task {task.name!r} has no trained prompt yet; train it first", code="task_not_trained")
    return _card(task)


async def _complete(
    request: Request,
    principal: Any,
    runtime: Any,
    model: str,
    inputs: list[str],
    max_tokens: int,
    stop: list[str],
    budget: RequestBudget,
    logprobs: bool,
    user: str | None,
    on_progress: Progress | None = None,
) -> Completion:
    """The completion, computed on a worker thread with its own session (a stream outlives the request's)."""

    def work() -> Completion:
        with request.app.state.read_session_factory() as session:
            return complete(
                scope_session(session, principal.tenant),
                runtime,
                model,
                inputs,
                max_tokens=max_tokens,
                stop=stop,
                budget=budget,
                logprobs=logprobs,
                on_progress=on_progress,
                user=user,
            )

    completion = await anyio.to_thread.run_sync(work)
    note_task(request, completion.task.name, len(inputs), completion.prompt_id)
    return completion


async def _serve(
    request: Request,
    principal: Any,
    runtime: Any,
    settings: Any,
    body: CompletionRequest | ChatCompletionRequest,
    inputs: list[str],
    max_tokens: int,
    chat: bool,
) -> Any:
    """Check a completion request and answer it whole, or as server-sent events when it asks to be streamed."""
    check_count(inputs, settings.max_infer_inputs)
    budget = request_budget(request, settings, None)
    shape = CompletionShape(chat, body)
    wants_logprobs = bool(body.logprobs) if chat else body.logprobs is not None
    run = (
        request,
        principal,
        runtime,
        body.model,
        inputs,
        max_tokens,
        body.stop_strings,
        budget,
        wants_logprobs,
        body.user,
    )
    if not body.stream:
        return shape.response(await _complete(*run))
    return await stream_completion(lambda progress: _complete(*run, on_progress=progress), shape, budget)


COMPLETION_RESPONSES: dict[int | str, dict[str, Any]] = {
    **MODEL_RESPONSES,
    200: {"description": "A completion, or with `stream: true` server-sent events (text/event-stream)."},
}


@router.post("/completions", dependencies=[INFER], responses=COMPLETION_RESPONSES)
async def completions(
    body: CompletionRequest, request: Request, principal: PrincipalDep, runtime: RuntimeDep, settings: SettingsDep
) -> Any:
    """OpenAI completions: `model` is a task's name, `prompt` its input (or a list of inputs)."""
    return await _serve(request, principal, runtime, settings, body, body.inputs, body.max_tokens or 16, chat=False)


@router.post("/chat/completions", dependencies=[INFER], responses=COMPLETION_RESPONSES)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, principal: PrincipalDep, runtime: RuntimeDep, settings: SettingsDep
) -> Any:
    """OpenAI chat completions: `model` is a task's name, the last user message its input."""
    return await _serve(request, principal, runtime, settings, body, body.inputs, body.new_tokens, chat=True)
