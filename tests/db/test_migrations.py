"""Migrations: the models agree with them, and 0002 carries prompts stored before methods existed, both ways."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import torch
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from fastapi.testclient import TestClient
from safetensors.torch import save
from sqlalchemy import Engine, inspect

from app.db.base import Base, utcnow
from app.db.models import Job
from app.db.session import make_engine
from app.engine.core.model import FrozenModel
from app.engine.core.one_prompt import classify
from app.engine.core.text import TaskSpec
from app.engine.formats.artifact import Artifact
from app.engine.serving.runtime import ModelRuntime
from app.main import create_app, serving_options
from app.migrate import alembic_config, upgrade
from tests.conftest import LOCAL_URL, _drop_postgres_database, _fresh_postgres_database, make_settings


def test_models_and_migrations_agree(db_engine: Engine) -> None:
    with db_engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    assert diff == []


def test_migrations_create_every_table(db_engine: Engine) -> None:
    tables = set(inspect(db_engine).get_table_names())
    assert {"tasks", "datasets", "jobs", "job_events", "prompts", "alembic_version"} <= tables


# --- prompts stored before methods existed (revision 0001) ----------------------------------------------------

# The two tables as revision 0001 made them: the models describe head, which 0001 lacks columns of.
TASKS_0001 = sa.table(
    "tasks",
    sa.column("id", sa.Integer()),
    sa.column("name", sa.String()),
    sa.column("kind", sa.String()),
    sa.column("labels", sa.JSON()),
    sa.column("template", sa.Text()),
    sa.column("active_prompt_id", sa.Integer()),
    sa.column("created_at", sa.DateTime(timezone=True)),
)
PROMPTS_0001 = sa.table(
    "prompts",
    *(sa.column(name, sa.Integer()) for name in ("id", "task_id", "version", "num_virtual_tokens", "hidden_size")),
    *(sa.column(name, sa.String()) for name in ("method", "base_model_name", "base_model_fingerprint")),
    sa.column("tensors", sa.LargeBinary()),
    sa.column("size_bytes", sa.Integer()),
    sa.column("metrics", sa.JSON()),
    sa.column("hyperparameters", sa.JSON()),
    sa.column("created_at", sa.DateTime(timezone=True)),
)
SPEC = TaskSpec("classification", "Review: {input}\nSentiment:", ("positive", "negative"))


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database no migration has touched yet, on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    url, name = _fresh_postgres_database()
    try:
        yield url
    finally:
        _drop_postgres_database(name)


def _store_old_prompt(url: str, frozen: FrozenModel, prompt: torch.Tensor) -> None:
    """What the code of revision 0001 stored: safetensors of {"prompt": [n, hidden]}, method "prompt_tuning"."""
    blob = save({"prompt": prompt}, metadata={"method": "prompt_tuning", "base_model": frozen.identity.fingerprint})
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.insert(TASKS_0001).values(
                    id=1,
                    name="sentiment",
                    kind=SPEC.kind,
                    labels=list(SPEC.labels),
                    template=SPEC.template,
                    created_at=utcnow(),
                )
            )
            conn.execute(
                sa.insert(PROMPTS_0001).values(
                    id=1,
                    task_id=1,
                    version=1,
                    method="prompt_tuning",
                    num_virtual_tokens=prompt.shape[0],
                    hidden_size=prompt.shape[1],
                    base_model_name=frozen.identity.name,
                    base_model_fingerprint=frozen.identity.fingerprint,
                    tensors=blob,
                    size_bytes=len(blob),
                    metrics={},
                    hyperparameters={"num_virtual_tokens": prompt.shape[0]},
                    created_at=utcnow(),
                )
            )
            conn.execute(sa.update(TASKS_0001).values(active_prompt_id=1))
    finally:
        engine.dispose()


def _stored(url: str) -> tuple[str, dict[str, list[int]] | None, bytes]:
    """(method, shapes, tensors) of the stored prompt, read as head describes them."""
    columns = sa.column("method", sa.String()), sa.column("shapes", sa.JSON()), sa.column("tensors", sa.LargeBinary())
    prompts = sa.table("prompts", *columns)
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            method, shapes, tensors = conn.execute(sa.select(prompts)).one()
            return method, shapes, tensors
    finally:
        engine.dispose()


def test_a_prompt_stored_before_methods_existed_is_a_plain_prompt_after_the_upgrade(
    empty_database_url: str, frozen: FrozenModel, tmp_path: Path
) -> None:
    url = empty_database_url
    upgrade(url, "0001")
    prompt = torch.randn(3, frozen.hidden_size, generator=torch.Generator().manual_seed(0))
    _store_old_prompt(url, frozen, prompt)

    upgrade(url)
    method, shapes, tensors = _stored(url)
    assert method == "prompt" and shapes == {"prompt": [3, frozen.hidden_size]}
    artifact = Artifact.from_bytes(tensors)
    assert artifact.method == "prompt" and artifact.tensors.keys() == {"prompt"}
    assert torch.equal(artifact.tensors["prompt"], prompt)

    # ... and the service lists and serves it as it would have before
    settings = make_settings(url, tmp_path)
    app = create_app(settings, runtime=ModelRuntime.from_model(frozen, serving_options(settings)))
    with TestClient(app, base_url=LOCAL_URL) as client:
        (listed,) = client.get("/v1/prompts").json()
        assert listed["method"] == "prompt" and listed["num_virtual_tokens"] == 3
        assert listed["kind"] == "task" and listed["lineage"]["job_type"] == "train"
        assert listed["shapes"] == {"prompt": [3, frozen.hidden_size]}
        inputs = ["a good film", "the plot was bad"]
        served = client.post("/v1/infer", json={"task": "sentiment", "inputs": inputs})
        assert served.status_code == 200, served.text
        for output, alone in zip(served.json()["outputs"], classify(frozen, prompt, SPEC, inputs), strict=True):
            assert max(abs(output["scores"][label] - p) for label, p in alone.items()) < 1e-4


def test_downgrading_from_head_gives_old_prompts_their_old_method_name(
    empty_database_url: str, frozen: FrozenModel
) -> None:
    # On SQLite the downgrade copies tables (batch mode); the copy must not cascade deletes to the prompts.
    url = empty_database_url
    upgrade(url, "0001")
    _store_old_prompt(url, frozen, torch.randn(2, frozen.hidden_size))
    upgrade(url)
    command.downgrade(alembic_config(url), "0001")
    engine = make_engine(url)
    try:
        assert "shapes" not in {c["name"] for c in inspect(engine).get_columns("prompts")}
        assert "options" not in {c["name"] for c in inspect(engine).get_columns("jobs")}
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT method FROM prompts")).scalars().all() == ["prompt_tuning"]
    finally:
        engine.dispose()
    upgrade(url)  # and up again
    assert _stored(url)[0] == "prompt"


def test_downgrading_below_meta_initialisations_removes_them_and_keeps_task_prompts(
    empty_database_url: str, frozen: FrozenModel
) -> None:
    url = empty_database_url
    upgrade(url, "0001")
    _store_old_prompt(url, frozen, torch.randn(2, frozen.hidden_size))
    upgrade(url)
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO jobs (type, task_id, hyperparameters, status, priority, progress, attempts, "
                    "max_attempts, cancel_requested, created_at) VALUES ('meta_init', NULL, '{}', 'succeeded', 0, "
                    "'{}', 1, 3, false, CURRENT_TIMESTAMP)"
                )
            )
            job_id = conn.execute(sa.text("SELECT id FROM jobs WHERE task_id IS NULL")).scalar_one()
            conn.execute(
                sa.text(
                    "INSERT INTO job_events (job_id, kind, message, data, created_at) "
                    "VALUES (:job, 'succeeded', '', '{}', CURRENT_TIMESTAMP)"
                ),
                {"job": job_id},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO prompts (id, task_id, kind, version, method, positions, width, "
                    "base_model_name, base_model_fingerprint, tensors, size_bytes, metrics, hyperparameters, job_id, "
                    "created_at) SELECT 2, NULL, 'meta_init', 1, method, positions, width, "
                    "base_model_name, base_model_fingerprint, tensors, size_bytes, metrics, hyperparameters, :job, "
                    "CURRENT_TIMESTAMP FROM prompts"
                ),
                {"job": job_id},
            )
        command.downgrade(alembic_config(url), "0002")
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT task_id FROM prompts")).scalars().all() == [1]
            assert conn.execute(sa.text("SELECT count(*) FROM jobs")).scalar_one() == 0
            assert conn.execute(sa.text("SELECT count(*) FROM job_events")).scalar_one() == 0
        columns = {c["name"]: c for c in inspect(engine).get_columns("prompts")}
        assert "lineage" not in columns and not columns["task_id"]["nullable"]
    finally:
        engine.dispose()
    upgrade(url)


def test_keys_the_command_line_made_with_every_scope_become_operator_keys(empty_database_url: str) -> None:
    url = empty_database_url
    upgrade(url, "0006")
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            for key_id, scopes, actor in [
                (1, '["read", "infer", "train", "admin"]', "cli"),  # `keys create --admin`
                (2, '["read", "infer", "train", "admin"]', "admin key"),  # made through the API
                (3, '["read"]', "cli"),
            ]:
                conn.execute(
                    sa.text(
                        "INSERT INTO api_keys (id, tenant, scopes, key_hash, prefix, created_at) "
                        "VALUES (:id, 'default', :scopes, :hash, 'pb_', CURRENT_TIMESTAMP)"
                    ),
                    {"id": key_id, "scopes": scopes, "hash": f"{key_id:064d}"},
                )
                conn.execute(
                    sa.text(
                        "INSERT INTO audit_log (tenant, actor, action, resource, resource_id, detail, created_at) "
                        "VALUES ('default', :actor, 'create', 'key', :id, '{}', CURRENT_TIMESTAMP)"
                    ),
                    {"actor": actor, "id": key_id},
                )
        upgrade(url)
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT id, operator FROM api_keys ORDER BY id")).all()
        assert [(key_id, bool(operator)) for key_id, operator in rows] == [(1, True), (2, False), (3, False)]
        command.downgrade(alembic_config(url), "0006")
        assert "operator" not in {c["name"] for c in inspect(engine).get_columns("api_keys")}
    finally:
        engine.dispose()


def test_a_kind_s_own_hyperparameters_move_to_the_job_s_options_and_show_as_before(empty_database_url: str) -> None:
    from workers.jobs import KINDS

    url = empty_database_url
    upgrade(url, "0007")
    engine = make_engine(url)
    distill_hp = {"method": "prompt", "steps": 5, "alpha": 0.3, "temperature": 2.0, "generations": 2}
    meta_hp = {"method": "prompt", "num_virtual_tokens": 4, "order": "second", "inner_steps": 2, "outer_steps": 7}
    try:
        with engine.begin() as conn:
            for job_id, job_type, hyperparameters, options in [
                (1, "distill", distill_hp, {"teacher": {"prompts": [3]}}),
                (2, "meta_init", meta_hp, {"name": "family", "tasks": []}),
                (3, "train", {"method": "prompt", "steps": 9}, {}),
            ]:
                conn.execute(
                    sa.text(
                        "INSERT INTO jobs (id, tenant, type, hyperparameters, options, status, priority, progress, "
                        "attempts, max_attempts, cancel_requested, created_at) VALUES (:id, 'default', :type, :hp, "
                        ":options, 'queued', 0, '{}', 0, 3, false, CURRENT_TIMESTAMP)"
                    ),
                    {"id": job_id, "type": job_type, "hp": json.dumps(hyperparameters), "options": json.dumps(options)},
                )
        upgrade(url)
        with engine.connect() as conn:
            rows = {
                row.id: row
                for row in conn.execute(sa.select(sa.table("jobs", *(sa.column(c, sa.JSON()) for c in COLS)))).all()
            }
        assert rows[1].hyperparameters == {"method": "prompt", "steps": 5}
        assert rows[1].options == {
            "teacher": {"prompts": [3]},
            "distillation": {"alpha": 0.3, "temperature": 2.0, "generations": 2},
        }
        assert rows[2].options["meta"] == {"order": "second", "inner_steps": 2, "outer_steps": 7}
        assert rows[3].hyperparameters == {"method": "prompt", "steps": 9} and rows[3].options == {}
        # The worker reads them as the kind's options; GET /v1/jobs shows the hyperparameters the body gave.
        for job_id, job_type, given in [(1, "distill", distill_hp), (2, "meta_init", meta_hp)]:
            job = Job(type=job_type, hyperparameters=rows[job_id].hyperparameters, options=rows[job_id].options)
            options = KINDS[job_type].options(job)
            assert options is not None
            assert KINDS[job_type].shown(job)[0] == given
        command.downgrade(alembic_config(url), "0007")
        with engine.connect() as conn:
            back = conn.execute(sa.text("SELECT hyperparameters FROM jobs WHERE id = 1")).scalar_one()
        assert (json.loads(back) if isinstance(back, str) else back) == distill_hp
    finally:
        engine.dispose()


COLS = ("id", "hyperparameters", "options")
