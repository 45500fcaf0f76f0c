"""The OpenAI-compatible routes, called with the official `openai` client against a live local server: models are
the ready tasks, completions equal /v1/infer's answers, streams add up to the same text, errors parse as OpenAI's."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterator

import httpx
import openai
import pytest

from app.api.openai_stream import Deltas
from tests.api.helpers import create_dataset, create_task, start_job, toy_examples, wait_for_job
from tests.live_server import ADMIN_KEY

INPUTS = ["a good film with a fine cast", "bad", "the plot was awful and long"]


@pytest.fixture
def http(live_url: str) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=live_url, headers=headers, timeout=120) as client:
        yield client


@pytest.fixture
def oai(live_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live_url}/v1", api_key=ADMIN_KEY, max_retries=0, timeout=120)


def _train(http: httpx.Client, name: str, kind: str = "classification") -> None:
    if kind == "classification":
        create_task(http, name)  # type: ignore[arg-type]
        dataset = create_dataset(http, toy_examples(24))  # type: ignore[arg-type]
    else:
        http.post("/v1/tasks", json={"name": name, "kind": "generation"}).raise_for_status()
        pairs = [{"input": f"say {w}", "output": f"{w} {w} and {w}"} for w in ["yes", "no", "ok", "hi"] * 3]
        dataset = create_dataset(http, pairs, name=f"{name}-data")  # type: ignore[arg-type]
    job = wait_for_job(http, start_job(http, name, dataset["id"], steps=4)["id"])  # type: ignore[arg-type]
    assert job["status"] == "succeeded", job


def _infer(http: httpx.Client, task: str, inputs: list[str], **extra: object) -> list[dict[str, object]]:
    response = http.post("/v1/infer", json={"task": task, "inputs": inputs, **extra})
    assert response.status_code == 200, response.text
    return response.json()["outputs"]  # type: ignore[no-any-return]


def test_models_are_the_ready_tasks(http: httpx.Client, oai: openai.OpenAI) -> None:
    _train(http, "sentiment")
    create_task(http, "draft")  # type: ignore[arg-type]
    listed = oai.models.list()
    assert [model.id for model in listed.data] == ["sentiment"]
    assert oai.models.retrieve("sentiment").id == "sentiment"
    with pytest.raises(openai.ConflictError) as untrained:
        oai.models.retrieve("draft")
    assert untrained.value.code == "task_not_trained"
    with pytest.raises(openai.NotFoundError) as unknown:
        oai.models.retrieve("nope")
    assert unknown.value.code == "model_not_found" and "nope" in unknown.value.message


def test_classification_answers_the_label_with_its_probabilities(http: httpx.Client, oai: openai.OpenAI) -> None:
    _train(http, "sentiment")
    served = _infer(http, "sentiment", INPUTS)
    completion = oai.completions.create(model="sentiment", prompt=INPUTS, logprobs=2)
    assert [choice.text for choice in completion.choices] == [row["label"] for row in served]
    for choice, row in zip(completion.choices, served, strict=True):
        assert choice.logprobs is not None and choice.finish_reason == "stop"
        top = choice.logprobs.top_logprobs[0]  # type: ignore[index]
        assert set(top) == {"positive", "negative"}
        for label, logprob in top.items():
            assert math.exp(logprob) == pytest.approx(row["scores"][label], abs=1e-6)  # type: ignore[index]
    assert completion.usage is not None and completion.usage.prompt_tokens > len(INPUTS)
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens

    chat = oai.chat.completions.create(
        model="sentiment",
        messages=[{"role": "system", "content": "ignored"}, {"role": "user", "content": INPUTS[1]}],
        logprobs=True,
        top_logprobs=1,
    )
    assert chat.choices[0].message.content == served[1]["label"]
    content = chat.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and content[0].token == served[1]["label"]
    assert [entry.token for entry in content[0].top_logprobs] == [served[1]["label"]]


def test_generation_equals_infer_and_streams_the_same_text(http: httpx.Client, oai: openai.OpenAI) -> None:
    _train(http, "echo", kind="generation")
    prompts = ["say yes", "say ok"]
    served = _infer(http, "echo", prompts, max_new_tokens=6)
    completion = oai.completions.create(model="echo", prompt=prompts, max_tokens=6)
    assert [choice.text for choice in completion.choices] == [row["text"] for row in served]
    assert completion.usage is not None and 0 < completion.usage.completion_tokens <= 12
    for choice in completion.choices:
        assert choice.finish_reason in ("stop", "length")

    pieces: dict[int, list[str]] = {0: [], 1: []}
    finish: dict[int, str | None] = {}
    for chunk in oai.completions.create(model="echo", prompt=prompts, max_tokens=6, stream=True):
        for choice in chunk.choices:
            if choice.text:
                pieces[choice.index].append(choice.text)
            if choice.finish_reason is not None:
                finish[choice.index] = choice.finish_reason
    assert ["".join(pieces[i]) for i in (0, 1)] == [row["text"] for row in served]
    assert finish == {i: choice.finish_reason for i, choice in enumerate(completion.choices)}
    # a token at a time: a text of several tokens arrives in several chunks
    longest = max(range(2), key=lambda i: completion.choices[i].text.count(" "))
    if completion.choices[longest].text.strip().count(" ") >= 1:
        assert len(pieces[longest]) >= 2

    chunks = list(
        oai.chat.completions.create(
            model="echo",
            messages=[{"role": "user", "content": "say yes"}],
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == served[0]["text"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens >= 1


def test_errors_come_in_openai_shape(http: httpx.Client, oai: openai.OpenAI) -> None:
    _train(http, "echo", kind="generation")
    with pytest.raises(openai.NotFoundError) as unknown:
        oai.completions.create(model="missing", prompt="hi")
    assert unknown.value.code == "model_not_found"
    assert unknown.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    with pytest.raises(openai.UnprocessableEntityError) as many:
        oai.completions.create(model="echo", prompt="hi", n=2)
    assert many.value.body["param"] == "n" and "greedy" in many.value.message  # type: ignore[index]
    with pytest.raises(openai.UnprocessableEntityError) as logprobs:
        oai.completions.create(model="echo", prompt="hi", logprobs=1)
    assert logprobs.value.code == "logprobs_unsupported"
    with pytest.raises(openai.UnprocessableEntityError) as no_user:
        oai.chat.completions.create(model="echo", messages=[{"role": "system", "content": "x"}])
    assert "user message" in no_user.value.message
    with pytest.raises(openai.UnprocessableEntityError) as streamed_refusal:  # refused before the stream starts
        list(oai.completions.create(model="echo", prompt="x" * 100_000, stream=True))
    assert streamed_refusal.value.code == "input_too_long"
    stranger = openai.OpenAI(base_url=str(http.base_url).rstrip("/") + "/v1", api_key="pb_wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as unknown_key:
        stranger.models.list()
    assert unknown_key.value.body["type"] == "authentication_error"  # type: ignore[index]
    raw = http.post("/v1/completions", json={"model": "echo", "prompt": [1, 2, 3]})
    assert raw.status_code == 422 and set(raw.json()["error"]) == {"message", "type", "param", "code"}


def test_a_fresh_service_answers_api_key_empty_until_keys_exist(live_server_with: Callable[..., str]) -> None:
    url = live_server_with(admin_key=None)  # no key yet: single-user mode, as a first try on one's own machine
    with httpx.Client(base_url=url, timeout=120) as local:
        _train(local, "sentiment")
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="EMPTY", max_retries=0, timeout=120)
        assert [m.id for m in client.models.list().data] == ["sentiment"]
        done = client.completions.create(model="sentiment", prompt="a good film")
        assert done.choices[0].text in ("positive", "negative")
        created = local.post("/v1/keys", json={"tenant": "default", "scopes": ["read", "infer"]})
        assert created.status_code == 201
    with pytest.raises(openai.AuthenticationError) as unknown:  # keys exist: an unknown key is refused
        client.models.list()
    assert unknown.value.code == "invalid_key"
    keyed = openai.OpenAI(base_url=f"{url}/v1", api_key=created.json()["key"], max_retries=0, timeout=120)
    assert [m.id for m in keyed.models.list().data] == ["sentiment"]


def test_deltas_hold_back_partial_characters_and_stop_prefixes() -> None:
    loop = asyncio.new_event_loop()
    try:
        deltas = Deltas(loop, ["\n\n"])
        assert deltas.delta(0, "Hello\n") == "Hello"  # "\n" may begin the stop string
        assert deltas.delta(0, "Hello\nthere\ufffd") == "\nthere"  # "\ufffd": a character still incomplete
        assert deltas.delta(0, "Hello\nthere é") == " é"
        assert deltas.delta(1, "other") == "other"  # each choice separately
        assert deltas.delta(0, "Hello\nthere é", final=True) == ""
        assert deltas.delta(0, "Hello\nthere é!", final=True) == "!"
    finally:
        loop.close()
