"""The Alembic migration builds exactly the schema the models describe, on a fresh database."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from llmq.store.models import Base

# Created in SQL only where the server has pgvector (migrations/versions/0012_semantic_cache.py),
# so it has no model; checked on its own below.
NOT_MODELLED = {"semantic_cache"}


def _modelled(name: str | None, type_: str, parents: Any) -> bool:
    return not (type_ == "table" and name in NOT_MODELLED)


def test_migration_matches_models(engine: Any) -> None:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"include_name": _modelled})
        diff = compare_metadata(context, Base.metadata)
    assert diff == []


def test_semantic_cache_table_has_its_cosine_hnsw_index(engine: Any) -> None:
    """The embedded server ships pgvector, so the migration created the table and its index."""
    from sqlalchemy import text

    with engine.connect() as conn:
        indexes = dict(
            conn.execute(
                text(
                    "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'semantic_cache'"
                )
            ).all()
        )
    assert "hnsw" in indexes["ix_semantic_cache_embedding"]
    assert "vector_cosine_ops" in indexes["ix_semantic_cache_embedding"]


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
