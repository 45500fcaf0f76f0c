"""The in-process configurations of the serving benchmark and the two client models that drive them.

A configuration serves a list of requests at a concurrency c and returns a RoundResult. Two client models:

- closed_loop (engine, http): c client threads, each sends one request, waits for its answer, sends the next.
- lockstep (raw, raw_input_only, peft_grouped, peft_sequential, which have no queue of their own): the requests
  arrive in windows of c, as if c clients sent together; the window is served, then the next one arrives. A
  request's latency runs from its window's arrival to the end of the forward pass that answered it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from app.engine.core.mixed import Row
from app.engine.core.model import FrozenModel
from app.engine.core.segments import Segments
from app.engine.core.text import TaskSpec, encode_example, label_token_ids
from app.engine.formats.artifact import Artifact
from app.engine.formats.peft_adapter import peft_model_of, to_peft
from app.engine.serving.batcher import Batcher, BatcherOptions
from app.engine.serving.pool import PromptPool
from bench.serving_workload import Request, Scores, raw_scores

Answered = list[tuple[Request, Scores]]


@dataclass(frozen=True)
class RoundResult:
    """One timed round: wall seconds from first send to last answer, per-request latencies and answers."""

    wall: float
    latencies: list[float]
    outputs: dict[int, Scores]
    rows_per_batch: float | None = None


def closed_loop(requests: list[Request], concurrency: int, call: Callable[[Request], Scores]) -> RoundResult:
    """c client threads, each with one request in flight at a time; the first error is re-raised."""
    pending = iter(requests)
    lock = threading.Lock()
    latencies: list[float] = []
    outputs: dict[int, Scores] = {}
    errors: list[BaseException] = []

    def client() -> None:
        while not errors:
            with lock:
                request = next(pending, None)
            if request is None:
                return
            sent = time.perf_counter()
            try:
                scores = call(request)
            except BaseException as error:  # handed to the caller's thread below
                errors.append(error)
                return
            elapsed = time.perf_counter() - sent
            with lock:
                latencies.append(elapsed)
                outputs[request.index] = scores

    threads = [threading.Thread(target=client, daemon=True) for _ in range(min(concurrency, len(requests)))]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if errors:
        raise errors[0]
    return RoundResult(wall, latencies, outputs)


def lockstep(
    requests: list[Request], concurrency: int, serve: Callable[[list[Request]], Iterator[Answered]]
) -> RoundResult:
    """Windows of c requests; serve(window) yields the answers of each forward pass as it finishes."""
    latencies: list[float] = []
    outputs: dict[int, Scores] = {}
    batches = 0
    started = time.perf_counter()
    for begin in range(0, len(requests), concurrency):
        arrived = time.perf_counter()
        for answered in serve(requests[begin : begin + concurrency]):
            done = time.perf_counter()
            batches += 1
            for request, scores in answered:
                latencies.append(done - arrived)
                outputs[request.index] = scores
    return RoundResult(time.perf_counter() - started, latencies, outputs, len(outputs) / max(batches, 1))


def _chunks(items: list[Request], size: int) -> Iterator[list[Request]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class RawRunner:
    """(a) raw / (f) raw_input_only: the frozen model alone, batches of up to batch_size, nothing cached.

    With prompts, each row gets its task's prompt prepended (mixed tasks cost nothing extra without a cache);
    without, the model sees the inputs alone: the floor no prompt method can beat. Rows of a window are sorted
    by length before batching, as the engine does, so padding is no handicap.
    """

    def __init__(
        self, frozen: FrozenModel, prompts: list[torch.Tensor] | None, spec: TaskSpec, batch_size: int = 16
    ) -> None:
        self.frozen, self.prompts, self.spec, self.batch_size = frozen, prompts, spec, batch_size

    def serve(self, window: list[Request]) -> Iterator[Answered]:
        for chunk in _chunks(sorted(window, key=lambda request: request.tokens), self.batch_size):
            prompts = [None if self.prompts is None else self.prompts[request.task] for request in chunk]
            scores = raw_scores(self.frozen, self.spec, prompts, [request.text for request in chunk])
            yield list(zip(chunk, scores, strict=True))

    def run(self, requests: list[Request], concurrency: int) -> RoundResult:
        return lockstep(requests, concurrency, self.serve)


class PeftRunner:
    """(b) peft_grouped / (c) peft_sequential: PEFT prompt tuning, one adapter per task, set_adapter per group.

    Rows are right-padded after the virtual tokens (PEFT ignores position_ids, so left padding would shift the
    input's positions), and only each row's last real position goes through the LM head (logits_to_keep), the
    same saving the other configurations get.
    """

    def __init__(self, frozen: FrozenModel, prompts: list[torch.Tensor], spec: TaskSpec, batch_size: int = 16) -> None:
        labels = label_token_ids(frozen, spec)
        if any(len(ids) != 1 for ids in labels):
            raise ValueError("the PEFT configurations score single-token labels only.")
        self.frozen, self.spec, self.batch_size = frozen, spec, batch_size
        self.label_ids = [ids[0] for ids in labels]
        self.virtual = int(prompts[0].shape[0])
        # The app's own PEFT export (what GET /v1/prompts/{id}/export?format=peft writes) loads each prompt.
        adapters = {
            self.adapter(task): to_peft(Artifact("prompt", {"prompt": prompt}), frozen, frozen.identity.name)
            for task, prompt in enumerate(prompts)
        }
        self.model: Any = peft_model_of(frozen, adapters)

    @staticmethod
    def adapter(task: int) -> str:
        return f"task{task}"

    @torch.no_grad()
    def scores(self, task: int, chunk: list[Request]) -> list[Scores]:
        """One forward of rows of one task under its adapter."""
        self.model.set_adapter(self.adapter(task))
        ids = [encode_example(self.frozen, self.spec, request.text, None).input_ids for request in chunk]
        width = max(len(row) for row in ids)
        input_ids = torch.full((len(ids), width), self.frozen.eos_token_id, dtype=torch.long)
        attention_mask = torch.zeros(len(ids), width, dtype=torch.long)
        for row, tokens in enumerate(ids):
            input_ids[row, : len(tokens)] = torch.tensor(tokens)
            attention_mask[row, : len(tokens)] = 1
        last = torch.tensor([[self.virtual + len(tokens) - 1] for tokens in ids])
        device = self.frozen.device
        logits = self.model(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), logits_to_keep=last.to(device)
        ).logits[:, 0]
        probabilities = torch.softmax(torch.log_softmax(logits.float(), dim=-1)[:, self.label_ids], dim=-1)
        return [dict(zip(self.spec.labels, row, strict=True)) for row in probabilities.tolist()]

    def serve_grouped(self, window: list[Request]) -> Iterator[Answered]:
        groups: dict[int, list[Request]] = {}
        for request in window:
            groups.setdefault(request.task, []).append(request)
        for task, group in groups.items():
            for chunk in _chunks(sorted(group, key=lambda request: request.tokens), self.batch_size):
                yield list(zip(chunk, self.scores(task, chunk), strict=True))

    def serve_sequential(self, window: list[Request]) -> Iterator[Answered]:
        for request in window:
            yield [(request, self.scores(request.task, [request])[0])]

    def run_grouped(self, requests: list[Request], concurrency: int) -> RoundResult:
        return lockstep(requests, concurrency, self.serve_grouped)

    def run_sequential(self, requests: list[Request], concurrency: int) -> RoundResult:
        return lockstep(requests, concurrency, self.serve_sequential)


class EngineRunner:
    """(d) engine: promptbank's Batcher in-process, one row per request, c submitting threads."""

    def __init__(
        self,
        frozen: FrozenModel,
        prompts: list[torch.Tensor],
        *,
        pool_capacity: int,
        max_batch_tokens: int,
        max_wait_ms: float,
    ) -> None:
        self.pool = PromptPool(frozen, pool_capacity)
        options = BatcherOptions(max_batch_tokens=max_batch_tokens, max_wait_ms=max_wait_ms, max_queue_rows=100_000)
        self.batcher = Batcher(frozen, self.pool, options)
        self.batcher.start()
        self.prompts = prompts

    def run(self, requests: list[Request], concurrency: int, *, spec: TaskSpec) -> RoundResult:
        """Prompt ids are task numbers; each client thread waits for its request's future."""

        def call(request: Request) -> Scores:
            # As the server does: the caller hands over the prompt the pool lacks (a plain prompt enters as its
            # prefix); prompt ids are task numbers.
            given = {task: Segments(prefix=self.prompts[task]) for task in self.batcher.missing([request.task])}
            row = Row(prompt_id=request.task, spec=spec, text=request.text)
            return self.batcher.submit([row], prompts=given).result()[0]

        before = self.batcher.stats()
        result = closed_loop(requests, concurrency, call)
        after = self.batcher.stats()
        batches = after["batches"] - before["batches"]
        rows = after["rows"] - before["rows"]
        return RoundResult(result.wall, result.latencies, result.outputs, rows / batches if batches else None)

    def close(self) -> None:
        self.batcher.close()
