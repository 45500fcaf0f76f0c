"""OpenAI-compatible serving: a task is a model (by name), served by the same mixed-task engine as /v1/infer.

GET /v1/models lists the ready tasks; POST /v1/completions and /v1/chat/completions answer in OpenAI's shapes,
with `stream: true` as server-sent events (`data: {chunk}` per token, then `data: [DONE]`). Errors on these routes
use OpenAI's error shape.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Request
from sse_starlette import EventSourceResponse

from app.api.auth import PrincipalDep
from app.api.deps import AUTH_RESPONSES, INFER, READ, ReadSessionDep, RuntimeDep, SettingsDep, request_budget
from app.api.openai_schemas import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList
from app.api.routes.infer import MODEL_RESPONSES, check_count, note_task
from app.db.models import Task
from app.db.repositories import scope_session
from app.errors import Conflict
from app.services.inference import Budget
from app.services.openai_compat import Choice, Completion, complete, ready_models
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


class _Deltas:
    """Each choice's text as the engine generates it, handed from the engine thread to the event loop, and the
    part of it that is settled enough to send: never a partial character, never what may become a stop string."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stop: list[str]) -> None:
        self.loop, self.stop = loop, stop
        self.queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
        self.sent: dict[int, str] = {}

    def progress(self, index: int, text: str, _tokens: int) -> None:  # on the engine thread
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (index, text))

    def _settled(self, text: str) -> str:
        text = text.rstrip("\ufffd")  # a character whose bytes are not all generated yet
        longest = max((len(marker) for marker in self.stop), default=0)
        for size in range(min(longest - 1, len(text)), 0, -1):
            if any(marker.startswith(text[-size:]) for marker in self.stop):
                return text[:-size]
        return text

    def delta(self, index: int, text: str, *, final: bool = False) -> str:
        sent = self.sent.get(index, "")
        settled = text if final else self._settled(text)
        if len(settled) <= len(sent) or not settled.startswith(sent):
            return ""
        self.sent[index] = settled
        return settled[len(sent) :]


async def _complete(
    request: Request,
    principal: Any,
    runtime: Any,
    model: str,
    inputs: list[str],
    max_tokens: int,
    stop: list[str],
    budget: Budget,
    logprobs: bool,
    on_progress: Callable[[int, str, int], None] | None = None,
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
            )

    completion = await anyio.to_thread.run_sync(work)
    note_task(request, completion.task.name, len(inputs))
    return completion


def _usage(completion: Completion) -> dict[str, int]:
    return {
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "total_tokens": completion.prompt_tokens + completion.completion_tokens,
    }


def _text_logprobs(choice: Choice, top: int | None) -> dict[str, Any] | None:
    """/v1/completions' logprobs: the label as one token, with the `top` best labels."""
    if top is None or choice.label_logprobs is None:
        return None
    ranked = list(choice.label_logprobs.items())
    return {
        "tokens": [choice.text],
        "token_logprobs": [choice.label_logprobs[choice.text]],
        "top_logprobs": [dict(ranked[:top])],
        "text_offset": [0],
    }


def _chat_logprobs(choice: Choice, wanted: bool, top: int | None) -> dict[str, Any] | None:
    """/v1/chat/completions' logprobs: the label as the content's one token, with the `top` best labels."""
    if not wanted or choice.label_logprobs is None:
        return None
    ranked = list(choice.label_logprobs.items())[: top or 0]
    return {
        "content": [
            {
                "token": choice.text,
                "logprob": choice.label_logprobs[choice.text],
                "bytes": list(choice.text.encode()),
                "top_logprobs": [{"token": t, "logprob": p, "bytes": list(t.encode())} for t, p in ranked],
            }
        ],
        "refusal": None,
    }


class _Shape:
    """What differs between the two routes' bodies: object names, how a choice and a delta are written."""

    def __init__(self, chat: bool, body: CompletionRequest | ChatCompletionRequest) -> None:
        self.chat, self.body = chat, body
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.chunk_object = "chat.completion.chunk" if chat else "text_completion"
        self.created = int(time.time())

    def logprobs(self, choice: Choice) -> dict[str, Any] | None:
        if isinstance(self.body, ChatCompletionRequest):
            return _chat_logprobs(choice, self.body.logprobs, self.body.top_logprobs)
        return _text_logprobs(choice, self.body.logprobs)

    def head(self, completion: Completion | None, obj: str) -> dict[str, Any]:
        head: dict[str, Any] = {"id": self.id, "object": obj, "created": self.created, "model": self.body.model}
        if completion is not None:
            head["system_fingerprint"] = f"prompt-{completion.prompt_id}"
        return head

    def response(self, completion: Completion) -> dict[str, Any]:
        if self.chat:
            choices = [
                {
                    "index": c.index,
                    "message": {"role": "assistant", "content": c.text, "refusal": None},
                    "logprobs": self.logprobs(c),
                    "finish_reason": c.finish_reason,
                }
                for c in completion.choices
            ]
        else:
            choices = [
                {"index": c.index, "text": c.text, "logprobs": self.logprobs(c), "finish_reason": c.finish_reason}
                for c in completion.choices
            ]
        obj = "chat.completion" if self.chat else "text_completion"
        return {**self.head(completion, obj), "choices": choices, "usage": _usage(completion)}

    def chunk(
        self,
        index: int,
        text: str | None,
        *,
        finish: str | None = None,
        logprobs: dict[str, Any] | None = None,
        role: bool = False,
    ) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant"} if role else {}
            if text is not None:
                delta["content"] = text
            choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        else:
            choice = {"index": index, "text": text or "", "logprobs": logprobs, "finish_reason": finish}
        return {**self.head(None, self.chunk_object), "choices": [choice]}

    def usage_chunk(self, completion: Completion) -> dict[str, Any]:
        return {**self.head(completion, self.chunk_object), "choices": [], "usage": _usage(completion)}


def _data(payload: dict[str, Any]) -> dict[str, str]:
    return {"data": json.dumps(payload, separators=(",", ":"))}


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
    check_count(inputs, settings.max_infer_inputs)
    budget = request_budget(request, settings, None)
    shape = _Shape(chat, body)
    wants_logprobs = bool(body.logprobs) if chat else body.logprobs is not None
    run = (request, principal, runtime, body.model, inputs, max_tokens, body.stop_strings, budget, wants_logprobs)
    if not body.stream:
        return shape.response(await _complete(*run))

    deltas = _Deltas(asyncio.get_running_loop(), body.stop_strings)
    work = asyncio.ensure_future(_complete(*run, on_progress=deltas.progress))
    work.add_done_callback(lambda task: task.cancelled() or task.exception())  # always retrieved
    first = asyncio.ensure_future(deltas.queue.get())
    await asyncio.wait({work, first}, return_when=asyncio.FIRST_COMPLETED)
    if work.done() and work.exception() is not None:  # refused before a token: a plain error response
        first.cancel()
        raise work.exception()  # type: ignore[misc]

    async def events() -> AsyncIterator[dict[str, str]]:
        pending = first
        try:
            if chat:
                yield _data(shape.chunk(0, "", role=True))
            while True:
                await asyncio.wait({work, pending}, return_when=asyncio.FIRST_COMPLETED)
                if not pending.done():
                    break
                index, text = pending.result()
                if piece := deltas.delta(index, text):
                    yield _data(shape.chunk(index, piece))
                pending = asyncio.ensure_future(deltas.queue.get())
            pending.cancel()
            error = work.exception()
            if error is not None:  # failed mid-stream (deadline, shutdown): the error as the last event
                code = getattr(error, "code", "internal_error")
                message = getattr(error, "message", "the completion failed; it has been logged")
                yield _data({"error": {"message": message, "type": "server_error", "param": None, "code": code}})
                return
            completion = work.result()
            for choice in completion.choices:
                piece = deltas.delta(choice.index, choice.text, final=True)
                logprobs = shape.logprobs(choice)
                if piece or logprobs is not None:
                    yield _data(shape.chunk(choice.index, piece, logprobs=logprobs))
                yield _data(shape.chunk(choice.index, None, finish=choice.finish_reason))
            if body.include_usage:
                yield _data(shape.usage_chunk(completion))
            yield {"data": "[DONE]"}
        finally:
            pending.cancel()
            if not work.done() and budget.cancel is not None:
                budget.cancel.set()  # the client went away mid-stream: its rows stop at the next decode step

    return EventSourceResponse(events(), ping=15)


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
