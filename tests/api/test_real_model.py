"""The whole service on the bundled SmolLM2: train through the API, serve, and round-trip the prompt (slow)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from app.db.models import Prompt
from app.engine.core.model import FrozenModel
from app.engine.core.one_prompt import classify
from app.engine.core.text import TaskSpec
from app.engine.formats.artifact import Artifact
from app.engine.methods.prompt import PromptConfig
from app.engine.serving.runtime import ModelRuntime
from app.main import create_app, serving_options
from tests.api.helpers import create_dataset, create_task, wait_for_job
from tests.conftest import LOCAL_URL, make_settings
from workers.training import train_prompt

pytestmark = pytest.mark.real_model

REVIEWS = [
    {"input": "I loved this film, it was wonderful.", "output": "positive"},
    {"input": "What a waste of time, truly awful.", "output": "negative"},
    {"input": "A delightful, moving story with great acting.", "output": "positive"},
    {"input": "Boring plot and terrible dialogue.", "output": "negative"},
    {"input": "One of the best movies I have seen this year.", "output": "positive"},
    {"input": "I walked out halfway through, it was that bad.", "output": "negative"},
]
HYPER = {"num_virtual_tokens": 8, "steps": 3, "batch_size": 4, "eval_every": 3, "seed": 7}
TEMPLATE = "Review: {input}\nSentiment:"


@pytest.fixture
def real_client(database_url: str, tmp_path: Path, db_engine: Engine, smollm: FrozenModel) -> Iterator[TestClient]:
    settings = make_settings(database_url, tmp_path)
    app = create_app(settings, runtime=ModelRuntime.from_model(smollm, serving_options(settings)))
    with TestClient(app, base_url=LOCAL_URL) as client:
        yield client


def test_prompt_trained_through_the_api_round_trips_through_the_database(
    real_client: TestClient, db_engine: Engine, smollm: FrozenModel
) -> None:
    before = {name: t.clone() for name, t in smollm.model.state_dict().items()}
    create_task(real_client, "sentiment", template=TEMPLATE)
    dataset = create_dataset(real_client, REVIEWS)
    response = real_client.post(
        "/v1/jobs", json={"task": "sentiment", "dataset_id": dataset["id"], "hyperparameters": HYPER}
    )
    job = wait_for_job(real_client, response.json()["id"], timeout=600)
    assert job["status"] == "succeeded", job

    inputs = ["An absolute joy to watch.", "Tedious and badly acted."]
    served = real_client.post("/v1/infer", json={"task": "sentiment", "inputs": inputs}).json()

    # the same seeded training in-process gives the very tensor the database holds ...
    spec = TaskSpec("classification", TEMPLATE, ("positive", "negative"))
    pairs = [(ex["input"], ex["output"]) for ex in REVIEWS]
    trained = train_prompt(smollm, spec, pairs, None, PromptConfig(**HYPER)).artifact  # type: ignore[arg-type]
    with Session(db_engine) as session:
        stored = Artifact.from_bytes(session.scalars(select(Prompt)).one().tensors)
    assert stored.method == trained.method == "prompt"
    assert stored.tensors.keys() == trained.tensors.keys() == {"prompt"}
    assert torch.equal(stored.tensors["prompt"], trained.tensors["prompt"])
    trained_prompt = trained.tensors["prompt"]
    # ... and serving it (cached prompt keys/values, batched) gives the uncached outputs, up to float rounding
    direct = classify(smollm, trained_prompt, spec, inputs)
    for output, expected in zip(served["outputs"], direct, strict=True):
        assert output["label"] == max(expected, key=expected.__getitem__)
        assert all(abs(output["scores"][label] - expected[label]) < 1e-4 for label in expected)
    # the frozen model is untouched by training
    assert all(torch.equal(before[name], t) for name, t in smollm.model.state_dict().items())
