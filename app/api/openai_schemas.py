"""Request and response bodies of the OpenAI-compatible routes (/v1/models, /v1/completions, /v1/chat/completions).

Requests accept the fields OpenAI clients send and ignore the sampling ones (decoding is greedy: temperature,
top_p, penalties and seed change nothing); fields that would change the answer's shape in ways this service
cannot honour (n > 1, echo, best_of, suffix, token-id prompts) are refused with a sentence saying so.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.text_checks import refuse_unstorable

MAX_NEW_TOKENS = 512  # the same cap as /v1/infer's max_new_tokens


class _OpenAIRequest(BaseModel):
    # Clients send fields of newer API versions (user, metadata, service_tier, ...): take and ignore them.
    model_config = ConfigDict(extra="allow")

    model: str = Field(description="A task's name (or id): GET /v1/models lists the ready ones.")
    stop: str | list[str] | None = Field(default=None, description="Generation: cut at these strings (up to 8).")
    stream: bool = Field(default=False, description="Server-sent events: a chunk per token, then `data: [DONE]`.")
    stream_options: dict[str, Any] | None = Field(
        default=None, description='{"include_usage": true}: a last chunk with the usage counts.'
    )
    n: int = Field(default=1, description="Only 1: decoding is greedy, so every choice would be the same.")
    temperature: float | None = Field(default=None, description="Ignored: decoding is greedy.")
    top_p: float | None = Field(default=None, description="Ignored: decoding is greedy.")
    user: str | None = Field(
        default=None, max_length=256, description="Under a task's traffic split, the same user meets the same version."
    )

    @model_validator(mode="before")
    @classmethod
    def _storable_text(cls, data: Any) -> Any:
        return refuse_unstorable(data)

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int) -> int:
        if value != 1:
            raise ValueError("only n=1 is served: decoding is greedy, so every choice would be the same")
        return value

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 8:
            raise ValueError(f"at most 8 stop strings, got {len(value)}")
        return value

    @property
    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class CompletionRequest(_OpenAIRequest):
    prompt: str | list[str] = Field(description="The task's input, or a list of inputs (one choice each).")
    max_tokens: int | None = Field(default=16, ge=1, le=MAX_NEW_TOKENS, description="Generation tasks only.")
    logprobs: int | None = Field(
        default=None, ge=0, le=20, description="Classification tasks: the label's log-probability and the top labels."
    )
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _text_prompt(cls, value: Any) -> Any:
        if isinstance(value, list) and value and not all(isinstance(item, str) for item in value):
            raise ValueError("prompts are given as text; token-id prompts are not served")
        if isinstance(value, list) and not value:
            raise ValueError("give at least one prompt")
        return value

    @model_validator(mode="after")
    def _served_shape(self) -> CompletionRequest:
        if self.echo:
            raise ValueError("echo is not served: the answer holds the completion only")
        if self.best_of not in (None, 1):
            raise ValueError("only best_of=1 is served: decoding is greedy")
        if self.suffix:
            raise ValueError("suffix is not served: a task's prompt comes before its input only")
        return self

    @property
    def inputs(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[ContentPart] | None = None

    @property
    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        others = [part.type for part in self.content if part.type != "text"]
        if others:
            raise ValueError(f"only text content is served, got a {others[0]!r} part")
        return "".join(part.text or "" for part in self.content)


class ChatCompletionRequest(_OpenAIRequest):
    messages: list[ChatMessage] = Field(
        min_length=1, description="The last user message's text is the task's input (its prompt is the instruction)."
    )
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS, description="Generation tasks only.")
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS, description="As max_tokens.")
    logprobs: bool = Field(default=False, description="Classification tasks: the label's log-probability.")
    top_logprobs: int | None = Field(default=None, ge=0, le=20, description="With logprobs: the top labels.")

    @model_validator(mode="after")
    def _has_user_message(self) -> ChatCompletionRequest:
        if not any(message.role == "user" for message in self.messages):
            raise ValueError("messages hold no user message: its text is the task's input")
        for message in self.messages:
            message.text  # noqa: B018 (refuses non-text parts up front)
        return self

    @property
    def inputs(self) -> list[str]:
        return [next(m for m in reversed(self.messages) if m.role == "user").text]

    @property
    def new_tokens(self) -> int:
        return self.max_completion_tokens or self.max_tokens or 32


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
