"""The bundled SmolLM2-135M-Instruct end to end: convert, load, train a few steps, classify, generate (slow)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from app.engine.core.forward import score_targets
from app.engine.core.mixed import Row, logits_rows
from app.engine.core.model import FrozenModel, load_frozen_model
from app.engine.core.one_prompt import classify, generate
from app.engine.core.prompts import Prompts
from app.engine.core.segments import Segments, resolve
from app.engine.core.text import DEFAULT_TEMPLATES, TaskSpec, encode_example
from app.engine.formats.bundled import BUNDLED_MODEL_NAME, ensure_bundled_model
from app.engine.methods import load_segments, parse_config
from tests.engine.reference import plain_label_logprob, plain_logits
from workers.training import train_prompt

pytestmark = pytest.mark.real_model

CHAT = TaskSpec("generation", "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n")
SENTIMENT = TaskSpec("classification", DEFAULT_TEMPLATES["classification"], ("positive", "negative"))
REVIEWS = [
    ("I loved this film, it was wonderful.", "positive"),
    ("What a waste of time, truly awful.", "negative"),
    ("A delightful, moving story with great acting.", "positive"),
    ("Boring plot and terrible dialogue.", "negative"),
    ("One of the best movies I have seen this year.", "positive"),
    ("I walked out halfway through, it was that bad.", "negative"),
    ("Charming and funny from start to finish.", "positive"),
    ("The worst sequel ever made.", "negative"),
]


def test_identity_is_stable_across_loads(model_dir: Path, smollm: FrozenModel) -> None:
    assert smollm.identity.name == BUNDLED_MODEL_NAME
    assert ensure_bundled_model(model_dir.parent) == model_dir  # already converted: returned as is
    assert load_frozen_model(model_dir, device="cpu").identity == smollm.identity
    assert (smollm.hidden_size, smollm.max_positions) == (576, 8192)


def test_tokenization_round_trips(smollm: FrozenModel) -> None:
    text = "Input: Café prices rose 3.5% — {surprising}?\nLabel: positive"
    assert smollm.decode(smollm.encode(text)) == text
    assert len(smollm.encode(" positive")) == 1


def test_chat_prompt_generates_a_sensible_answer(smollm: FrozenModel) -> None:
    questions = ["What is the capital of France?", "Say hello."]
    together = generate(smollm, None, CHAT, questions, max_new_tokens=12)
    assert "Paris" in together[0]
    assert together == [generate(smollm, None, CHAT, [q], max_new_tokens=12)[0] for q in questions]


def test_mixed_prompts_in_one_batch_match_rows_run_alone(smollm: FrozenModel) -> None:
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randn(3, 576, generator=generator) * 0.05, None, torch.randn(7, 576, generator=generator) * 0.05]
    examples = [encode_example(smollm, SENTIMENT, text, label) for text, label in REVIEWS[:3]]
    with torch.no_grad():
        served = resolve(smollm, [Segments(prefix=p) for p in prompts])
        scores = score_targets(smollm, served, [ex.input_ids for ex in examples], [[ex.target_ids] for ex in examples])
    for row, (prompt, example) in enumerate(zip(prompts, examples, strict=True)):
        expected = plain_label_logprob(smollm, prompt, example.input_ids, example.target_ids)
        assert abs(float(scores[row][0]) - expected) < 1e-4


def test_pooled_prompts_serve_rows_of_many_tasks_as_the_uncached_model(smollm: FrozenModel) -> None:
    # The serving path on the real Llama (grouped KV heads, RoPE): each row's input attends over its prompt's
    # cached keys/values in a batch of other prompts and lengths, and must give what the uncached model gives.
    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randn(n, 576, generator=generator) * 0.05 for n in (1, 5, 20)]
    rows = [Row(i % 3, SENTIMENT, text) for i, (text, _) in enumerate(REVIEWS)]
    pool = Prompts(smollm, lambda prompt_id: Segments(prefix=prompts[prompt_id]))
    logits = logits_rows(smollm, pool, rows)
    for row, got in zip(rows, logits, strict=True):
        example = encode_example(smollm, SENTIMENT, row.text, None)
        assert (got - plain_logits(smollm, prompts[row.prompt_id], example.input_ids)).abs().max() < 1e-4


def test_a_few_training_steps_reduce_loss_and_the_prompt_serves(smollm: FrozenModel) -> None:
    config = parse_config({"num_virtual_tokens": 8, "steps": 6, "batch_size": 4, "eval_every": 3, "warmup_steps": 1})
    result = train_prompt(smollm, SENTIMENT, REVIEWS, REVIEWS[:4], config)
    assert result.metrics["best_val_loss"] < result.metrics["init_val_loss"]  # type: ignore[operator]
    prompt = load_segments(smollm, result.artifact)
    scores = classify(smollm, prompt, SENTIMENT, ["An absolute joy.", "Dreadful."])
    assert all(set(row) == {"positive", "negative"} and abs(sum(row.values()) - 1) < 1e-5 for row in scores)
    texts = generate(smollm, prompt, CHAT, ["Name a colour."], max_new_tokens=5, stop=["\n"])
    assert len(texts) == 1 and "\n" not in texts[0]
