"""compat: OpenAI-compatible files and OpenAI/Anthropic-compatible batches

Revision ID: 0005
Revises: 0010
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "compat_files",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("purpose", sa.String(length=32), nullable=False),
        sa.Column("bytes", sa.Integer(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )  # fmt: skip
    op.create_index("ix_compat_files_tenant_created", "compat_files", ["tenant_id", "created_at"])
    op.create_table(
        "compat_batches",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("api", sa.String(length=16), nullable=False),
        sa.Column("batch_id", sa.UUID(), nullable=True),
        sa.Column("input_file_id", sa.String(length=100), nullable=True),
        sa.Column("endpoint", sa.String(length=100), nullable=True),
        sa.Column("completion_window", sa.String(length=16), nullable=True),
        sa.Column("model", sa.String(length=200), nullable=True),
        sa.Column(
            "metadata", postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'"), nullable=False,
        ),
        sa.Column("errors", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(["batch_id"], ["batches.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )  # fmt: skip
    op.create_index(
        "ix_compat_batches_tenant_api_created",
        "compat_batches",
        ["tenant_id", "api", "created_at", "id"],
    )


def downgrade() -> None:
    op.drop_index("ix_compat_batches_tenant_api_created", table_name="compat_batches")
    op.drop_table("compat_batches")
    op.drop_index("ix_compat_files_tenant_created", table_name="compat_files")
    op.drop_table("compat_files")
