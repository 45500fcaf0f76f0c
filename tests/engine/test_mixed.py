"""Rows of many tasks in one forward over pooled prompt keys/values give what each row gives alone, uncached."""

from __future__ import annotations

import random

import pytest
import torch

from app.engine.core.mixed import Row, _partition, classify_rows, generate_rows, logits_rows
from app.engine.core.model import FrozenModel
from app.engine.core.one_prompt import classify, generate
from app.engine.core.segments import Segments
from app.engine.core.text import TaskSpec, encode_example, label_token_ids
from app.engine.serving.pool import PromptPool
from tests.engine.reading_pool import ReadingPool
from tests.engine.reference import greedy_without_cache, plain_logits

PROMPT_LENGTHS = (1, 3, 5, 8, 13, 20)  # prompt id i has PROMPT_LENGTHS[i] vectors
SENTIMENT = TaskSpec("classification", "Input: {input}\nLabel:", ("positive", "negative"))
WORDY = TaskSpec("classification", "Classify: {input} ->", ("extraordinary", "neutral nice", "yes"))
ANSWER = TaskSpec("generation", "Input: {input}\nOutput:")
QUESTION = TaskSpec("generation", "Question: {input}\nAnswer:")
TEXTS = (
    "good",
    "what is the capital of france?",
    "they hate that terrible awful place; the service is poor and the food was bad, but the music was great",
    "one two three four five six seven eight nine ten",
)


@pytest.fixture(params=["gpt2", "llama", "gemma"])
def model(request: pytest.FixtureRequest) -> FrozenModel:
    # gemma: sliding-window layers (4 positions) that most rows here cross, checked against the model's own masks
    fixture = {"gpt2": "frozen", "llama": "tiny_llama", "gemma": "tiny_gemma"}[request.param]
    return request.getfixturevalue(fixture)  # type: ignore[no-any-return]


def load(prompt_id: int) -> torch.Tensor:
    return torch.randn(PROMPT_LENGTHS[prompt_id], 64, generator=torch.Generator().manual_seed(prompt_id))


def segments(prompt_id: int) -> Segments:
    return Segments(prefix=load(prompt_id))


def pool_of(frozen: FrozenModel, capacity: int = 8) -> PromptPool:
    return ReadingPool(frozen, capacity, segments)


def _uncached_logits(frozen: FrozenModel, row: Row) -> torch.Tensor:
    return plain_logits(frozen, load(row.prompt_id), encode_example(frozen, row.spec, row.text, None).input_ids)


def _rows(specs: tuple[TaskSpec, ...], **limits: object) -> list[Row]:
    """Every prompt x task x text, shuffled so that neighbours differ in task, prompt and length."""
    rows = [Row(p, spec, text, **limits) for p in range(len(PROMPT_LENGTHS)) for spec in specs for text in TEXTS]  # type: ignore[arg-type]
    random.Random(0).shuffle(rows)
    return rows


def test_mixed_batch_logits_equal_each_row_alone_without_cache(model: FrozenModel) -> None:
    rows = _rows((SENTIMENT, WORDY, ANSWER))
    pool = pool_of(model, 8)
    mixed = logits_rows(model, pool, rows, max_batch_tokens=600)  # several sub-batches
    for row, logits in zip(rows, mixed, strict=True):
        assert (logits - _uncached_logits(model, row)).abs().max().item() < 1e-4
    # Each prompt's keys/values were computed once for the whole request.
    assert pool.stats()["misses"] == len(PROMPT_LENGTHS)


def test_mixed_classification_equals_classify_of_each_task(model: FrozenModel) -> None:
    assert all(len(ids) == 1 for ids in label_token_ids(model, SENTIMENT))
    assert all(len(ids) > 1 for ids in label_token_ids(model, WORDY)[:2])
    rows = _rows((SENTIMENT, WORDY))
    mixed = classify_rows(model, pool_of(model, 8), rows, max_batch_tokens=800)
    for row, probabilities in zip(rows, mixed, strict=True):
        alone = classify(model, load(row.prompt_id), row.spec, [row.text])[0]
        assert list(probabilities) == list(row.spec.labels)
        assert probabilities == pytest.approx(alone, abs=1e-4)


def test_results_do_not_depend_on_batch_composition_or_order(frozen: FrozenModel) -> None:
    rows = _rows((SENTIMENT, WORDY))
    reference = classify_rows(frozen, pool_of(frozen, 8), rows)
    reference_logits = logits_rows(frozen, pool_of(frozen, 8), rows)
    order = list(range(len(rows)))
    for seed, budget, capacity in [(1, 1, 8), (2, 10**6, 8), (3, 500, 2)]:
        random.Random(seed).shuffle(order)
        shuffled = [rows[i] for i in order]
        pool = pool_of(frozen, capacity)
        probabilities = classify_rows(frozen, pool, shuffled, max_batch_tokens=budget)
        logits = logits_rows(frozen, pool, shuffled, max_batch_tokens=budget)
        for position, i in enumerate(order):
            assert probabilities[position] == pytest.approx(reference[i], abs=1e-4)
            assert (logits[position] - reference_logits[i]).abs().max().item() < 1e-4


def test_mixed_generation_equals_generate_of_each_row_alone(model: FrozenModel) -> None:
    limits = [0, 1, 4, 9, 16]
    rows = [
        Row(row.prompt_id, row.spec, row.text, max_new_tokens=limits[i % len(limits)])
        for i, row in enumerate(_rows((ANSWER, QUESTION))[:24])
    ]
    mixed = generate_rows(model, pool_of(model, 8), rows, max_batch_tokens=900)
    for row, text in zip(rows, mixed, strict=True):
        alone = generate(model, load(row.prompt_id), row.spec, [row.text], max_new_tokens=row.max_new_tokens)[0]
        assert text == alone
    assert any(len(text) > 3 for text in mixed)
    assert all(text == "" for row, text in zip(rows, mixed, strict=True) if row.max_new_tokens == 0)


def test_generation_past_a_sliding_window_is_the_uncached_models(tiny_gemma: FrozenModel) -> None:
    # Decoding appends keys one by one behind left pads and cached prompts: each sliding layer must still see
    # exactly the last 4 positions, as the model's own forward over the whole row does.
    rows = [Row(p, spec, TEXTS[p % len(TEXTS)], max_new_tokens=16) for p in range(6) for spec in (ANSWER, QUESTION)]
    for row, text in zip(rows, generate_rows(tiny_gemma, pool_of(tiny_gemma, 8), rows), strict=True):
        assert text == greedy_without_cache(tiny_gemma, load(row.prompt_id), row.spec, row.text, 16)


def test_each_row_stops_at_its_own_stop_string(model: FrozenModel) -> None:
    rows = [Row(p, ANSWER, TEXTS[p % len(TEXTS)], max_new_tokens=12) for p in range(len(PROMPT_LENGTHS))]
    full = generate_rows(model, pool_of(model, 8), rows)
    # Stop on a piece of some rows' own output; other rows get a stop string they never produce.
    stops = [
        (text[2:4], "never-seen") if i % 2 == 0 and len(text) > 4 else ("never-seen",) for i, text in enumerate(full)
    ]
    stopped = [Row(row.prompt_id, row.spec, row.text, 12, stop) for row, stop in zip(rows, stops, strict=True)]
    cut = generate_rows(model, pool_of(model, 8), stopped)
    for row, whole, text in zip(stopped, full, cut, strict=True):
        expected = whole[: whole.find(row.stop[0])] if row.stop[0] in whole else whole
        assert text == expected
        alone = generate(model, load(row.prompt_id), ANSWER, [row.text], max_new_tokens=12, stop=list(row.stop))
        assert [text] == alone
    assert cut != full


def test_row_whose_input_encodes_to_nothing_reads_the_prompt_last_state(model: FrozenModel) -> None:
    bare = TaskSpec("classification", "{input}", ("extraordinary", "neutral nice"))
    echo = TaskSpec("generation", "{input}")
    rows = [Row(2, bare, ""), Row(4, bare, "good"), Row(1, echo, "", max_new_tokens=5)]
    pool = pool_of(model, 8)
    for row, logits in zip(rows, logits_rows(model, pool, rows), strict=True):
        assert (logits - _uncached_logits(model, row)).abs().max().item() < 1e-4
    for row, probabilities in zip(rows[:2], classify_rows(model, pool, rows[:2]), strict=True):
        assert probabilities == pytest.approx(classify(model, load(row.prompt_id), bare, [row.text])[0], abs=1e-4)
    assert generate_rows(model, pool, rows[2:]) == generate(model, load(1), echo, [""], max_new_tokens=5)


def test_request_with_more_prompts_than_the_pool_holds_is_split(frozen: FrozenModel) -> None:
    rows = _rows((SENTIMENT,))
    pool = pool_of(frozen, 2)
    small = classify_rows(frozen, pool, rows)
    roomy = classify_rows(frozen, pool_of(frozen, 8), rows)
    for a, b in zip(small, roomy, strict=True):
        assert a == pytest.approx(b, abs=1e-5)
    assert pool.stats()["entries"] == 2
    assert pool.stats()["evictions"] > 0


def test_row_longer_than_the_context_is_refused(frozen: FrozenModel) -> None:
    long_text = " ".join(["the movie was good"] * 80)
    with pytest.raises(ValueError, match="positions but the model's context holds 256"):
        logits_rows(frozen, pool_of(frozen, 2), [Row(5, SENTIMENT, long_text)])


def test_classify_rows_refuses_a_generation_task(frozen: FrozenModel) -> None:
    with pytest.raises(ValueError, match="needs classification tasks"):
        classify_rows(frozen, pool_of(frozen, 2), [Row(0, SENTIMENT, "good"), Row(1, ANSWER, "hi")])


def test_negative_max_new_tokens_is_refused() -> None:
    with pytest.raises(ValueError, match="max_new_tokens must be at least 0"):
        Row(0, ANSWER, "hi", max_new_tokens=-1)


def _cost(groups: list[list[int]], widths: list[int], extra: list[int], overhead: int) -> int:
    return sum(
        overhead * (1 + max(extra[i] for i in g)) + len(g) * (max(widths[i] for i in g) + max(extra[i] for i in g))
        for g in groups
    )


@pytest.mark.parametrize("seed", range(6))
def test_rows_are_cut_into_the_cheapest_sub_batches_within_the_budget(seed: int) -> None:
    rng = random.Random(seed)
    n = 9
    widths = sorted(rng.randint(1, 60) for _ in range(n))
    extra = [rng.choice([0, 0, 4]) for _ in range(n)]
    spans = {i: rng.randint(1, 20) for i in range(n)}
    budget, overhead = 400, 50
    groups = _partition(list(range(n)), widths, extra, spans, budget, overhead)
    assert [i for g in groups for i in g] == list(range(n))
    for g in groups:
        assert (
            len(g) == 1
            or len(g) * (max(spans[i] for i in g) + max(widths[i] for i in g) + max(extra[i] for i in g)) <= budget
        )
    # Every way to cut the 9 sorted rows into consecutive runs that respect the budget costs at least as much.
    best = None
    for mask in range(1 << (n - 1)):
        cuts, start = [], 0
        for i in range(1, n):
            if mask >> (i - 1) & 1:
                cuts.append(list(range(start, i)))
                start = i
        cuts.append(list(range(start, n)))
        fits = all(
            len(g) == 1
            or len(g) * (max(spans[i] for i in g) + max(widths[i] for i in g) + max(extra[i] for i in g)) <= budget
            for g in cuts
        )
        if fits:
            cost = _cost(cuts, widths, extra, overhead)
            best = cost if best is None else min(best, cost)
    assert _cost(groups, widths, extra, overhead) == best


def test_rows_of_equal_width_share_one_pass_and_outliers_get_their_own() -> None:
    widths = [10] * 8 + [200]
    groups = _partition(list(range(9)), widths, [0] * 9, dict.fromkeys(range(9), 5), 4096, 64)
    assert groups == [list(range(8)), [8]]
