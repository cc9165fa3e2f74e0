"""shadow runs and the evaluation log

Jobs gain `kind` ('primary' | 'shadow') and `shadow_of` (the primary a shadow re-runs); a batch
may carry its own shadow spec. `eval_log` holds one row per job of a compared pair: the primary
that got a shadow, and the shadow itself (llmq/execution/shadow.py writes both, each in the
transaction that finishes its job). `output` is sealed like jobs.result (llmq/store/crypto.py).

Revision ID: 0015
Revises: 0012
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0015"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COST = sa.Numeric(20, 10)


def upgrade() -> None:
    op.add_column(
        "jobs",
        sa.Column("kind", sa.String(16), nullable=False, server_default=sa.text("'primary'")),
    )
    op.add_column(
        "jobs",
        sa.Column(
            "shadow_of",
            postgresql.UUID(as_uuid=True),
            sa.ForeignKey("jobs.id", ondelete="CASCADE"),
            nullable=True,
        ),
    )
    op.create_index(
        "ix_jobs_shadow_of",
        "jobs",
        ["shadow_of"],
        postgresql_where=sa.text("shadow_of IS NOT NULL"),
    )
    op.add_column("batches", sa.Column("shadow", postgresql.JSONB, nullable=True))
    op.create_table(
        "eval_log",
        sa.Column("id", sa.BigInteger, autoincrement=True, primary_key=True),
        sa.Column(
            "tenant_id",
            postgresql.UUID(as_uuid=True),
            sa.ForeignKey("tenants.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "job_id",
            postgresql.UUID(as_uuid=True),
            sa.ForeignKey("jobs.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("pair_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("template", sa.String(100), nullable=False),
        sa.Column("template_version", sa.Integer, nullable=False),
        sa.Column("chain", postgresql.JSONB, nullable=False),
        sa.Column("variant", sa.String(300), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("output", sa.Text, nullable=True),
        sa.Column("input_tokens", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("output_tokens", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("cost_usd", COST, nullable=True),
        sa.Column("latency_ms", sa.Numeric(12, 3), nullable=False, server_default=sa.text("0")),
        sa.Column("scores", postgresql.JSONB, nullable=False, server_default=sa.text("'{}'")),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.UniqueConstraint("job_id", name="uq_eval_log_job"),
    )
    op.create_index(
        "ix_eval_log_tenant_template", "eval_log", ["tenant_id", "template", "created_at"]
    )
    op.create_index("ix_eval_log_pair", "eval_log", ["pair_id"])


def downgrade() -> None:
    op.drop_index("ix_eval_log_pair", table_name="eval_log")
    op.drop_index("ix_eval_log_tenant_template", table_name="eval_log")
    op.drop_table("eval_log")
    op.drop_column("batches", "shadow")
    op.drop_index("ix_jobs_shadow_of", table_name="jobs")
    op.drop_column("jobs", "shadow_of")
    op.drop_column("jobs", "kind")
