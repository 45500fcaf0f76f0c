"""Continuous batching (app/engine/decode.DecodeBatch): rows join a running decode at any step and leave when they
finish, and every row's text is the one it gets generated alone (greedy)."""

from __future__ import annotations

import random
import threading

import pytest

from app.engine.core.decode import DecodeBatch, Decoding
from app.engine.core.mixed import Row
from app.engine.core.model import FrozenModel
from app.engine.core.one_prompt import generate
from app.engine.core.text import render
from tests.engine.test_mixed import ANSWER, QUESTION, TEXTS, load, pool_of


@pytest.fixture(params=["gpt2", "llama"])
def model(request: pytest.FixtureRequest) -> FrozenModel:
    fixture = "frozen" if request.param == "gpt2" else "tiny_llama"
    return request.getfixturevalue(fixture)  # type: ignore[no-any-return]


def _decoding(frozen: FrozenModel, row: Row, cancel: threading.Event | None = None) -> Decoding:
    row = row.tokenized(frozen)
    return Decoding(render(row.spec.template, row.text), row.ids, row.max_new_tokens, row.stop, cancel)


def _alone(frozen: FrozenModel, row: Row) -> str:
    return generate(frozen, load(row.prompt_id), row.spec, [row.text], max_new_tokens=row.max_new_tokens)[0]


def test_rows_that_join_at_every_step_get_the_text_they_get_alone(model: FrozenModel) -> None:
    rng = random.Random(0)
    rows = [
        Row(
            rng.randrange(6),
            rng.choice((ANSWER, QUESTION)),
            rng.choice(TEXTS),
            max_new_tokens=rng.choice((1, 3, 9, 16)),
        )
        for _ in range(14)
    ]
    pool = pool_of(model, 8)
    batch = DecodeBatch(model)
    finished: dict[int, str] = {}
    joins = iter(range(len(rows)))
    widest = steps = 0
    while True:
        # One or two rows join each step, while others are half way through theirs.
        for _ in range(rng.choice((1, 2))):
            index = next(joins, None)
            if index is not None:
                served = pool.get_many([rows[index].prompt_id])[rows[index].prompt_id]
                finished.update(batch.admit([served], [_decoding(model, rows[index])], [index]))
        widest = max(widest, batch.active)
        if not batch.active and len(finished) == len(rows):
            break
        finished.update(batch.step())
        steps += 1
    assert widest >= 4  # rows really decoded side by side, at different points of their output
    assert steps < sum(row.max_new_tokens for row in rows)
    for index, row in enumerate(rows):
        assert finished[index] == _alone(model, row), (index, row)
    assert any(len(text) > 3 for text in finished.values())


def test_a_row_leaves_at_its_stop_string_or_cancel_while_the_others_go_on(frozen: FrozenModel) -> None:
    pool = pool_of(frozen, 8)
    long_row = Row(0, ANSWER, TEXTS[1], max_new_tokens=12)
    full = _alone(frozen, long_row)
    assert len(full) > 2
    stop = full[1:3]
    stopped = Row(2, ANSWER, TEXTS[1], max_new_tokens=12, stop=(stop,))
    reference = _alone(frozen, Row(2, ANSWER, TEXTS[1], max_new_tokens=12))
    cancel = threading.Event()
    batch = DecodeBatch(frozen)
    rows = [long_row, stopped, Row(1, QUESTION, TEXTS[0], max_new_tokens=12)]
    served = [pool.get_many([r.prompt_id])[r.prompt_id] for r in rows]
    events = [None, None, cancel]
    finished = dict(
        batch.admit(served, [_decoding(frozen, r, e) for r, e in zip(rows, events, strict=True)], [0, 1, 2])
    )
    finished.update(batch.step())
    cancel.set()
    finished.update(batch.cancel_finished())
    assert 2 in finished and batch.active <= 2  # the cancelled row left at once, with what it had
    while batch.active:
        finished.update(batch.step())
    assert finished[0] == full
    cut = reference.find(stop) if stop in reference else -1
    assert finished[1] == (reference[:cut] if cut >= 0 else reference)
