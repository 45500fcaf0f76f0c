"""The batcher's queue: priorities, deadlines, bounded size, failures isolated to their requests."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import Any

import pytest
import torch

from app.engine.core.mixed import Row
from app.engine.core.model import FrozenModel
from app.engine.core.segments import Segments
from app.engine.core.text import TaskSpec
from app.engine.serving.batcher import Batcher, BatcherOptions, QueueFull, QueueTimeout, Result
from app.engine.serving.pool import PromptMissing, PromptPool

SPEC = TaskSpec("classification", "Input: {input}\nLabel:", ("positive", "negative"))


class GatedLoader:
    """Prompt reader (run by the caller before it submits) whose prompt 0 holds the engine thread on demand.

    Prompt 0 is made from each row's input (a per-row prefix), computed inside the round's forward pass on the
    engine thread: it blocks there until the gate opens.
    """

    def __init__(self, hidden: int) -> None:
        self.hidden = hidden
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.threads: set[str] = set()

    def _held(self, embeds: torch.Tensor) -> torch.Tensor:
        self.entered.set()
        self.gate.wait(10)
        return torch.zeros(1, self.hidden)

    def __call__(self, prompt_id: int) -> Segments:
        self.threads.add(threading.current_thread().name)
        if prompt_id == 99:
            raise KeyError("prompt 99 was deleted")
        if prompt_id == 0:
            return Segments(row_prefix=self._held, row_prefix_length=1)
        return Segments(prefix=torch.full((3, self.hidden), 0.01 * prompt_id))


class ReadingBatcher(Batcher):
    """The batcher as the inference service drives it: the caller reads the prompts the pool lacks (on its own
    thread) and submits them with its rows."""

    def __init__(self, frozen: FrozenModel, pool: PromptPool, read: GatedLoader, options: BatcherOptions) -> None:
        super().__init__(frozen, pool, options)
        self.read = read

    def submit(self, rows: list[Row], **options: Any) -> Future[Result]:  # type: ignore[override]
        prompts = {prompt_id: self.read(prompt_id) for prompt_id in self.missing(row.prompt_id for row in rows)}
        return super().submit(rows, prompts=prompts, **options)


def make_batcher(frozen: FrozenModel, capacity: int = 8, **options: float) -> tuple[Batcher, GatedLoader]:
    loader = GatedLoader(frozen.hidden_size)
    batcher = ReadingBatcher(frozen, PromptPool(frozen, capacity=capacity), loader, BatcherOptions(**options))  # type: ignore[arg-type]
    batcher.start()
    return batcher, loader


def test_higher_priority_requests_run_first_when_the_engine_is_busy(frozen: FrozenModel) -> None:
    batcher, loader = make_batcher(frozen, max_batch_rows=1)
    try:
        blocker = batcher.submit([Row(0, SPEC, "hold")])
        assert loader.entered.wait(10)
        done: list[str] = []
        low = batcher.submit([Row(1, SPEC, "low")], priority=-5)
        high = batcher.submit([Row(2, SPEC, "high")], priority=5)
        low.add_done_callback(lambda _f: done.append("low"))
        high.add_done_callback(lambda _f: done.append("high"))
        loader.gate.set()
        blocker.result(10), low.result(10), high.result(10)
        assert done == ["high", "low"]
    finally:
        loader.gate.set()
        batcher.close()


def test_a_request_past_its_timeout_fails_fast_instead_of_running(frozen: FrozenModel) -> None:
    batcher, loader = make_batcher(frozen)
    try:
        blocker = batcher.submit([Row(0, SPEC, "hold")])
        assert loader.entered.wait(10)
        late = batcher.submit([Row(1, SPEC, "late")], timeout=0.01)
        patient = batcher.submit([Row(1, SPEC, "patient")], timeout=60)
        threading.Event().wait(0.05)
        loader.gate.set()
        blocker.result(10)
        with pytest.raises(QueueTimeout):
            late.result(10)
        assert set(patient.result(10)[0]) == {"positive", "negative"}
        assert batcher.stats()["timed_out_requests"] == 1
    finally:
        loader.gate.set()
        batcher.close()


def test_the_queue_is_bounded(frozen: FrozenModel) -> None:
    batcher, loader = make_batcher(frozen, max_queue_rows=3)
    try:
        blocker = batcher.submit([Row(0, SPEC, "hold")])
        assert loader.entered.wait(10)
        batcher.submit([Row(1, SPEC, "a"), Row(1, SPEC, "b")])
        with pytest.raises(QueueFull):
            batcher.submit([Row(1, SPEC, "c"), Row(1, SPEC, "d")])
        loader.gate.set()
        blocker.result(10)
    finally:
        loader.gate.set()
        batcher.close()


def test_a_prompt_that_cannot_be_loaded_fails_only_its_own_request(frozen: FrozenModel) -> None:
    batcher, loader = make_batcher(frozen)
    loader.gate.set()
    try:
        with pytest.raises(KeyError):
            batcher.submit([Row(99, SPEC, "gone")])
        assert set(batcher.submit([Row(1, SPEC, "fine")]).result(10)[0]) == {"positive", "negative"}
    finally:
        batcher.close()


def test_prompts_are_read_on_the_callers_thread_never_on_the_engine_thread(frozen: FrozenModel) -> None:
    batcher, loader = make_batcher(frozen)
    loader.gate.set()
    try:
        futures = [batcher.submit([Row(p, SPEC, "good"), Row(p + 1, SPEC, "bad")]) for p in (1, 3, 5)]
        for future in futures:
            future.result(10)
        # Six prompts read, by the test's thread only: the engine thread resolved what the requests carried.
        assert loader.threads == {threading.current_thread().name}
        assert batcher.pool.stats()["entries"] == 6
        assert batcher.submit([Row(3, SPEC, "again")]).result(10)  # pooled: nothing to load
        assert batcher.pool.stats()["hits"] >= 1
    finally:
        batcher.close()


def test_a_prompt_neither_pooled_nor_given_is_refused_at_submit_not_served_without_it(frozen: FrozenModel) -> None:
    loader = GatedLoader(frozen.hidden_size)
    batcher = Batcher(frozen, PromptPool(frozen, capacity=8))
    batcher.start()
    try:
        with pytest.raises(PromptMissing, match=r"prompts \[5\] are neither in the prompt pool nor given") as refused:
            batcher.submit([Row(5, SPEC, "no prompt"), Row(5, SPEC, "still none")])
        assert refused.value.prompt_ids == [5]
        assert batcher.stats()["queued_requests"] == 0  # nothing was queued
        given = batcher.submit([Row(5, SPEC, "given")], prompts={5: loader(5)}).result(10)[0]
        pooled = batcher.submit([Row(5, SPEC, "given")]).result(10)[0]  # pooled now: nothing to give
        assert pooled == given and set(given) == {"positive", "negative"}
        assert batcher.missing([5, 6]) == {6}
    finally:
        batcher.close()


def test_a_prompt_evicted_before_its_round_sends_its_request_back_to_its_caller(frozen: FrozenModel) -> None:
    batcher, loader = make_batcher(frozen, capacity=2)
    loader.gate.set()
    try:
        batcher.submit([Row(1, SPEC, "pool 1")]).result(10)
        loader.gate.clear()
        blocker = batcher.submit([Row(0, SPEC, "hold")])  # its round pools 0 beside 1, then waits for the gate
        assert loader.entered.wait(10)
        late = batcher.submit([Row(1, SPEC, "1 is pooled, so nothing is given")])
        # First, at a higher priority: prompts 2 and 3 fill the pool (the late request cannot share their round:
        # three prompts would not fit), evicting 1.
        first = batcher.submit([Row(2, SPEC, "a"), Row(3, SPEC, "b")], priority=5)
        loader.gate.set()
        blocker.result(10), first.result(10)
        with pytest.raises(PromptMissing) as missing:
            late.result(10)
        assert missing.value.prompt_ids == [1]
        again = batcher.submit([Row(1, SPEC, "1 is pooled, so nothing is given")]).result(10)[0]
        assert set(again) == {"positive", "negative"}
    finally:
        loader.gate.set()
        batcher.close()


def test_rows_queued_during_a_round_wait_for_the_clients_it_answered(frozen: FrozenModel) -> None:
    # A closed loop of clients: when a round ends, the clients it answered send again within moments. The rows
    # that queued while it ran must not start alone and leave those clients for the round after.
    batcher, loader = make_batcher(frozen, max_wait_ms=200)
    try:
        first = batcher.submit([Row(0, SPEC, "hold")])
        assert loader.entered.wait(10)
        queued = batcher.submit([Row(1, SPEC, "queued while the first round ran")])
        threading.Event().wait(0.5)  # the round outlasts the queued row's max_wait
        loader.gate.set()
        first.result(10)
        threading.Event().wait(0.02)  # the answered client's next request
        again = batcher.submit([Row(2, SPEC, "sent again")])
        queued.result(10), again.result(10)
        stats = batcher.stats()
        assert (stats["batches"], stats["max_batch_rows"]) == (2, 2)
    finally:
        loader.gate.set()
        batcher.close()


def test_a_lone_request_on_an_idle_engine_waits_only_max_wait(frozen: FrozenModel) -> None:
    batcher, loader = make_batcher(frozen, max_wait_ms=50)
    loader.gate.set()
    try:
        batcher.submit([Row(1, SPEC, "warm")]).result(10)
        threading.Event().wait(0.1)
        batcher.submit([Row(1, SPEC, "alone")]).result(10)
        stats = batcher.stats()
        assert stats["queue_ms_p99"] < 1000
        assert 40 <= stats["wait_ms_p50"] <= stats["wait_ms_p99"] < 1000  # the quiet gap, and no more
    finally:
        batcher.close()


def _three_clients_back_after_a_long_round(wait_share: float, frozen: FrozenModel) -> dict[str, Any]:
    """A 0.6 s round of 3 rows, then its 3 clients send again 0.15 s apart (three times the 50 ms quiet gap)."""
    batcher, loader = make_batcher(frozen, max_wait_ms=50, wait_share=wait_share)
    try:
        first = batcher.submit([Row(0, SPEC, "hold"), Row(1, SPEC, "a"), Row(2, SPEC, "b")])
        assert loader.entered.wait(10)
        threading.Event().wait(0.6)
        loader.gate.set()
        first.result(10)
        futures = []
        for text in ("back", "back later", "back last"):
            threading.Event().wait(0.15)
            futures.append(batcher.submit([Row(1, SPEC, text)]))
        for future in futures:
            future.result(10)
        return batcher.stats()
    finally:
        loader.gate.set()
        batcher.close()


def test_a_round_waits_for_as_many_rows_as_the_last_one_served(frozen: FrozenModel) -> None:
    # Clients answered by a round come back spread out (over HTTP, tens of ms apart): the next round waits for
    # as many rows as the last one served, up to wait_share of its compute time, not just for a quiet gap.
    stats = _three_clients_back_after_a_long_round(1.0, frozen)
    assert (stats["batches"], stats["rows"]) == (2, 6)
    assert stats["wait_ms_p99"] >= 300  # the second round waited for all three clients


def test_with_no_wait_share_a_round_waits_max_wait_at_most(frozen: FrozenModel) -> None:
    stats = _three_clients_back_after_a_long_round(0.0, frozen)
    assert stats["batches"] == 4  # each client that came back ran alone


GENERATE = TaskSpec("generation", "Input: {input}\nOutput:")


def _wait_until(condition: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_short_requests_join_and_leave_a_running_generation_without_waiting_for_it(frozen: FrozenModel) -> None:
    """Continuous batching: a classification and a 2-token generation that arrive while a long generation decodes
    are answered before it ends, and every answer is the one it gets alone."""
    long_row = Row(1, GENERATE, "once upon a time", max_new_tokens=400)
    short_gen, short_cls = Row(2, GENERATE, "hello", max_new_tokens=2), Row(3, SPEC, "a good day")
    batcher, _ = make_batcher(frozen)
    try:
        alone = [batcher.submit([row]).result(30)[0] for row in (long_row, short_gen, short_cls)]
        assert len(frozen.tokenizer(alone[0])["input_ids"]) > 100  # long enough to be caught running
        long = batcher.submit([long_row])
        _wait_until(lambda: batcher.stats()["decoding_rows"] == 1)
        shorts = [batcher.submit([short_gen]), batcher.submit([short_cls])]
        answers = [future.result(30)[0] for future in shorts]
        assert not long.done()  # both were answered while the long generation was still decoding
        assert answers == alone[1:]
        assert long.result(30)[0] == alone[0]
    finally:
        batcher.close()
