"""The job kinds' registry: each kind's body is the POST /v1/jobs variant of its type, its stored options read back
as its Options, and the API and the worker know kinds only through it."""

from __future__ import annotations

from typing import get_args

from fastapi.testclient import TestClient

from app.db.models import Job
from workers.jobs import KINDS, job_kind


def test_every_kind_s_body_is_the_post_variant_of_its_type(client: TestClient) -> None:
    assert list(KINDS)[0] == "train" and set(KINDS) == {"train", "length_search", "distill", "meta_init", "tune"}
    for name, kind in KINDS.items():
        assert get_args(kind.Body.model_fields["type"].annotation) == (name,)
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    listed = {ref["$ref"].rsplit("/", 1)[-1] for ref in body["oneOf"]}
    assert listed == {kind.Body.__name__ for kind in KINDS.values()}


def test_a_body_of_an_unknown_type_is_refused_naming_every_kind(client: TestClient) -> None:
    response = client.post("/v1/jobs", json={"type": "nope", "task": "t", "dataset_id": 1})
    assert response.status_code == 422
    error = response.json()["error"]
    assert all(name in error["message"] for name in KINDS), error


def test_only_train_jobs_pack(client: TestClient) -> None:
    assert [name for name, kind in KINDS.items() if kind.packable] == ["train"]


def test_a_distill_job_s_own_hyperparameters_are_stored_as_options_and_shown_with_the_method_s(
    client: TestClient,
) -> None:
    client.post("/v1/tasks", json={"name": "t", "kind": "classification", "labels": ["a", "b"]})
    rows = [{"input": f"x{i}", "output": "ab"[i % 2]} for i in range(6)]
    dataset = client.post("/v1/datasets", json={"name": "d", "examples": rows}).json()
    body = {
        "type": "distill",
        "task": "t",
        "dataset_id": dataset["id"],
        "teacher": {"instruction": "Answer a or b."},
        "hyperparameters": {"method": "prompt", "steps": 2, "alpha": 0.25, "generations": 2},
    }
    job = client.post("/v1/jobs", json=body)
    assert job.status_code == 202, job.text
    shown = job.json()
    assert shown["hyperparameters"]["alpha"] == 0.25 and shown["hyperparameters"]["steps"] == 2
    assert shown["options"] == {"teacher": {"instruction": "Answer a or b.", "examples": []}}
    assert shown["progress"]["total_steps"] == 4  # steps x generations
    # Stored apart: the method's config in hyperparameters, the kind's own in options, each read back as typed.
    with client.app.state.session_factory() as session:  # type: ignore[attr-defined]
        stored = session.get(Job, shown["id"])
        assert stored is not None
        assert "alpha" not in stored.hyperparameters and stored.hyperparameters["steps"] == 2
        options = job_kind("distill").options(stored)
    assert options.distillation.alpha == 0.25 and options.distillation.generations == 2
    assert options.teacher.instruction == "Answer a or b."
