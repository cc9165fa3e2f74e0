"""cost and budgets: tenant budgets, per-batch caps, the submitting key on jobs

Revision ID: 0002
Revises: 0008
Create Date: 2026-11-23 09:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COST = sa.Numeric(precision=20, scale=10)


def upgrade() -> None:
    op.create_table(
        "budgets",
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("daily_usd", COST, nullable=True),
        sa.Column("monthly_usd", COST, nullable=True),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("tenant_id"),
    )
    op.add_column("batches", sa.Column("max_cost_usd", COST, nullable=True))
    op.add_column("jobs", sa.Column("api_key_id", sa.UUID(), nullable=True))
    op.create_foreign_key(
        "jobs_api_key_id_fkey", "jobs", "api_keys", ["api_key_id"], ["id"], ondelete="SET NULL"
    )


def downgrade() -> None:
    op.drop_constraint("jobs_api_key_id_fkey", "jobs", type_="foreignkey")
    op.drop_column("jobs", "api_key_id")
    op.drop_column("batches", "max_cost_usd")
    op.drop_table("budgets")
