"""The record of truth: tenants, API keys, batches, jobs and attempts (SQLAlchemy 2 models).

The Alembic migration in migrations/versions builds exactly this schema; a test compares them.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

COST = Numeric(20, 10)


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    BLOCKED = "blocked"
    CANCELLED = "cancelled"
    EXPIRED = "expired"  # the batch's completion window closed before the job could run
    # A long document split into child jobs (llmq/longdocs/mapreduce.py): not claimable, no lease.
    WAITING = "waiting"


TERMINAL_STATUSES = frozenset(
    {
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
        JobStatus.BLOCKED,
        JobStatus.CANCELLED,
        JobStatus.EXPIRED,
    }
)
ACTIVE_STATUSES = frozenset(
    {JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.RETRYING, JobStatus.WAITING}
)


class Base(DeclarativeBase):
    pass


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    # The key itself is never stored: only its SHA-256 (keys are 256-bit random, so a slow
    # password hash buys nothing) and a short prefix so operators can tell keys apart.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Per-key rate limits (per minute); NULL = the settings' defaults (llmq/api/key_limits.py).
    rate_requests_per_min: Mapped[int | None] = mapped_column(Integer)
    rate_items_per_min: Mapped[int | None] = mapped_column(Integer)


class Batch(Base):
    __tablename__ = "batches"

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    template: Mapped[str] = mapped_column(String(100))
    priority: Mapped[str] = mapped_column(String(16))
    chain: Mapped[list[str]] = mapped_column(JSONB)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, server_default=text("'{}'"))
    item_count: Mapped[int] = mapped_column(Integer)
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancelled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # Batch API (issue 5): completion window, webhook delivery state. See llmq/webhooks/delivery.py.
    completion_window_s: Mapped[int | None] = mapped_column(Integer)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    webhook_url: Mapped[str | None] = mapped_column(Text)
    webhook_status: Mapped[str | None] = mapped_column(String(16))  # pending|delivered|failed
    webhook_event_id: Mapped[uuid.UUID | None] = mapped_column(UUID)
    webhook_attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    webhook_next_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Cost and budgets (0002): spending cap of the whole batch, checked before each provider call.
    max_cost_usd: Mapped[Decimal | None] = mapped_column(COST)
    # Shadow runs (0011_shadow_evals): this batch's own shadow spec (llmq/evals/spec.py).
    shadow: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # Provider Batch lane (0013): the lane the batch was submitted on.
    lane: Mapped[str] = mapped_column(String(16), server_default=text("'sync'"))

    __table_args__ = (
        Index("ix_batches_tenant_created", "tenant_id", "created_at"),
        # The reconciler looks only at batches with a live window or a webhook to deliver.
        Index(
            "ix_batches_expiring",
            "expires_at",
            postgresql_where=text("expires_at IS NOT NULL"),
        ),
        Index(
            "ix_batches_webhook_pending",
            "webhook_next_at",
            postgresql_where=text(
                "webhook_url IS NOT NULL AND (webhook_status IS NULL OR webhook_status = 'pending')"
            ),
        ),
    )


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    batch_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    custom_id: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), server_default=text("'queued'"))
    priority: Mapped[str] = mapped_column(String(16))
    template: Mapped[str] = mapped_column(String(100))
    template_version: Mapped[int] = mapped_column(Integer)
    input: Mapped[str] = mapped_column(Text)
    params: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'"))
    chain: Mapped[list[str]] = mapped_column(JSONB)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, server_default=text("'{}'"))

    result: Mapped[str | None] = mapped_column(Text)
    provider: Mapped[str | None] = mapped_column(String(50))
    model: Mapped[str | None] = mapped_column(String(100))
    cache_hit: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    # Which guardrail rules fired and which chain links were skipped, and why (never raw text).
    route: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, server_default=text("'[]'"))
    guardrails: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, server_default=text("'[]'"))

    input_tokens: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    output_tokens: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    cost_usd: Mapped[Decimal | None] = mapped_column(COST)

    attempts_made: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    deliveries: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    not_before: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Set when a client cancels a running job: its worker stops at the next step.
    cancel_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # POST /v1/batches/{id}/retry: attempts up to this number belong to earlier runs, so the
    # re-run gets a fresh retry budget on every link (cost still counts them all).
    attempts_floor: Mapped[int] = mapped_column(Integer, server_default=text("0"))

    # Map-reduce of long documents: every chunk and reduce job points at the top job; level 0
    # holds the chunk summaries, level n the reduce jobs over level n-1.
    parent_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    chunk_level: Mapped[int | None] = mapped_column(Integer)
    chunk_index: Mapped[int | None] = mapped_column(Integer)
    # Cost and budgets (0002): the key that submitted the job, for usage per key.
    api_key_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("api_keys.id", ondelete="SET NULL")
    )
    # Shadow runs (0011_shadow_evals): a 'shadow' job re-runs the primary `shadow_of` with another
    # template version or chain; it has no batch and is never shown to the client.
    kind: Mapped[str] = mapped_column(String(16), server_default=text("'primary'"))
    shadow_of: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    # Provider Batch lane (0013): 'sync' or 'provider_batch', and the upload carrying the job.
    lane: Mapped[str] = mapped_column(String(16), server_default=text("'sync'"))
    provider_batch_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("provider_batches.id", ondelete="SET NULL")
    )

    __table_args__ = (
        Index("ix_jobs_batch_seq", "batch_id", "seq"),
        Index(
            "ix_jobs_lane_waiting",
            "provider_batch_id",
            "created_at",
            postgresql_where=text("lane = 'provider_batch' AND status IN ('queued', 'running')"),
        ),
        Index("ix_jobs_shadow_of", "shadow_of", postgresql_where=text("shadow_of IS NOT NULL")),
        # "Is anything of this batch still live?" (expiry, completion webhooks) in one probe.
        Index(
            "ix_jobs_batch_active",
            "batch_id",
            postgresql_where=text("status IN ('queued', 'running', 'retrying', 'waiting')"),
        ),
        Index("ix_jobs_parent", "parent_id", "chunk_level", "chunk_index"),
        # The reconciler looks for parents whose children all ended; few jobs ever wait.
        Index("ix_jobs_waiting", "id", postgresql_where=text("status = 'waiting'")),
        Index("ix_jobs_tenant_created", "tenant_id", "created_at"),
        # The reconciler scans only live jobs; the partial index keeps that cheap forever.
        Index(
            "ix_jobs_active",
            "status",
            "lease_expires_at",
            postgresql_where=text("status IN ('queued', 'running', 'retrying')"),
        ),
    )


class Attempt(Base):
    """One provider call. Unique (job_id, attempt_no) so a redelivered job never counts twice."""

    __tablename__ = "attempts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    attempt_no: Mapped[int] = mapped_column(Integer)
    provider: Mapped[str] = mapped_column(String(50))
    model: Mapped[str] = mapped_column(String(100))
    outcome: Mapped[str] = mapped_column(String(32))
    http_status: Mapped[int | None] = mapped_column(Integer)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    latency_ms: Mapped[float] = mapped_column(Numeric(12, 3))
    input_tokens: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    output_tokens: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    cached_tokens: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    cost_usd: Mapped[Decimal | None] = mapped_column(COST)
    # The answer, kept so a worker that dies before finishing the job is not paid for twice:
    # the next delivery finishes from it instead of calling the provider again.
    output: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(200))
    # A provider Batch lane call: what it would have cost on the sync lane (NULL: a sync call).
    sync_cost_usd: Mapped[Decimal | None] = mapped_column(COST)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        UniqueConstraint("job_id", "attempt_no", name="uq_attempts_job_attempt"),
        Index("ix_attempts_tenant_created", "tenant_id", "created_at"),
    )


class CompatFile(Base):
    """A file uploaded through the OpenAI-compatible Files API (a batch's JSONL input)."""

    __tablename__ = "compat_files"

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(32))
    size: Mapped[int] = mapped_column("bytes", Integer)
    content: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (Index("ix_compat_files_tenant_created", "tenant_id", "created_at"),)


class CompatBatch(Base):
    """An OpenAI- or Anthropic-compatible batch: the wire details of one native batch.

    `batch_id` is NULL for an OpenAI batch that failed validation (it never had jobs)."""

    __tablename__ = "compat_batches"

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    api: Mapped[str] = mapped_column(String(16))  # "openai" | "anthropic"
    batch_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    input_file_id: Mapped[str | None] = mapped_column(String(100))
    endpoint: Mapped[str | None] = mapped_column(String(100))
    completion_window: Mapped[str | None] = mapped_column(String(16))
    model: Mapped[str | None] = mapped_column(String(200))
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, server_default=text("'{}'"))
    errors: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONB)
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        Index("ix_compat_batches_tenant_api_created", "tenant_id", "api", "created_at", "id"),
    )


class IdempotencyKey(Base):
    """A submission's Idempotency-Key: inserted in the same transaction as the job or batch,
    so the unique key makes a retried or concurrent submission find the first one's answer."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (Index("ix_idempotency_keys_created_at", "created_at"),)

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(32))
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    response: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class WebhookSecret(Base):
    """Per-tenant webhook signing secret, stored derived: only a random salt is kept here; the
    secret is HMAC(LLMQ_WEBHOOK_SIGNING_KEY, salt), so the database alone cannot sign."""

    __tablename__ = "webhook_secrets"

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    salt: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class WebhookDelivery(Base):
    """One POST of a batch's completion webhook: every attempt is kept, failures included."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    batch_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    attempt_no: Mapped[int] = mapped_column(Integer)
    event_id: Mapped[uuid.UUID] = mapped_column(UUID)
    url: Mapped[str] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(String(16))  # delivered | failed
    http_status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    latency_ms: Mapped[float] = mapped_column(Numeric(12, 3))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        UniqueConstraint("batch_id", "attempt_no", name="uq_webhook_deliveries_batch_attempt"),
    )


# ---------------------------------------------------------------------------------------------
# Cost and budgets (migration 0002).


class Budget(Base):
    """A tenant's spending limits in USD per UTC day and per UTC calendar month (NULL = none)."""

    __tablename__ = "budgets"

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    daily_usd: Mapped[Decimal | None] = mapped_column(COST)
    monthly_usd: Mapped[Decimal | None] = mapped_column(COST)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


# ---------------------------------------------------------------------------------------------
# Audit log (migration 0009_audit_log, revision 0012).


class AuditLog(Base):
    """One security event, append-only (a trigger refuses UPDATE/DELETE/TRUNCATE) and hash
    chained (llmq/store/audit.py). No foreign key to tenants: deleting a tenant must neither
    cascade into the log nor be blocked by it."""

    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_log_at", "at"),
        Index("ix_audit_log_tenant_id", "tenant_id", "id"),
        Index("ix_audit_log_action", "action", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    actor: Mapped[str] = mapped_column(Text)
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(UUID)
    action: Mapped[str] = mapped_column(Text)
    target: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    prev_hash: Mapped[str] = mapped_column(Text)
    hash: Mapped[str] = mapped_column(Text)


# ---------------------------------------------------------------------------------------------
# Shadow runs and the evaluation log (migration 0011_shadow_evals, revision 0015).


class EvalLog(Base):
    """One job of a compared pair (a primary and its shadow share `pair_id`, the primary's id):
    its variant, sealed output, tokens, cost, provider latency and offline scores."""

    __tablename__ = "eval_log"
    __table_args__ = (
        UniqueConstraint("job_id", name="uq_eval_log_job"),
        Index("ix_eval_log_tenant_template", "tenant_id", "template", "created_at"),
        Index("ix_eval_log_pair", "pair_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    pair_id: Mapped[uuid.UUID] = mapped_column(UUID)
    role: Mapped[str] = mapped_column(String(16))  # primary | shadow
    template: Mapped[str] = mapped_column(String(100))
    template_version: Mapped[int] = mapped_column(Integer)
    chain: Mapped[list[str]] = mapped_column(JSONB)
    variant: Mapped[str] = mapped_column(String(300))
    status: Mapped[str] = mapped_column(String(16))
    output: Mapped[str | None] = mapped_column(Text)
    input_tokens: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    output_tokens: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    cost_usd: Mapped[Decimal | None] = mapped_column(COST)
    latency_ms: Mapped[Decimal] = mapped_column(Numeric(12, 3), server_default=text("0"))
    scores: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


# ---------------------------------------------------------------------------------------------
# Provider Batch lane (migration 0010_provider_batches, revision 0013).


class ProviderBatch(Base):
    """One upload of lane jobs to a provider's Batch API. Written as an intent before the
    upload, so a crash before the upstream id is recorded is found again, never paid twice."""

    __tablename__ = "provider_batches"
    __table_args__ = (
        Index(
            "ix_provider_batches_open",
            "next_poll_at",
            postgresql_where=text("state IN ('intent', 'uploaded')"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    provider: Mapped[str] = mapped_column(String(50))
    model: Mapped[str] = mapped_column(String(100))
    state: Mapped[str] = mapped_column(String(16), server_default=text("'intent'"))
    upstream_id: Mapped[str | None] = mapped_column(String(200))
    upstream_status: Mapped[str | None] = mapped_column(String(32))
    job_count: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    polls: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    uploaded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    polled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    next_poll_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancel_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    error: Mapped[str | None] = mapped_column(Text)
