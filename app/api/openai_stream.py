"""A completion as server-sent events: each choice's text streamed as the engine generates it (`data: {chunk}`
per piece, then `data: [DONE]`), an error mid-stream as the last event, and a client that goes away cancelling
its rows."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from sse_starlette import EventSourceResponse

from app.api.openai_responses import CompletionShape
from app.services.inference import RequestBudget
from app.services.openai_compat import Completion

Progress = Callable[[int, str, int], None]  # (choice index, its text so far, its tokens so far)


class Deltas:
    """Each choice's text as the engine generates it, handed from the engine thread to the event loop, and the
    part of it that is settled enough to send: never a partial character, never what may become a stop string."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stop: list[str]) -> None:
        self.loop, self.stop = loop, stop
        self.queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
        self.sent: dict[int, str] = {}

    def progress(self, index: int, text: str, _tokens: int) -> None:  # on the engine thread
        """Hand a choice's text so far to the event loop (the engine's on_progress)."""
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (index, text))

    def _settled(self, text: str) -> str:
        text = text.rstrip("\ufffd")  # a character whose bytes are not all generated yet
        longest = max((len(marker) for marker in self.stop), default=0)
        for size in range(min(longest - 1, len(text)), 0, -1):
            if any(marker.startswith(text[-size:]) for marker in self.stop):
                return text[:-size]
        return text

    def delta(self, index: int, text: str, *, final: bool = False) -> str:
        """What of the choice's text is settled and not yet sent (all of it when final), marked as sent."""
        sent = self.sent.get(index, "")
        settled = text if final else self._settled(text)
        if len(settled) <= len(sent) or not settled.startswith(sent):
            return ""
        self.sent[index] = settled
        return settled[len(sent) :]


def _event(payload: dict[str, Any]) -> dict[str, str]:
    return {"data": json.dumps(payload, separators=(",", ":"))}


async def stream_completion(
    complete: Callable[[Progress], Awaitable[Completion]],
    shape: CompletionShape,
    budget: RequestBudget,
) -> EventSourceResponse:
    """Start the completion (complete(on_progress)) and answer its events, as the request in shape.body asks; a
    refusal before the first token is raised instead, so the client gets a plain error response."""
    deltas = Deltas(asyncio.get_running_loop(), shape.body.stop_strings)
    work = asyncio.ensure_future(complete(deltas.progress))
    work.add_done_callback(lambda task: task.cancelled() or task.exception())  # always retrieved
    first = asyncio.ensure_future(deltas.queue.get())
    await asyncio.wait({work, first}, return_when=asyncio.FIRST_COMPLETED)
    if work.done() and work.exception() is not None:  # refused before a token: a plain error response
        first.cancel()
        raise work.exception()  # type: ignore[misc]

    async def events() -> AsyncIterator[dict[str, str]]:
        pending = first
        try:
            if shape.chat:
                yield _event(shape.chunk(0, "", role=True))
            while True:
                await asyncio.wait({work, pending}, return_when=asyncio.FIRST_COMPLETED)
                if not pending.done():
                    break
                index, text = pending.result()
                if piece := deltas.delta(index, text):
                    yield _event(shape.chunk(index, piece))
                pending = asyncio.ensure_future(deltas.queue.get())
            pending.cancel()
            error = work.exception()
            if error is not None:  # failed mid-stream (deadline, shutdown): the error as the last event
                code = getattr(error, "code", "internal_error")
                message = getattr(error, "message", "the completion failed; it has been logged")
                yield _event({"error": {"message": message, "type": "server_error", "param": None, "code": code}})
                return
            completion = work.result()
            for choice in completion.choices:
                piece = deltas.delta(choice.index, choice.text, final=True)
                logprobs = shape.logprobs(choice)
                if piece or logprobs is not None:
                    yield _event(shape.chunk(choice.index, piece, logprobs=logprobs))
                yield _event(shape.chunk(choice.index, None, finish=choice.finish_reason))
            if shape.body.include_usage:
                yield _event(shape.usage_chunk(completion))
            yield {"data": "[DONE]"}
        finally:
            pending.cancel()
            if not work.done() and budget.cancel is not None:
                budget.cancel.set()  # the client went away mid-stream: its rows stop at the next decode step

    return EventSourceResponse(events(), ping=15)
