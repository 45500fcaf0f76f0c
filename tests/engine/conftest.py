"""Fixtures for engine tests: one tiny random model per session, built in-process."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.engine.core.model import FrozenModel, load_frozen_model
from app.engine.core.text import DEFAULT_TEMPLATES, TaskSpec
from tests.conftest import TEST_DEVICE
from tests.tiny_model import build_tiny_gemma_dir, build_tiny_llama_dir


@pytest.fixture
def sentiment() -> TaskSpec:
    return TaskSpec("classification", DEFAULT_TEMPLATES["classification"], ("positive", "negative"))


@pytest.fixture
def answer() -> TaskSpec:
    return TaskSpec("generation", DEFAULT_TEMPLATES["generation"])


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> FrozenModel:
    """A 2-layer Llama with grouped KV heads (4 query, 2 KV) and RoPE, like SmolLM2 in miniature."""
    path = build_tiny_llama_dir(Path(tmp_path_factory.mktemp("tiny-llama")))
    return load_frozen_model(path, device=TEST_DEVICE, dtype="float32")


@pytest.fixture(scope="session")
def tiny_gemma(tmp_path_factory: pytest.TempPathFactory) -> FrozenModel:
    """A 3-layer Gemma 3 whose sliding layers see 4 positions: rows cross the window (see build_tiny_gemma_dir)."""
    path = build_tiny_gemma_dir(Path(tmp_path_factory.mktemp("tiny-gemma")))
    return load_frozen_model(path, device=TEST_DEVICE, dtype="float32")
