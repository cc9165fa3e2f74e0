"""batch API: idempotency keys, completion window (expired), webhooks, retry floor

Revision ID: 0004
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WEBHOOK_PENDING = (
    "webhook_url IS NOT NULL AND (webhook_status IS NULL OR webhook_status = 'pending')"
)


def upgrade() -> None:
    op.add_column("batches", sa.Column("completion_window_s", sa.Integer(), nullable=True))
    op.add_column("batches", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("batches", sa.Column("webhook_url", sa.Text(), nullable=True))
    op.add_column("batches", sa.Column("webhook_status", sa.String(length=16), nullable=True))
    op.add_column("batches", sa.Column("webhook_event_id", sa.UUID(), nullable=True))
    op.add_column(
        "batches",
        sa.Column("webhook_attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )
    op.add_column(
        "batches", sa.Column("webhook_next_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.create_index(
        "ix_batches_expiring",
        "batches",
        ["expires_at"],
        postgresql_where=sa.text("expires_at IS NOT NULL"),
    )
    op.create_index(
        "ix_batches_webhook_pending",
        "batches",
        ["webhook_next_at"],
        postgresql_where=sa.text(WEBHOOK_PENDING),
    )
    op.add_column(
        "jobs",
        sa.Column("attempts_floor", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )
    op.create_index(
        "ix_jobs_batch_active",
        "jobs",
        ["batch_id"],
        postgresql_where=sa.text("status IN ('queued', 'running', 'retrying')"),
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("endpoint", sa.String(length=32), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("response", sa.dialects.postgresql.JSONB(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("tenant_id", "key"),
    )  # fmt: skip
    op.create_table(
        "webhook_secrets",
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("salt", sa.String(length=64), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("tenant_id"),
    )  # fmt: skip
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("batch_id", sa.UUID(), nullable=False),
        sa.Column("attempt_no", sa.Integer(), nullable=False),
        sa.Column("event_id", sa.UUID(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("latency_ms", sa.Numeric(12, 3), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(["batch_id"], ["batches.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "batch_id", "attempt_no", name="uq_webhook_deliveries_batch_attempt"
        ),
    )  # fmt: skip


def downgrade() -> None:
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_secrets")
    op.drop_table("idempotency_keys")
    op.drop_index("ix_jobs_batch_active", table_name="jobs")
    op.drop_column("jobs", "attempts_floor")
    op.drop_index("ix_batches_webhook_pending", table_name="batches")
    op.drop_index("ix_batches_expiring", table_name="batches")
    for column in (
        "webhook_next_at", "webhook_attempts", "webhook_event_id", "webhook_status",
        "webhook_url", "expires_at", "completion_window_s",
    ):  # fmt: skip
        op.drop_column("batches", column)
