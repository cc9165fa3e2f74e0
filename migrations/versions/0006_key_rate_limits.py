"""per-key rate limits

Revision ID: 0008
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("rate_requests_per_min", sa.Integer(), nullable=True))
    op.add_column("api_keys", sa.Column("rate_items_per_min", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("api_keys", "rate_items_per_min")
    op.drop_column("api_keys", "rate_requests_per_min")
