"""Run the Alembic migrations programmatically (used by `llmq migrate`, `llmq up`, tests).

The scripts live in the repository's top-level migrations/, installed as `llmq.migrations`."""

from __future__ import annotations

from importlib import resources

from alembic import command
from alembic.config import Config

from .engine import normalize_url


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(resources.files("llmq.migrations")))
    # ConfigParser interpolation treats % specially (URL-encoded passwords contain it).
    config.set_main_option("sqlalchemy.url", normalize_url(database_url).replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "heads") -> None:
    command.upgrade(alembic_config(database_url), revision)
