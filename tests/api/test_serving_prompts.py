"""The request hands the engine its prompts: each version the pool lacks is read once, one evicted before its round
is read again and served, and labels are measured as the engine scores them."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event

from app.engine.core.mixed import Row
from app.engine.core.model import FrozenModel
from app.engine.core.one_prompt import classify
from app.engine.core.segments import Segments
from app.engine.core.text import TaskSpec, label_token_ids, render
from app.engine.serving.runtime import ModelRuntime
from tests.api.helpers import create_task
from tests.api.test_serving import add_tasks_with_random_prompts, store_random_prompt

SPEC = TaskSpec("classification", "Input: {input}\nLabel:", ("positive", "negative"))
UNSTORED = 10**6  # prompt ids no stored version has: prompts the test hands the engine itself


@contextmanager
def tensor_reads() -> Iterator[list[str]]:
    """The SQL statements that read prompt tensors, on any engine, while the block runs."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "prompts.tensors" in statement:
            seen.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", record)


def _infer(client: TestClient, task: str, inputs: list[str], **extra: Any) -> dict[str, Any]:
    response = client.post("/v1/infer", json={"task": task, "inputs": inputs, **extra})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_a_version_the_pool_lacks_is_read_once_and_not_again_while_pooled(
    client: TestClient, db_engine: Engine, frozen: FrozenModel
) -> None:
    add_tasks_with_random_prompts(client, db_engine, frozen, 1)
    with tensor_reads() as reads:
        _infer(client, "task0", ["good", "bad"])
    assert len(reads) == 1
    with tensor_reads() as reads:
        _infer(client, "task0", ["good"])
        _infer(client, "task0", ["a film"])
    assert reads == []
    # An ensemble of the pooled version and a new one reads the new one only.
    task_id = client.get("/v1/tasks/task0").json()["id"]
    first = client.get("/v1/tasks/task0").json()["active_prompt_id"]
    second = store_random_prompt(db_engine, frozen, task_id, torch.randn(4, frozen.hidden_size))
    with tensor_reads() as reads:
        body = _infer(client, "task0", ["good"], ensemble=[first, second])
    assert body["ensemble"] == [first, second] and len(reads) == 1


def _gated(hidden: int, entered: threading.Event, gate: threading.Event) -> Segments:
    """A prompt made from each row's input inside the forward pass, which holds the engine thread until the gate."""

    def held(_embeds: torch.Tensor) -> torch.Tensor:
        entered.set()
        gate.wait(10)
        return torch.zeros(1, hidden)

    return Segments(row_prefix=held, row_prefix_length=1)


def _wait_until(condition: Callable[[], bool]) -> None:
    for _ in range(1000):
        if condition():
            return
        threading.Event().wait(0.01)
    raise AssertionError("timed out")


def test_a_version_evicted_before_its_round_is_read_again_and_served(
    client_with: Callable[..., TestClient], db_engine: Engine, frozen: FrozenModel
) -> None:
    client = client_with(pool_capacity=2)
    spec, prompt = add_tasks_with_random_prompts(client, db_engine, frozen, 1)["task0"]
    _infer(client, "task0", ["good"])  # pooled from here on
    runtime: ModelRuntime = client.app.state.runtime  # type: ignore[attr-defined]
    entered, gate = threading.Event(), threading.Event()
    outcome: list[dict[str, Any]] = []
    try:
        # The engine is held in a round that pools one more prompt (the pool holds two: task0's and this one).
        runtime.submit([Row(UNSTORED, SPEC, "hold")], prompts={UNSTORED: _gated(frozen.hidden_size, entered, gate)})
        assert entered.wait(10)
        with tensor_reads() as reads:
            # task0's version is pooled, so the request carries nothing ...
            caller = threading.Thread(target=lambda: outcome.append(_infer(client, "task0", ["good"])))
            caller.start()
            _wait_until(lambda: (runtime.stats() or {})["queued_requests"] == 1)
            assert reads == []
            # ... and two prompts served first, at a higher priority, evict it before its round.
            others = {UNSTORED + i: Segments(prefix=torch.randn(2, frozen.hidden_size)) for i in (1, 2)}
            rows = [Row(prompt_id, SPEC, "first") for prompt_id in others]
            evicting = runtime.submit(rows, prompts=others, priority=5)
            gate.set()
            evicting.result(10)
            caller.join(30)
        assert len(reads) == 1  # read again after the eviction, once
    finally:
        gate.set()
    expected = classify(frozen, prompt, spec, ["good"])[0]
    scores = outcome[0]["outputs"][0]["scores"]
    assert max(abs(scores[label] - p) for label, p in expected.items()) < 1e-4
    pool = client.get("/v1/stats").json()["engine"]["pool"]
    assert pool["misses"] == 5 and pool["evictions"] >= 2  # task0 twice, the holder, the two others


def test_labels_are_measured_as_the_engine_scores_them(
    client: TestClient, db_engine: Engine, frozen: FrozenModel
) -> None:
    # A template ending in a newline: labels follow it without a space, and " negative" is one token where
    # "negative" is three; a row must leave room for the three the engine scores.
    spec = TaskSpec("classification", "Review: {input}\nSentiment:\n", ("positive", "negative"))
    task = create_task(client, "newline", template=spec.template, labels=list(spec.labels))
    store_random_prompt(db_engine, frozen, task["id"], torch.randn(4, frozen.hidden_size))
    scored = max(len(ids) for ids in label_token_ids(frozen, spec))
    spaced = max(len(frozen.encode(" " + label)) for label in spec.labels)
    assert scored > spaced

    def tokens(words: int) -> int:
        return len(frozen.encode(render(spec.template, " ".join(["good"] * words)))) + 4 + scored

    longest = next(words for words in range(1, 400) if tokens(words + 1) > frozen.max_positions)
    assert tokens(longest + 1) - scored + spaced <= frozen.max_positions  # accepted by a space-prefixed count
    fits = client.post("/v1/infer", json={"task": "newline", "inputs": [" ".join(["good"] * longest)]})
    assert fits.status_code == 200, fits.text
    over = client.post("/v1/infer", json={"task": "newline", "inputs": [" ".join(["good"] * (longest + 1))]})
    assert over.status_code == 422, over.text
    error = over.json()["error"]
    assert error["code"] == "input_too_long" and error["details"]["tokens"] == tokens(longest + 1)
