"""Alembic environment: the URL comes from the caller (app.migrate) or from Settings."""

from __future__ import annotations

from logging.config import fileConfig
from typing import Any

from alembic import context
from sqlalchemy import event

from app.config import Settings
from app.db import models  # noqa: F401  (registers the tables on Base.metadata)
from app.db.base import Base
from app.db.session import make_engine

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _url() -> str:
    return config.attributes.get("database_url") or Settings().resolved_database_url


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(_url())
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _no_cascades_while_copying(dbapi_connection: Any, _record: Any) -> None:
            # Runs after make_engine's own hook. Batch mode alters a SQLite table by copying it and dropping the
            # old one; with foreign keys on, that DROP TABLE would cascade to every row that references it.
            dbapi_connection.execute("PRAGMA foreign_keys=OFF")

    with engine.connect() as connection:
        # render_as_batch: SQLite can only ALTER a table by copying it; batch mode does that for us.
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
