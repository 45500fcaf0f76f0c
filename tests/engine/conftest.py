"""Fixtures for engine tests: one tiny random model per session, built in-process."""

from __future__ import annotations

import pytest

from app.engine.text import DEFAULT_TEMPLATES, TaskSpec


@pytest.fixture
def sentiment() -> TaskSpec:
    return TaskSpec("classification", DEFAULT_TEMPLATES["classification"], ("positive", "negative"))


@pytest.fixture
def answer() -> TaskSpec:
    return TaskSpec("generation", DEFAULT_TEMPLATES["generation"])
