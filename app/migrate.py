"""Bring the database schema up to date: `python -m app.migrate` (Alembic is the only way a schema is made)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from app.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def alembic_config(database_url: str) -> Config:
    """An Alembic config for this project pointed at database_url."""
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.attributes["database_url"] = database_url
    config.attributes["configure_logger"] = False
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Run every pending migration against database_url."""
    command.upgrade(alembic_config(database_url), revision)


def main() -> None:
    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    url = settings.resolved_database_url
    upgrade(url)
    print(f"database is at the latest schema: {url.split('@')[-1]}")


if __name__ == "__main__":
    main()
