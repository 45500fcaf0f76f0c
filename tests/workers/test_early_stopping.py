"""Early stopping on the validation curve (`patience`): a run that stops improving ends, keeping its best
checkpoint; a tune search gives the steps its trials did not run to later trials."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.engine.core.model import FrozenModel, load_frozen_model
from app.engine.methods.prompt import PromptConfig
from tests.api.helpers import create_dataset, create_task, toy_examples, wait_for_job
from tests.tiny_model import build_tiny_model_dir
from tests.workers.test_training import SENTIMENT, _reviews
from workers.training import EvalReport, train_prompt


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> FrozenModel:
    return load_frozen_model(build_tiny_model_dir(Path(tmp_path_factory.mktemp("tiny"))), device="cpu")


def test_a_run_that_stops_improving_ends_early_with_its_best_checkpoint(tiny: FrozenModel) -> None:
    evaluations: list[EvalReport] = []
    # A learning rate this small leaves the validation score where it started: no evaluation is ever better.
    config = PromptConfig(num_virtual_tokens=2, steps=40, eval_every=4, learning_rate=1e-9, patience=2, batch_size=4)
    result = train_prompt(tiny, SENTIMENT, _reviews(24, 0), _reviews(8, 1), config, on_eval=evaluations.append)
    assert [report.step for report in evaluations] == [0, 4, 8]
    assert result.metrics["stopped_early_at"] == 8 and result.best_step == 0
    without = train_prompt(
        tiny, SENTIMENT, _reviews(24, 0), _reviews(8, 1), config.model_copy(update={"patience": None})
    )
    assert without.metrics["stopped_early_at"] is None and without.metrics["steps"] == 40


def test_patience_never_stops_a_run_that_keeps_improving(tiny: FrozenModel) -> None:
    config = PromptConfig(num_virtual_tokens=4, steps=60, eval_every=10, learning_rate=0.1, batch_size=8, patience=6)
    evaluations: list[EvalReport] = []
    result = train_prompt(tiny, SENTIMENT, _reviews(48, 0), _reviews(16, 1), config, on_eval=evaluations.append)
    assert result.metrics["stopped_early_at"] is None and evaluations[-1].step == 60


def test_a_tune_search_gives_unrun_steps_to_later_trials(client: TestClient) -> None:
    create_task(client, "sentiment")
    dataset = create_dataset(client, toy_examples(48))
    search = {
        "methods": ["prompt"],
        "num_virtual_tokens": [2],
        "learning_rate": [1e-9, 2e-9],  # nothing improves: every trial stops at its second evaluation
        "steps_per_trial": 10,
        "patience": 1,
        "pack": 1,
    }
    body = {"type": "tune", "task": "sentiment", "dataset_id": dataset["id"], "budget": {"steps": 30}, "search": search}
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    job = wait_for_job(client, response.json()["id"], timeout=300)
    assert job["status"] == "succeeded", job
    trials = client.get(f"/v1/jobs/{job['id']}/trials").json()["data"]
    # Each trial ran at most 2 of its 10 steps (stopped early, or pruned at its second evaluation); with every unrun
    # step back in the budget, 30 steps held more than 3 trials.
    assert len(trials) > 3 and all(t["steps"] <= 2 and t["state"] in ("finished", "pruned") for t in trials)
    assert sum(t["steps"] for t in trials) <= 30
