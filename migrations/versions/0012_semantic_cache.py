"""semantic_cache: answers found again by the meaning of a question (pgvector)

One row per answered job whose question may be reused: its scope (a tenant id, or "global"),
template + version, chain, a hash of the params that change an answer, the embedding model and
vector, the job it answered (the result is read from that job, so deleting the job deletes the
entry), and when it expires. HNSW index on cosine distance.

Only when the server offers the `vector` extension (pg_available_extensions): without it this
revision does nothing but say so, and llmq runs with the semantic cache off
(llmq/execution/semantic_cache.py logs why once).

Revision ID: 0014
Revises: 0012
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# text-embedding-3-small's size; other models are asked for (or must give) this many dimensions.
DIMENSIONS = 1536


def upgrade() -> None:
    conn = op.get_bind()
    offered = conn.execute(
        sa.text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
    ).first()
    if offered is None:
        print("semantic_cache: the server has no pgvector extension; table not created")
        return
    try:
        # A savepoint: a role that may not create the extension leaves the rest migrated.
        with conn.begin_nested():
            conn.execute(sa.text("CREATE EXTENSION IF NOT EXISTS vector"))
    except sa.exc.DBAPIError as exc:
        print(f"semantic_cache: CREATE EXTENSION vector failed ({exc.orig}); table not created")
        return
    conn.execute(
        sa.text(
            f"""
            CREATE TABLE semantic_cache (
                id bigserial PRIMARY KEY,
                scope text NOT NULL,
                template text NOT NULL,
                template_version integer NOT NULL,
                chain text NOT NULL,
                params_hash text NOT NULL,
                embedding_model text NOT NULL,
                embedding vector({DIMENSIONS}) NOT NULL,
                source_job_id uuid NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
                created_at timestamptz NOT NULL DEFAULT now(),
                expires_at timestamptz NOT NULL
            )
            """
        )
    )
    conn.execute(
        sa.text(
            "CREATE INDEX ix_semantic_cache_embedding ON semantic_cache "
            "USING hnsw (embedding vector_cosine_ops)"
        )
    )
    # The equality filters of every lookup; a small partition is searched exactly through it.
    conn.execute(
        sa.text(
            "CREATE INDEX ix_semantic_cache_partition ON semantic_cache "
            "(scope, template, template_version, params_hash, chain, embedding_model)"
        )
    )
    conn.execute(sa.text("CREATE INDEX ix_semantic_cache_source ON semantic_cache (source_job_id)"))
    conn.execute(sa.text("CREATE INDEX ix_semantic_cache_expires ON semantic_cache (expires_at)"))


def downgrade() -> None:
    # The extension stays: other objects may use it, and dropping it needs more rights.
    op.execute("DROP TABLE IF EXISTS semantic_cache")
