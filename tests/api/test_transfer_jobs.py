"""Jobs that learn from learned prompts: distillation, MAML meta-initialisations, prompt transfer (init "auto")."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Engine, update

from app.db.models import Prompt
from tests.api.helpers import (
    FAST,
    create_dataset,
    create_task,
    toy_examples,
    train_task,
    wait_for_job,
    wait_for_step,
)

QUICK = {**FAST, "steps": 4, "eval_every": 2}
META = {
    "num_virtual_tokens": 4,
    "order": "first",
    "inner_steps": 2,
    "inner_lr": 0.5,
    "outer_lr": 0.05,
    "outer_steps": 3,
    "meta_batch": 2,
    "support_size": 4,
    "query_size": 4,
    "eval_every": 3,
    "seed": 0,
}


def _post(client: TestClient, body: dict[str, Any], status: int = 202) -> dict[str, Any]:
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == status, response.text
    return response.json()  # type: ignore[no-any-return]


def _events(client: TestClient, job_id: int) -> list[dict[str, Any]]:
    return client.get(f"/v1/jobs/{job_id}/events").json()  # type: ignore[no-any-return]


def _finished(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    job = wait_for_job(client, _post(client, body)["id"], timeout=300)
    assert job["status"] == "succeeded", (job, _events(client, job["id"]))
    return job


def _unlabeled(n: int) -> list[dict[str, str]]:
    return [{"input": example["input"]} for example in toy_examples(n, seed=5)]


# --- distillation ----------------------------------------------------------------------------------------------


def test_a_distilled_student_becomes_a_new_version_with_its_teacher_in_its_lineage(client: TestClient) -> None:
    task, teacher_job = train_task(client, "sentiment", method="prefix")
    teacher_id = teacher_job["result_prompt_id"]
    dataset = create_dataset(client, toy_examples(24, seed=3))
    body = {
        "type": "distill",
        "task": "sentiment",
        "dataset_id": dataset["id"],
        "teacher": {"prompts": [teacher_id]},
        "hyperparameters": {**QUICK, "method": "prompt", "alpha": 0.3, "temperature": 2.0},
    }
    job = _finished(client, body)
    assert job["type"] == "distill" and job["options"]["teacher"] == {"prompts": [teacher_id]}
    assert job["hyperparameters"]["alpha"] == 0.3 and job["progress"]["step"] == QUICK["steps"]
    student = client.get(f"/v1/prompts/{job['result_prompt_id']}").json()
    assert student["method"] == "prompt" and student["task"] == task["id"] and student["active"]
    lineage = student["lineage"]
    assert lineage["job_type"] == "distill" and lineage["teachers"] == [teacher_id]
    assert lineage["job_id"] == job["id"] and lineage["hyperparameters"]["temperature"] == 2.0
    kinds = [event["kind"] for event in _events(client, job["id"])]
    assert kinds.count("generation") == 1 and kinds[-1] == "succeeded"

    # Deleting the teacher leaves the student served and its lineage as it was.
    assert client.delete(f"/v1/prompts/{teacher_id}").status_code == 204
    served = client.post("/v1/infer", json={"task": "sentiment", "inputs": ["a good film"]})
    assert served.status_code == 200 and served.json()["prompt_id"] == student["id"]
    assert client.get(f"/v1/prompts/{student['id']}").json()["lineage"]["teachers"] == [teacher_id]


def test_generations_record_every_score_and_keep_the_best_student(client: TestClient) -> None:
    _, teacher_job = train_task(client, "sentiment")
    dataset = create_dataset(client, toy_examples(24, seed=3))
    body = {
        "type": "distill",
        "task": "sentiment",
        "dataset_id": dataset["id"],
        "teacher": {"prompts": [teacher_job["result_prompt_id"]]},
        "hyperparameters": {**QUICK, "generations": 3, "alpha": 0.0},
    }
    job = _finished(client, body)
    assert job["progress"]["total_steps"] == 3 * QUICK["steps"]
    generations = [event["data"] for event in _events(client, job["id"]) if event["kind"] == "generation"]
    assert [g["generation"] for g in generations] == [1, 2, 3]
    assert generations[0]["teacher"].startswith("prompt ") and generations[1]["teacher"] == "G1"
    student = client.get(f"/v1/prompts/{job['result_prompt_id']}").json()
    best = max(generations, key=lambda g: (g["val_accuracy"], -g["val_loss"]))
    assert student["lineage"]["generation"] == best["generation"]
    assert student["metrics"]["best_val_accuracy"] == best["val_accuracy"]


def test_context_distillation_learns_from_inputs_alone(client: TestClient) -> None:
    create_task(client, "sentiment")
    response = client.post("/v1/datasets", json={"name": "inputs", "examples": _unlabeled(20)})
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert dataset["labeled"] is False and dataset["labels"] == []
    body = {
        "type": "distill",
        "task": "sentiment",
        "dataset_id": dataset["id"],
        "teacher": {
            "instruction": "Say whether the review is positive or negative.",
            "examples": [{"input": "a good film", "output": "positive"}, {"input": "a bad plot", "output": "negative"}],
        },
        "hyperparameters": {**QUICK, "alpha": 0},
    }
    job = _finished(client, body)
    student = client.get(f"/v1/prompts/{job['result_prompt_id']}").json()
    assert student["lineage"]["teacher"] == "context" and student["lineage"]["teachers"] == []
    # Validation measured agreement with the teacher's own labels: an accuracy in [0, 1].
    assert 0.0 <= student["metrics"]["best_val_accuracy"] <= 1.0


def test_generation_tasks_distil_from_the_teachers_own_outputs(client: TestClient) -> None:
    create_task(client, "echo", kind="generation", labels=[], template="Say: {input}\nAnswer:")
    examples = [{"input": f"word{i}", "output": f"word{i}"} for i in range(12)]
    labeled = create_dataset(client, examples, name="echo")
    teacher = _finished(
        client, {"type": "train", "task": "echo", "dataset_id": labeled["id"], "hyperparameters": QUICK}
    )
    inputs = client.post("/v1/datasets", json={"name": "in", "examples": [{"input": f"w{i}"} for i in range(10)]})
    body = {
        "type": "distill",
        "task": "echo",
        "dataset_id": inputs.json()["id"],
        "teacher": {"prompts": [teacher["result_prompt_id"]]},
        "hyperparameters": {**QUICK, "alpha": 0, "top_k": 8, "max_new_tokens": 4, "generations": 2},
    }
    job = _finished(client, body)
    assert client.get(f"/v1/prompts/{job['result_prompt_id']}").json()["lineage"]["job_type"] == "distill"


def test_bad_distillation_requests_are_refused_with_what_to_fix(client: TestClient) -> None:
    _, job = train_task(client, "sentiment")
    other, _ = train_task(client, "other")
    labeled = create_dataset(client, toy_examples(12))
    inputs = client.post("/v1/datasets", json={"name": "in", "examples": _unlabeled(8)}).json()
    base = {"type": "distill", "task": "sentiment", "dataset_id": labeled["id"], "hyperparameters": QUICK}
    own = {"prompts": [job["result_prompt_id"]]}

    refused = _post(client, {**base, "dataset_id": inputs["id"], "teacher": own}, 422)
    assert refused["error"]["code"] == "dataset_unlabeled" and "alpha" in refused["error"]["message"]
    foreign = client.get(f"/v1/prompts?task={other['name']}").json()[0]["id"]
    refused = _post(client, {**base, "teacher": {"prompts": [foreign]}}, 422)
    assert refused["error"]["code"] == "teacher_invalid"
    refused = _post(client, {**base, "teacher": {"prompts": [999_999]}}, 422)
    assert refused["error"]["code"] == "teacher_invalid"
    refused = _post(client, {**base, "teacher": own, "hyperparameters": {**QUICK, "alpha": 2}}, 422)
    assert refused["error"]["code"] == "validation_error" and "alpha" in refused["error"]["message"]
    refused = _post(client, {**base, "teacher": {"instruction": "Use {input} here"}}, 422)
    assert refused["error"]["code"] == "validation_error"
    refused = _post(client, {k: v for k, v in base.items() if k != "type"} | {"teacher": own}, 422)
    assert refused["error"]["code"] == "validation_error"  # a train job has no teacher
    # Train jobs refuse inputs without outputs.
    refused = _post(client, {"type": "train", "task": "sentiment", "dataset_id": inputs["id"]}, 422)
    assert refused["error"]["code"] == "dataset_unlabeled"


# --- meta-learning -------------------------------------------------------------------------------------------


def _family(client: TestClient, count: int = 3) -> list[dict[str, Any]]:
    """Tasks with their own labels and templates, each with a labeled dataset."""
    tasks = []
    for index in range(count):
        labels = ["positive", "negative"] if index % 2 == 0 else ["good", "bad"]
        create_task(client, f"t{index}", labels=labels, template=f"Text {index}: {{input}}\nLabel:")
        examples = [
            {"input": e["input"], "output": labels[0] if e["output"] == "positive" else labels[1]}
            for e in toy_examples(12, seed=index)
        ]
        tasks.append({"task": f"t{index}", "dataset_id": create_dataset(client, examples, name=f"d{index}")["id"]})
    return tasks


def test_meta_init_stores_a_prompt_of_no_task_that_a_train_job_starts_from(client: TestClient) -> None:
    family = _family(client)
    body = {"type": "meta_init", "name": "toy family", "tasks": family, "hyperparameters": META}
    job = _finished(client, body)
    assert job["task"] is None and job["task_name"] is None and job["options"]["name"] == "toy family"
    assert job["progress"]["step"] == META["outer_steps"]
    # a prompt of no task has nothing to promote: no gate events
    assert not {"not_promoted", "evaluated"} & {e["kind"] for e in _events(client, job["id"])}
    meta_id = job["result_prompt_id"]
    prompt = client.get(f"/v1/prompts/{meta_id}").json()
    assert prompt["kind"] == "meta_init" and prompt["task"] is None and prompt["name"] == "toy family"
    assert not prompt["active"] and prompt["version"] == 1
    assert [s["task_name"] for s in prompt["lineage"]["source_tasks"]] == ["t0", "t1", "t2"]
    assert prompt["lineage"]["order"] == "first" and prompt["metrics"]["task_samples"]
    listed = client.get("/v1/prompts?kind=meta_init").json()
    assert [p["id"] for p in listed] == [meta_id]
    assert all(p["kind"] == "task" for p in client.get("/v1/prompts?kind=task").json())
    refused = client.post(f"/v1/prompts/{meta_id}/activate")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "prompt_not_activatable"

    # A new task starts from it; the new version's lineage names it.
    create_task(client, "fresh")
    dataset = create_dataset(client, toy_examples(16, seed=9))
    started = _finished(
        client,
        {
            "type": "train",
            "task": "fresh",
            "dataset_id": dataset["id"],
            "hyperparameters": {**QUICK, "init": {"from_prompt": meta_id}},
        },
    )
    version = client.get(f"/v1/prompts/{started['result_prompt_id']}").json()
    assert version["lineage"]["init_prompt_id"] == meta_id and version["task"] is not None
    # Deleting a source task or the meta-initialisation breaks nothing downstream.
    assert client.delete("/v1/tasks/t0").status_code == 204
    assert client.delete(f"/v1/prompts/{meta_id}").status_code == 204
    assert client.get("/v1/prompts?kind=meta_init").json() == []
    assert client.post("/v1/infer", json={"task": "fresh", "inputs": ["a good film"]}).status_code == 200


def test_every_meta_order_runs_and_a_long_second_order_inner_loop_warns(client: TestClient) -> None:
    family = _family(client)
    for order in ("second", "reptile"):
        hyper = {**META, "order": order, "outer_steps": 2, "eval_every": 2}
        if order == "second":
            hyper["inner_steps"] = 6
        job = _finished(client, {"type": "meta_init", "name": order, "tasks": family, "hyperparameters": hyper})
        kinds = [event["kind"] for event in _events(client, job["id"])]
        assert ("warning" in kinds) == (order == "second")
        assert client.get(f"/v1/prompts/{job['result_prompt_id']}").json()["lineage"]["order"] == order


def test_bad_meta_init_requests_are_refused_with_what_to_fix(client: TestClient) -> None:
    family = _family(client)
    base = {"type": "meta_init", "name": "m", "hyperparameters": META}
    refused = _post(client, {**base, "tasks": family[:2]}, 422)
    assert refused["error"]["code"] == "validation_error" and "tasks" in refused["error"]["message"]
    refused = _post(client, {**base, "tasks": [family[0], family[0], family[1]]}, 422)
    assert refused["error"]["code"] == "too_few_tasks"
    inputs = client.post("/v1/datasets", json={"name": "in", "examples": _unlabeled(8)}).json()
    refused = _post(client, {**base, "tasks": [*family[:2], {"task": "t2", "dataset_id": inputs["id"]}]}, 422)
    assert refused["error"]["code"] == "dataset_unlabeled"
    refused = _post(client, {**base, "tasks": family, "hyperparameters": {**META, "steps": 10}}, 422)
    assert "outer_steps" in refused["error"]["message"]
    refused = _post(client, {**base, "tasks": family, "hyperparameters": {**META, "init": "labels"}}, 422)
    assert refused["error"]["code"] == "init_prompt_invalid"
    refused = _post(client, {**base, "tasks": family, "hyperparameters": {**META, "order": "third"}}, 422)
    assert refused["error"]["code"] == "validation_error"
    refused = _post(client, {**base, "tasks": [*family[:2], {"task": "nope", "dataset_id": 1}]}, 404)
    assert refused["error"]["code"] == "task_not_found"


# --- prompt transfer -----------------------------------------------------------------------------------------


def test_init_auto_starts_from_the_stored_prompt_with_the_lowest_loss(client: TestClient) -> None:
    _, trained = train_task(client, "sentiment", steps=30)
    create_task(client, "again")
    dataset = create_dataset(client, toy_examples(16, seed=4))
    body = {"type": "train", "task": "again", "dataset_id": dataset["id"], "hyperparameters": {**QUICK, "init": "auto"}}
    job = _finished(client, body)
    events = _events(client, job["id"])
    (candidates,) = [e["data"]["candidates"] for e in events if e["kind"] == "init_candidates"]
    (chosen,) = [e["data"] for e in events if e["kind"] == "init_chosen"]
    losses = {c["candidate"]: c["loss"] for c in candidates}
    assert "text init" in losses and any(c["prompt_id"] == trained["result_prompt_id"] for c in candidates)
    assert chosen["loss"] == min(losses.values())
    version = client.get(f"/v1/prompts/{job['result_prompt_id']}").json()
    assert version["lineage"]["init"] == "auto"
    assert version["lineage"]["init_prompt_id"] == chosen["prompt_id"]


def test_init_auto_with_nothing_compatible_starts_from_the_text_init(client: TestClient) -> None:
    train_task(client, "sentiment")  # a prompt of 4 tokens: not the shape of an 8-token job
    create_task(client, "again")
    dataset = create_dataset(client, toy_examples(12, seed=4))
    hyper = {**QUICK, "num_virtual_tokens": 8, "init": "auto"}
    job = _finished(client, {"type": "train", "task": "again", "dataset_id": dataset["id"], "hyperparameters": hyper})
    (chosen,) = [e["data"] for e in _events(client, job["id"]) if e["kind"] == "init_chosen"]
    assert chosen["prompt_id"] is None and chosen["candidate"] == "text init"
    refused = _post(
        client,
        {"type": "length_search", "task": "again", "dataset_id": dataset["id"], "hyperparameters": {"init": "auto"}},
        422,
    )
    assert refused["error"]["code"] == "init_prompt_invalid"


def test_teachers_and_tasks_of_another_base_model_are_refused(client: TestClient, db_engine: Engine) -> None:
    family = _family(client)
    _, job = train_task(client, "t0-trained")
    dataset = create_dataset(client, toy_examples(8))
    with db_engine.begin() as conn:
        conn.execute(update(Prompt).values(base_model_fingerprint="0" * 64, base_model_name="other-model"))
    body = {
        "type": "distill",
        "task": "t0-trained",
        "dataset_id": dataset["id"],
        "teacher": {"prompts": [job["result_prompt_id"]]},
        "hyperparameters": QUICK,
    }
    refused = _post(client, body, 422)
    assert refused["error"]["code"] == "teacher_invalid" and "other-model" in refused["error"]["message"]
    tasks = [*family[:2], {"task": "t0-trained", "dataset_id": dataset["id"]}]
    refused = _post(client, {"type": "meta_init", "name": "m", "tasks": tasks, "hyperparameters": META}, 409)
    assert refused["error"]["code"] == "base_model_mismatch"


def test_a_running_meta_init_job_can_be_cancelled(client: TestClient) -> None:
    family = _family(client)
    hyper = {**META, "outer_steps": 500, "eval_every": 500}
    job = _post(client, {"type": "meta_init", "name": "long", "tasks": family, "hyperparameters": hyper})
    wait_for_step(client, job["id"], 1)
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
    finished = wait_for_job(client, job["id"])
    assert finished["status"] == "cancelled" and finished["result_prompt_id"] is None
    assert client.get("/v1/prompts?kind=meta_init").json() == []


def test_the_openapi_document_describes_every_job_type(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    names = set(schema["components"]["schemas"])
    assert {"TrainJobCreate", "LengthSearchJobCreate", "DistillJobCreate", "MetaInitJobCreate"} <= names


def test_a_dataset_a_queued_meta_init_job_reads_cannot_be_deleted(client: TestClient) -> None:
    family = _family(client)
    hyper = {**META, "outer_steps": 500, "eval_every": 500}
    job = _post(client, {"type": "meta_init", "name": "long", "tasks": family, "hyperparameters": hyper})
    refused = client.delete(f"/v1/datasets/{family[1]['dataset_id']}")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "dataset_in_use"
    assert str(job["id"]) in refused.json()["error"]["message"]
    client.post(f"/v1/jobs/{job['id']}/cancel")
    wait_for_job(client, job["id"])
    assert client.delete(f"/v1/datasets/{family[1]['dataset_id']}").status_code == 204
