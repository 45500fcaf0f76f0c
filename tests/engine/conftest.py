"""Fixtures for engine tests: one tiny random model per session, built in-process."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.engine.model import FrozenModel, load_frozen_model
from app.engine.text import DEFAULT_TEMPLATES, TaskSpec
from tests.tiny_model import build_tiny_model_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def frozen(tiny_model_dir: Path) -> FrozenModel:
    return load_frozen_model(tiny_model_dir, device="cpu")


@pytest.fixture
def sentiment() -> TaskSpec:
    return TaskSpec("classification", DEFAULT_TEMPLATES["classification"], ("positive", "negative"))


@pytest.fixture
def answer() -> TaskSpec:
    return TaskSpec("generation", DEFAULT_TEMPLATES["generation"])
