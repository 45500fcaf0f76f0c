"""Model requests through the balancer: each (task, input) served alone first, its answer kept as the reference;
then an open-loop load (a fixed rate, each request sent at its time whatever became of those before it) whose every
answer is recorded and compared with its reference.

A wrong answer: another version served it than alone, another label (unless alone its two best labels were within
the tolerance: a tie either way is right), a label's probability further than the tolerance from alone, or another
generated text. Batches that mix tasks and rows differ from a row alone only by float rounding."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx

from bench.cluster_hosts import REPLICA_HEADER


@dataclass(frozen=True)
class Sample:
    task: str
    text: str
    max_new_tokens: int | None = None  # generation tasks: a short answer keeps the load's work small

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"task": self.task, "inputs": [self.text]}
        if self.max_new_tokens is not None:
            body["max_new_tokens"] = self.max_new_tokens
        return body


@dataclass
class Outcome:
    """One request of the load: when it was due (time.monotonic()), how it ended, who answered and what."""

    sample: Sample
    sent: float
    latency: float
    status: int | None  # None: no HTTP answer (connection error or the client's timeout)
    error: str | None  # the body's error code, or the transport error's name
    replica: str | None
    answer: dict[str, Any] | None  # a 200's {"prompt_id", "output"}

    @property
    def failure(self) -> str | None:
        """How the request failed ("503 overloaded", "timeout", ...), None when answered."""
        if self.status == 200:
            return None
        return f"{self.status} {self.error}" if self.status is not None else str(self.error)


def _answer(response: httpx.Response) -> tuple[str | None, dict[str, Any] | None]:
    try:
        body = response.json()
    except ValueError:  # the replicas answer JSON; HAProxy's own answers (503: no replica up, 502, 504) are HTML
        return "from_balancer", None
    if response.status_code == 200:
        return None, {"prompt_id": body["prompt_id"], "output": body["outputs"][0]}
    error = body.get("error") if isinstance(body, dict) else None
    return (error.get("code") if isinstance(error, dict) else "no_code"), None


def references(client: httpx.Client, samples: list[Sample]) -> dict[Sample, dict[str, Any]]:
    """Each sample served alone, one request at a time: the answers the load's are checked against."""
    answers = {}
    for sample in samples:
        response = client.post("/v1/infer", json=sample.body())
        response.raise_for_status()
        _, answers[sample] = _answer(response)
    return answers  # type: ignore[return-value]


def wrong(answer: dict[str, Any], alone: dict[str, Any], tolerance: float) -> str | None:
    """Why an answer differs from the same sample served alone, or None when it is the same."""
    if answer["prompt_id"] != alone["prompt_id"]:
        return f"version {answer['prompt_id']} answered, {alone['prompt_id']} alone"
    got, want = answer["output"], alone["output"]
    if "text" in want:
        return None if got.get("text") == want["text"] else f"text {got.get('text')!r}, alone {want['text']!r}"
    scores, alone_scores = got.get("scores", {}), want["scores"]
    if set(scores) != set(alone_scores):
        return f"labels {sorted(scores)}, alone {sorted(alone_scores)}"
    drift = max(abs(scores[label] - alone_scores[label]) for label in alone_scores)
    if drift > tolerance:
        return f"a probability {drift:.2g} from alone"
    best, second = sorted(alone_scores.values(), reverse=True)[:2] if len(alone_scores) > 1 else (1.0, 0.0)
    if got.get("label") != want["label"] and best - second > tolerance:
        return f"label {got.get('label')}, alone {want['label']}"
    return None


class OpenLoop:
    """Requests at `rate` per second from a thread of its own (asyncio), cycling through samples, until stop()."""

    def __init__(self, url: str, key: str, samples: list[Sample], rate: float, timeout: float) -> None:
        self.url, self.key, self.samples, self.rate, self.timeout = url, key, samples, rate, timeout
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="open-loop", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> list[Outcome]:
        """Stop sending; wait for the requests in flight (each ends by the client's timeout at the latest)."""
        self._stop.set()
        self._thread.join()
        return sorted(self.outcomes, key=lambda outcome: outcome.sent)

    async def _run(self) -> None:
        # no connection limit: a request waiting for a free connection would no longer be sent at its time
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        headers = {"Authorization": f"Bearer {self.key}"}
        async with httpx.AsyncClient(base_url=self.url, headers=headers, timeout=self.timeout, limits=limits) as client:
            began, number, flying = time.monotonic(), 0, set()
            while not self._stop.is_set():
                due = began + number / self.rate
                if (wait := due - time.monotonic()) > 0:
                    await asyncio.sleep(wait)
                request = asyncio.create_task(self._one(client, self.samples[number % len(self.samples)], due))
                flying.add(request)
                request.add_done_callback(flying.discard)
                number += 1
            await asyncio.gather(*flying)

    async def _one(self, client: httpx.AsyncClient, sample: Sample, due: float) -> None:
        status: int | None
        error: str | None
        try:
            response = await client.post("/v1/infer", json=sample.body())
        except httpx.TimeoutException:
            status, error, replica, answer = None, "timeout", None, None
        except httpx.HTTPError as exc:
            status, error, replica, answer = None, type(exc).__name__, None, None
        else:
            status, replica = response.status_code, response.headers.get(REPLICA_HEADER)
            error, answer = _answer(response)
        latency = time.monotonic() - due
        self.outcomes.append(Outcome(sample, due, latency, status, error, replica, answer))
