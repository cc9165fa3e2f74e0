"""map-reduce of long documents: parent/child jobs

Revision ID: 0003
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("parent_id", sa.UUID(), nullable=True))
    op.add_column("jobs", sa.Column("chunk_level", sa.Integer(), nullable=True))
    op.add_column("jobs", sa.Column("chunk_index", sa.Integer(), nullable=True))
    op.create_foreign_key(
        "jobs_parent_id_fkey", "jobs", "jobs", ["parent_id"], ["id"], ondelete="CASCADE"
    )
    op.create_index(
        "ix_jobs_parent", "jobs", ["parent_id", "chunk_level", "chunk_index"], unique=False
    )
    op.create_index(
        "ix_jobs_waiting",
        "jobs",
        ["id"],
        unique=False,
        postgresql_where=sa.text("status = 'waiting'"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_jobs_waiting", table_name="jobs", postgresql_where=sa.text("status = 'waiting'")
    )
    op.drop_index("ix_jobs_parent", table_name="jobs")
    op.drop_constraint("jobs_parent_id_fkey", "jobs", type_="foreignkey")
    op.drop_column("jobs", "chunk_index")
    op.drop_column("jobs", "chunk_level")
    op.drop_column("jobs", "parent_id")
