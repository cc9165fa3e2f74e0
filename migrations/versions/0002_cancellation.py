"""cancellation (jobs.cancel_requested_at, batches.cancelled_at); attempts.output

Revision ID: 0010
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("cancel_requested_at", sa.DateTime(timezone=True)))
    op.add_column("batches", sa.Column("cancelled_at", sa.DateTime(timezone=True)))
    op.add_column("attempts", sa.Column("output", sa.Text()))


def downgrade() -> None:
    op.drop_column("attempts", "output")
    op.drop_column("batches", "cancelled_at")
    op.drop_column("jobs", "cancel_requested_at")
