"""How a completion is written in OpenAI's shapes: the whole response, or a stream's chunks, with usage and logprobs,
for /v1/completions and /v1/chat/completions alike."""

from __future__ import annotations

import time
import uuid
from typing import Any

from app.api.openai_schemas import ChatCompletionRequest, CompletionRequest
from app.services.openai_compat import Choice, Completion


def _usage(completion: Completion) -> dict[str, int]:
    """The token counts of OpenAI's `usage` object."""
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


class CompletionShape:
    """What differs between the two routes' bodies: object names, how a choice and a delta are written."""

    def __init__(self, chat: bool, body: CompletionRequest | ChatCompletionRequest) -> None:
        self.chat, self.body = chat, body
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.chunk_object = "chat.completion.chunk" if chat else "text_completion"
        self.created = int(time.time())

    def logprobs(self, choice: Choice) -> dict[str, Any] | None:
        """The choice's logprobs as this route writes them; None when not asked for."""
        if isinstance(self.body, ChatCompletionRequest):
            return _chat_logprobs(choice, self.body.logprobs, self.body.top_logprobs)
        return _text_logprobs(choice, self.body.logprobs)

    def head(self, completion: Completion | None, obj: str) -> dict[str, Any]:
        """The fields every body and chunk of this completion begins with."""
        head: dict[str, Any] = {"id": self.id, "object": obj, "created": self.created, "model": self.body.model}
        if completion is not None:
            head["system_fingerprint"] = f"prompt-{completion.prompt_id}"
        return head

    def response(self, completion: Completion) -> dict[str, Any]:
        """The whole answer, when it is not streamed."""
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
        """One stream chunk: a piece of one choice's text, its finish reason, its logprobs or the chat role."""
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant"} if role else {}
            if text is not None:
                delta["content"] = text
            choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        else:
            choice = {"index": index, "text": text or "", "logprobs": logprobs, "finish_reason": finish}
        return {**self.head(None, self.chunk_object), "choices": [choice]}

    def usage_chunk(self, completion: Completion) -> dict[str, Any]:
        """The stream's last chunk when the client asked for usage: no choices, the token counts."""
        return {**self.head(completion, self.chunk_object), "choices": [], "usage": _usage(completion)}
