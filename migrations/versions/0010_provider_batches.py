"""provider batches: the lane that sends queued jobs through the providers' own Batch APIs

jobs gain `lane` ('sync' | 'provider_batch') and `provider_batch_id`, the upload that carries
them upstream. `provider_batches` holds one row per upload, written as an intent BEFORE the
upload: a worker killed between the upload and recording the upstream id leaves the intent,
and recovery finds the upstream batch by it (llmq/execution/lane.py) instead of paying twice.
attempts gain `sync_cost_usd`, what a lane call would have cost on the sync lane (GET
/v1/usage's saved_usd); NULL for sync calls.

Revision ID: 0013
Revises: 0012
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "provider_batches",
        sa.Column("id", postgresql.UUID(as_uuid=True), primary_key=True),
        sa.Column("provider", sa.String(50), nullable=False),
        sa.Column("model", sa.String(100), nullable=False),
        # intent -> uploaded -> ended (results collected) | failed
        sa.Column("state", sa.String(16), nullable=False, server_default=sa.text("'intent'")),
        sa.Column("upstream_id", sa.String(200), nullable=True),
        sa.Column("upstream_status", sa.String(32), nullable=True),
        sa.Column("job_count", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("polls", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("uploaded_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("polled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("next_poll_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancel_requested_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text, nullable=True),
    )
    op.create_index(
        "ix_provider_batches_open",
        "provider_batches",
        ["next_poll_at"],
        postgresql_where=sa.text("state IN ('intent', 'uploaded')"),
    )
    op.add_column(
        "jobs",
        sa.Column("lane", sa.String(16), nullable=False, server_default=sa.text("'sync'")),
    )
    op.add_column(
        "jobs",
        sa.Column(
            "provider_batch_id",
            postgresql.UUID(as_uuid=True),
            sa.ForeignKey("provider_batches.id", ondelete="SET NULL"),
            nullable=True,
        ),
    )
    # The lane's runner looks only at live lane jobs; few rows, whatever the table's size.
    op.create_index(
        "ix_jobs_lane_waiting",
        "jobs",
        ["provider_batch_id", "created_at"],
        postgresql_where=sa.text("lane = 'provider_batch' AND status IN ('queued', 'running')"),
    )
    op.add_column("attempts", sa.Column("sync_cost_usd", sa.Numeric(20, 10), nullable=True))
    # The lane the batch was submitted on (its jobs may fall back to sync one by one).
    op.add_column(
        "batches",
        sa.Column("lane", sa.String(16), nullable=False, server_default=sa.text("'sync'")),
    )


def downgrade() -> None:
    op.drop_column("batches", "lane")
    op.drop_column("attempts", "sync_cost_usd")
    op.drop_index("ix_jobs_lane_waiting", table_name="jobs")
    op.drop_column("jobs", "provider_batch_id")
    op.drop_column("jobs", "lane")
    op.drop_index("ix_provider_batches_open", table_name="provider_batches")
    op.drop_table("provider_batches")
