"""Ensembles of a task's versions and feature extraction (/v1/embed), through the HTTP API."""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.db.models import Prompt
from app.db.session import make_session_factory
from app.engine.core.mixed import Row, state_rows
from app.engine.core.model import FrozenModel
from app.engine.core.one_prompt import classify
from app.engine.core.prompts import single
from app.engine.core.segments import Segments
from app.engine.core.text import TaskSpec
from app.engine.methods import get_method, parse_config
from app.services.prompts import store_prompt
from tests.api.helpers import create_task
from tests.api.test_serving import store_random_prompt

SPEC = TaskSpec("classification", "Review: {input}\nSentiment:", ("positive", "negative"))
INPUTS = ["a good film", "the plot was bad", "it"]


def _versions(
    client: TestClient, engine: Engine, frozen: FrozenModel, name: str, accuracies: list[float]
) -> list[tuple[int, torch.Tensor]]:
    """A task with one stored version per accuracy (its recorded validation score); (id, prompt) each."""
    task = create_task(client, name, template=SPEC.template, labels=list(SPEC.labels))
    generator = torch.Generator().manual_seed(len(name))
    versions = []
    for accuracy in accuracies:
        prompt = torch.randn(3, frozen.hidden_size, generator=generator)
        prompt_id = store_random_prompt(engine, frozen, task["id"], prompt)
        with make_session_factory(engine).begin() as session:
            row = session.get(Prompt, prompt_id)
            assert row is not None
            row.metrics = {"best_val_accuracy": accuracy, "best_val_loss": 1 - accuracy}
        versions.append((prompt_id, prompt))
    return versions


def _mean(frozen: FrozenModel, prompts: list[torch.Tensor]) -> list[dict[str, float]]:
    each = [classify(frozen, prompt, SPEC, INPUTS) for prompt in prompts]
    return [{label: sum(m[i][label] for m in each) / len(each) for label in SPEC.labels} for i in range(len(INPUTS))]


def test_an_ensemble_averages_its_members_probabilities(
    client: TestClient, db_engine: Engine, frozen: FrozenModel
) -> None:
    versions = _versions(client, db_engine, frozen, "voters", [0.6, 0.9, 0.7])
    ids = [versions[0][0], versions[2][0]]
    response = client.post("/v1/infer", json={"task": "voters", "inputs": INPUTS, "ensemble": ids})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["ensemble"] == ids and body["prompt_id"] == ids[0]
    for got, expected in zip(body["outputs"], _mean(frozen, [versions[0][1], versions[2][1]]), strict=True):
        assert got["scores"] == pytest.approx(expected, abs=1e-4)
        assert got["label"] == max(expected, key=expected.__getitem__)
    # {"top": 2}: the two best by validation accuracy (0.9, then 0.7), best first.
    top = client.post("/v1/infer", json={"task": "voters", "inputs": INPUTS, "ensemble": {"top": 2}}).json()
    assert top["ensemble"] == [versions[1][0], versions[2][0]]
    for got, expected in zip(top["outputs"], _mean(frozen, [versions[1][1], versions[2][1]]), strict=True):
        assert got["scores"] == pytest.approx(expected, abs=1e-4)
    # Without an ensemble the active version (the latest stored) serves alone.
    alone = client.post("/v1/infer", json={"task": "voters", "inputs": INPUTS}).json()
    assert alone["ensemble"] is None and alone["prompt_id"] == versions[2][0]


def test_a_task_can_serve_an_ensemble_by_default(client: TestClient, db_engine: Engine, frozen: FrozenModel) -> None:
    versions = _versions(client, db_engine, frozen, "council", [0.5, 0.8])
    patched = client.patch("/v1/tasks/council", json={"ensemble": {"top": 2}})
    assert patched.status_code == 200, patched.text
    assert patched.json()["ensemble"] == {"top": 2}
    body = client.post("/v1/infer", json={"task": "council", "inputs": INPUTS}).json()
    assert body["ensemble"] == [versions[1][0], versions[0][0]]
    assert client.get("/v1/tasks/council").json()["ensemble"] == {"top": 2}
    assert client.patch("/v1/tasks/council", json={"ensemble": None}).json()["ensemble"] is None
    assert client.post("/v1/infer", json={"task": "council", "inputs": INPUTS}).json()["ensemble"] is None


def test_bad_ensembles_are_refused(client: TestClient, db_engine: Engine, frozen: FrozenModel) -> None:
    mine = _versions(client, db_engine, frozen, "mine", [0.5])
    other = _versions(client, db_engine, frozen, "other", [0.5])
    create_task(client, "writer", kind="generation", labels=[])
    cases = [
        ({"task": "mine", "inputs": INPUTS, "ensemble": [mine[0][0], other[0][0]]}, 422, "ensemble_invalid"),
        ({"task": "mine", "inputs": INPUTS, "ensemble": [999999]}, 422, "ensemble_invalid"),
        ({"task": "mine", "inputs": INPUTS, "ensemble": []}, 422, "validation_error"),
        ({"task": "mine", "inputs": INPUTS, "ensemble": {"top": 0}}, 422, "validation_error"),
        ({"task": "mine", "inputs": INPUTS, "ensemble": [mine[0][0], mine[0][0]]}, 422, "ensemble_invalid"),
        ({"task": "writer", "inputs": INPUTS, "ensemble": {"top": 1}}, 422, "ensemble_invalid"),
    ]
    for body, status, code in cases:
        response = client.post("/v1/infer", json=body)
        assert (response.status_code, response.json()["error"]["code"]) == (status, code), body
    response = client.patch("/v1/tasks/mine", json={"ensemble": [other[0][0]]})
    assert (response.status_code, response.json()["error"]["code"]) == (422, "ensemble_invalid")
    with make_session_factory(db_engine).begin() as session:
        row = session.get(Prompt, mine[0][0])
        assert row is not None
        row.base_model_fingerprint = "0" * 64
    response = client.post("/v1/infer", json={"task": "mine", "inputs": INPUTS, "ensemble": [mine[0][0]]})
    assert (response.status_code, response.json()["error"]["code"]) == (409, "base_model_mismatch")


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_embeddings_are_the_hidden_states_under_the_tasks_prompt(
    client: TestClient, db_engine: Engine, frozen: FrozenModel, pooling: str
) -> None:
    ((prompt_id, prompt),) = _versions(client, db_engine, frozen, "features", [0.5])
    response = client.post("/v1/embed", json={"task": "features", "inputs": INPUTS, "pooling": pooling})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["prompt_id"], body["pooling"], body["dimensions"]) == (prompt_id, pooling, frozen.hidden_size)
    pool = single(frozen, Segments(prefix=prompt))
    expected = state_rows(frozen, pool, [Row(0, SPEC, text, pooling=pooling) for text in INPUTS])  # type: ignore[arg-type]
    for got, want in zip(body["embeddings"], expected, strict=True):
        assert (torch.tensor(got) - want).abs().max() < 1e-4
    # The prompt matters: the bare model gives other vectors.
    bare_pool = single(frozen, Segments())
    bare = state_rows(frozen, bare_pool, [Row(0, SPEC, INPUTS[0], pooling=pooling)])[0]  # type: ignore[arg-type]
    assert (torch.tensor(body["embeddings"][0]) - bare).abs().max() > 1e-3
    bad = client.post("/v1/embed", json={"task": "features", "inputs": INPUTS, "pooling": "max"})
    assert (bad.status_code, bad.json()["error"]["code"]) == (422, "validation_error")


def test_an_empty_input_for_a_prefix_prompt_is_refused_not_a_failed_batch(
    client: TestClient, db_engine: Engine, frozen: FrozenModel
) -> None:
    spec = TaskSpec("classification", "{input}", ("positive", "negative"))
    task = create_task(client, "bare", template=spec.template, labels=list(spec.labels))
    config = parse_config({"method": "prefix", "num_virtual_tokens": 2})
    module = get_method("prefix").build(frozen, config, spec, torch.Generator().manual_seed(0))
    with make_session_factory(db_engine).begin() as session:
        store_prompt(
            session,
            tenant="default",
            task_id=task["id"],
            artifact=module.artifact(),
            positions=2,
            width=frozen.hidden_size,
            identity=frozen.identity,
            metrics={},
            hyperparameters=config.model_dump(mode="json"),
            job_id=None,
            dataset_id=None,
        )
    response = client.post("/v1/infer", json={"task": "bare", "inputs": ["good", ""]})
    assert (response.status_code, response.json()["error"]["code"]) == (422, "input_empty")
    assert "inputs[1]" in response.json()["error"]["message"]
    served = client.post("/v1/infer", json={"task": "bare", "inputs": ["good"]})
    assert served.status_code == 200 and served.json()["outputs"][0]["label"] in spec.labels
