"""Work whose client went away or whose deadline passed is stopped: dropped before its round, or cut at the next
decoding step, without touching the rows it shares a batch with; the waiting caller is let go at once."""

from __future__ import annotations

import threading

import pytest

from app.engine.core.mixed import Row
from app.engine.core.model import FrozenModel
from app.engine.core.text import TaskSpec
from app.engine.serving.batcher import QueueTimeout, RequestCancelled
from app.engine.serving.runtime import ModelRuntime
from tests.engine.test_batcher import SPEC, GatedLoader, make_batcher

ANSWER = TaskSpec("generation", "Q: {input}\nA:")


def _generate(frozen: FrozenModel, rows: list[Row]) -> list[str]:
    batcher, loader = make_batcher(frozen)
    loader.gate.set()
    try:
        return batcher.submit(rows).result(30)
    finally:
        batcher.close()


def test_a_cancelled_row_stops_decoding_and_its_batch_mates_are_unchanged(frozen: FrozenModel) -> None:
    alone = _generate(frozen, [Row(1, ANSWER, "tell me more", max_new_tokens=12)])
    assert alone[0] != ""  # the row does generate when left alone
    stopped = threading.Event()
    stopped.set()
    mixed = _generate(
        frozen,
        [
            Row(1, ANSWER, "tell me more", max_new_tokens=12, cancel=stopped),
            Row(1, ANSWER, "tell me more", max_new_tokens=12),
        ],
    )
    assert mixed == ["", alone[0]]


def test_a_request_cancelled_while_queued_is_dropped_before_its_round(frozen: FrozenModel) -> None:
    batcher, loader = make_batcher(frozen)
    try:
        blocker = batcher.submit([Row(0, SPEC, "hold")])
        assert loader.entered.wait(10)
        cancel = threading.Event()
        gone = batcher.submit([Row(1, SPEC, "gone")], cancel=cancel)
        kept = batcher.submit([Row(1, SPEC, "kept")])
        cancel.set()
        loader.gate.set()
        blocker.result(10)
        with pytest.raises(RequestCancelled):
            gone.result(10)
        assert set(kept.result(10)[0]) == {"positive", "negative"}
        assert batcher.stats()["cancelled_requests"] == 1
    finally:
        loader.gate.set()
        batcher.close()


def _held_runtime(frozen: FrozenModel) -> tuple[ModelRuntime, GatedLoader]:
    runtime = ModelRuntime.from_model(frozen)
    loader = GatedLoader(frozen.hidden_size)
    runtime.start()
    runtime.submit([Row(0, SPEC, "hold")], prompts={0: loader(0)})
    assert loader.entered.wait(10)
    return runtime, loader


def test_a_caller_whose_client_left_is_let_go_while_the_engine_is_still_busy(frozen: FrozenModel) -> None:
    runtime, loader = _held_runtime(frozen)
    try:
        cancel = threading.Event()
        outcome: list[BaseException] = []

        def call() -> None:
            try:
                runtime.run([Row(1, SPEC, "x", cancel=cancel)], prompts={1: loader(1)}, cancel=cancel)
            except BaseException as exc:
                outcome.append(exc)

        caller = threading.Thread(target=call)
        caller.start()
        cancel.set()
        caller.join(10)
        assert not caller.is_alive() and not loader.gate.is_set()  # released while the engine is still held
        assert isinstance(outcome[0], RequestCancelled)
    finally:
        loader.gate.set()
        runtime.close()


def test_a_request_past_its_timeout_is_answered_and_its_rows_are_stopped(frozen: FrozenModel) -> None:
    runtime, loader = _held_runtime(frozen)
    try:
        cancel = threading.Event()
        with pytest.raises(QueueTimeout):
            rows = [Row(1, ANSWER, "q", max_new_tokens=50, cancel=cancel)]
            runtime.run(rows, prompts={1: loader(1)}, timeout=0.1, cancel=cancel)
        assert cancel.is_set() and not loader.gate.is_set()
    finally:
        loader.gate.set()
        runtime.close()
