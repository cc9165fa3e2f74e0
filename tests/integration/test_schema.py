"""The Alembic migration builds exactly the schema the models describe, on a fresh database."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from llmq.store.models import Base


def test_migration_matches_models(engine: Any) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_attempt_numbers_are_unique_per_job(engine: Any) -> None:
    from sqlalchemy import text

    with engine.connect() as conn:
        constraints = (
            conn.execute(
                text(
                    "SELECT conname FROM pg_constraint WHERE conrelid = 'attempts'::regclass "
                    "AND contype = 'u'"
                )
            )
            .scalars()
            .all()
        )
    assert "uq_attempts_job_attempt" in constraints
