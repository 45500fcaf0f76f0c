"""Fixtures for engine tests: one tiny random model per session, built in-process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from app.engine.model import FrozenModel, load_frozen_model
from app.engine.text import DEFAULT_TEMPLATES, TaskSpec
from tests.conftest import TEST_DEVICE
from tests.tiny_model import EOS, build_tokenizer


@pytest.fixture
def sentiment() -> TaskSpec:
    return TaskSpec("classification", DEFAULT_TEMPLATES["classification"], ("positive", "negative"))


@pytest.fixture
def answer() -> TaskSpec:
    return TaskSpec("generation", DEFAULT_TEMPLATES["generation"])


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> FrozenModel:
    """A 2-layer Llama with grouped KV heads (4 query, 2 KV) and RoPE, like SmolLM2 in miniature."""
    path = Path(tmp_path_factory.mktemp("tiny-llama"))
    tokenizer = build_tokenizer()
    eos = tokenizer.convert_tokens_to_ids(EOS)
    assert isinstance(eos, int)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=eos,
        eos_token_id=eos,
        initializer_range=0.5,  # random logits with contrast, as in tests/tiny_model.py
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return load_frozen_model(path, device=TEST_DEVICE, dtype="float32")
